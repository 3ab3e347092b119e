"""config.yaml models: every mistake is reported with its field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from iocmng.config.models import (
    PluginConfig,
    deep_merge,
    json_schema,
    load_config,
    merged_parameters,
    parse_config,
)
from iocmng.epics.plan import (
    DEFAULT_PV_NAMES,
    MAX_RECORD_NAME,
    default_records,
    plan_records,
    truncate,
)
from iocmng.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "plugins_examples"


def errors_of(text: str) -> dict[str, str]:
    """Parse config text that must fail; return {field path: message}."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "plugin/config.yaml")
    exc = info.value
    assert exc.file == "plugin/config.yaml"
    assert exc.detail.startswith("plugin/config.yaml: ")
    assert exc.status == 422
    assert exc.errors, "a ConfigError must list its errors"
    return {e["loc"]: e["msg"] for e in exc.errors}


# -- valid configurations ---------------------------------------------------------------
@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_examples_parse(example: str) -> None:
    cfg = load_config(EXAMPLES / example)
    assert isinstance(cfg, PluginConfig)
    assert cfg.parameters, "every example declares parameters"


def test_full_config_values_and_defaults() -> None:
    cfg = parse_config(
        """
parameters: {mode: continuous, interval: 0.5, threshold: 75.0, nested: {a: 1}}
pvs:
  inputs:
    SETPOINT: {type: float, value: 50, unit: "%", prec: 2, low: 0, high: 100}
    COUNT: {type: int, value: 3.0}
    LABEL: {type: string}
  outputs:
    ALARM: {type: bool, value: "on", znam: OK, onam: ALARM}
    READING: {}
"""
    )
    assert cfg.mode == "continuous"
    assert cfg.parameters["nested"] == {"a": 1}
    sp = cfg.pvs.inputs["SETPOINT"]
    assert (sp.value, sp.unit, sp.prec, sp.low, sp.high) == (50.0, "%", 2, 0.0, 100.0)
    assert isinstance(sp.value, float)
    assert cfg.pvs.inputs["COUNT"].value == 3 and isinstance(cfg.pvs.inputs["COUNT"].value, int)
    assert cfg.pvs.inputs["LABEL"].value == ""
    assert cfg.pvs.outputs["ALARM"].value == 1
    assert cfg.pvs.outputs["READING"].type == "float" and cfg.pvs.outputs["READING"].value == 0.0
    assert set(cfg.all_pvs()) == {"SETPOINT", "COUNT", "LABEL", "ALARM", "READING"}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}"])
def test_empty_config_is_a_continuous_task_without_pvs(text: str) -> None:
    cfg = parse_config(text)
    assert cfg.mode == "continuous"
    assert cfg.all_pvs() == {}


def test_config_yml_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "config.yml").write_text("parameters: {mode: triggered}\n")
    assert load_config(tmp_path).mode == "triggered"


def test_missing_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path / "config.yaml") in info.value.detail
    assert "missing" in info.value.detail


# -- mistakes, each with its field path -------------------------------------------------------
def test_unknown_top_level_key() -> None:
    errs = errors_of("parameters: {}\npv: {}\n")
    assert "pv" in errs and "unknown key" in errs["pv"]


def test_unknown_key_in_pv_spec() -> None:
    errs = errors_of("pvs: {inputs: {SP: {type: float, units: mm}}}\n")
    assert "pvs.inputs.SP.units" in errs
    assert "unknown key" in errs["pvs.inputs.SP.units"]


def test_unknown_pvs_section() -> None:
    errs = errors_of("pvs: {input: {SP: {}}}\n")
    assert "pvs.input" in errs


def test_wrong_pv_type_lists_allowed_values() -> None:
    errs = errors_of("pvs: {outputs: {X: {type: double}}}\n")
    msg = errs["pvs.outputs.X.type"]
    for allowed in ("float", "int", "string", "bool"):
        assert allowed in msg


def test_wrong_value_type() -> None:
    errs = errors_of("pvs: {outputs: {X: {type: int, value: 2.5}}}\n")
    assert "not an integer" in errs["pvs.outputs.X"]


def test_bad_bool_value() -> None:
    errs = errors_of("pvs: {outputs: {X: {type: bool, value: maybe}}}\n")
    assert "not a boolean" in errs["pvs.outputs.X"]


def test_wrong_field_type() -> None:
    errs = errors_of("pvs: {inputs: {X: {prec: many}}}\n")
    assert "pvs.inputs.X.prec" in errs


@pytest.mark.parametrize("field,value", [("prec", 16), ("prec", -1), ("unit", "x" * 16)])
def test_field_bounds(field: str, value: object) -> None:
    errs = errors_of(f"pvs: {{inputs: {{X: {{{field}: {value!r}}}}}}}\n")
    assert f"pvs.inputs.X.{field}" in errs


@pytest.mark.parametrize(
    "spec,word",
    [
        ("{type: int, znam: A}", "znam"),
        ("{type: int, prec: 2}", "prec"),
        ("{type: string, low: 0}", "low"),
        ("{type: float, low: 5, high: 1}", "low"),
    ],
)
def test_fields_not_allowed_for_type(spec: str, word: str) -> None:
    errs = errors_of(f"pvs: {{outputs: {{X: {spec}}}}}\n")
    assert "pvs.outputs.X" in errs
    assert word in errs["pvs.outputs.X"]


@pytest.mark.parametrize("name", ["BAD NAME", "_X", "A.B", "A$", "X" * 61, "é"])
def test_bad_pv_name(name: str) -> None:
    errs = errors_of(f"pvs: {{inputs: {{'{name}': {{}}}}}}\n")
    assert "pvs.inputs" in errs
    assert "not a valid record-name part" in errs["pvs.inputs"]
    assert repr(name) in errs["pvs.inputs"]


@pytest.mark.parametrize("name", ["A", "X1", "TEMP_2", "a-b", "SUB:FIELD", "1ST"])
def test_good_pv_names(name: str) -> None:
    cfg = parse_config(f"pvs: {{outputs: {{'{name}': {{}}}}}}\n")
    assert name in cfg.pvs.outputs


def test_same_name_input_and_output() -> None:
    errs = errors_of("pvs: {inputs: {X: {}}, outputs: {X: {}}}\n")
    assert "pvs" in errs and "X" in errs["pvs"]


@pytest.mark.parametrize(
    "params,loc,word",
    [
        ("{mode: sometimes}", "parameters.mode", "continuous"),
        ("{interval: 0}", "parameters.interval", "greater than 0"),
        ("{interval: -1}", "parameters.interval", "greater than 0"),
        ("{interval: fast}", "parameters.interval", "number"),
        ("{interval: 1000000}", "parameters.interval", "less than"),
    ],
)
def test_mode_and_interval_validation(params: str, loc: str, word: str) -> None:
    errs = errors_of(f"parameters: {params}\n")
    assert loc in errs, errs
    assert word in errs[loc]


def test_several_mistakes_all_reported() -> None:
    errs = errors_of("pvs: {inputs: {X: {type: nope}}, outputs: {Y: {bogus: 1}}}\nextra: 1\n")
    assert {"pvs.inputs.X.type", "pvs.outputs.Y.bogus", "extra"} <= set(errs)


@pytest.mark.parametrize(
    "text,where",
    [
        ("parameters: {mode: continuous\n", "line"),
        ("pvs:\n  inputs:\n    X: {type: float\n  bad: [\n", "line"),
        ("\tparameters: {}\n", "line"),
    ],
)
def test_bad_yaml_names_the_position(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "p/config.yaml")
    assert "p/config.yaml" in info.value.detail
    assert "not valid YAML" in info.value.detail
    assert where in info.value.detail


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert "mapping" in info.value.detail


def test_yaml_tags_are_not_executed() -> None:
    with pytest.raises(ConfigError):
        parse_config("parameters: !!python/object/apply:os.system ['true']\n")


# -- parameters: deep merge and validation of overrides ------------------------------------
def test_deep_merge_is_recursive_and_pure() -> None:
    base = {"a": 1, "nested": {"x": 1, "y": {"z": 2}}, "list": [1, 2]}
    over = {"nested": {"y": {"w": 3}}, "list": [9], "b": 2}
    merged = deep_merge(base, over)
    assert merged == {"a": 1, "b": 2, "nested": {"x": 1, "y": {"z": 2, "w": 3}}, "list": [9]}
    assert base == {"a": 1, "nested": {"x": 1, "y": {"z": 2}}, "list": [1, 2]}
    assert over == {"nested": {"y": {"w": 3}}, "list": [9], "b": 2}
    merged["nested"]["x"] = 100
    assert base["nested"]["x"] == 1, "the result must not share nested dicts with base"


def test_deep_merge_scalar_replaces_dict_and_back() -> None:
    assert deep_merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    assert deep_merge({"a": 5}, {"a": {"b": 1}}) == {"a": {"b": 1}}


def test_merged_parameters_applies_overrides() -> None:
    cfg = parse_config("parameters: {interval: 1.0, threshold: 75, opts: {a: 1, b: 2}}\n")
    params = merged_parameters(cfg, {"interval": 0.1, "opts": {"b": 3}}).model_dump()
    assert params["interval"] == 0.1
    assert params["threshold"] == 75
    assert params["opts"] == {"a": 1, "b": 3}
    assert params["mode"] == "continuous"
    assert cfg.parameters["interval"] == 1.0, "the config defaults must not be modified"


@pytest.mark.parametrize(
    "override,field", [({"interval": 0}, "interval"), ({"mode": "never"}, "mode")]
)
def test_merged_parameters_rejects_bad_overrides(override: dict, field: str) -> None:
    cfg = parse_config("parameters: {interval: 1.0}\n")
    with pytest.raises(ConfigError) as info:
        merged_parameters(cfg, override, where="x/config.yaml")
    assert info.value.file == "x/config.yaml"
    assert f"parameters.{field}" in [e["loc"] for e in info.value.errors]


def test_json_schema_describes_every_field() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    pvspec = schema["$defs"]["PVSpec"]
    assert pvspec["additionalProperties"] is False
    for name, prop in pvspec["properties"].items():
        assert prop.get("description"), f"PVSpec.{name} has no description"


# -- record planning (ioc.plan_records is pure: no EPICS needed) --------------------------------
def test_default_records_per_kind() -> None:
    names = lambda recs: [r.short for r in recs]  # noqa: E731
    assert names(default_records("task", "continuous")) == [
        "ENABLE",
        "STATUS",
        "MESSAGE",
        "CYCLE_COUNT",
    ]
    assert names(default_records("task", "triggered")) == ["ENABLE", "STATUS", "MESSAGE", "RUN"]
    assert names(default_records("job", "job")) == ["STATUS", "MESSAGE"]
    writable = {r.short for r in default_records("task", "triggered") if r.writable}
    assert writable == {"ENABLE", "RUN"}


@pytest.mark.parametrize("default", sorted(DEFAULT_PV_NAMES))
@pytest.mark.parametrize("section", ["inputs", "outputs"])
def test_collision_with_default_pv(default: str, section: str) -> None:
    cfg = parse_config(f"pvs: {{{section}: {{{default}: {{}}}}}}\n")
    with pytest.raises(ConfigError) as info:
        plan_records("P", "plug", "task", "continuous", cfg)
    locs = {e["loc"]: e["msg"] for e in info.value.errors}
    assert f"pvs.{section}.{default}" in locs
    assert "default PV" in locs[f"pvs.{section}.{default}"]


def test_plan_records_full_set() -> None:
    cfg = parse_config("pvs: {inputs: {SP: {}}, outputs: {RB: {}}}\n")
    recs = plan_records("BL:NS", "mon", "task", "continuous", cfg)
    assert [r.short for r in recs] == ["ENABLE", "STATUS", "MESSAGE", "CYCLE_COUNT", "SP", "RB"]
    assert {r.short for r in recs if r.writable} == {"ENABLE", "SP"}


def test_pv_name_over_60_characters_names_the_field() -> None:
    prefix, plugin = "BL", "plug"
    room = MAX_RECORD_NAME - len(f"{prefix}:{plugin.upper()}:")
    ok, too_long = "A" * room, "B" * (room + 1)
    cfg = parse_config(f"pvs: {{outputs: {{{ok}: {{}}, {too_long}: {{}}}}}}\n")
    with pytest.raises(ConfigError) as info:
        plan_records(prefix, plugin, "task", "continuous", cfg)
    locs = {e["loc"]: e["msg"] for e in info.value.errors}
    assert list(locs) == [f"pvs.outputs.{too_long}"]
    assert "61 characters" in locs[f"pvs.outputs.{too_long}"]
    assert "60" in locs[f"pvs.outputs.{too_long}"]


def test_long_plugin_name_blames_the_name() -> None:
    cfg = parse_config("")
    with pytest.raises(ConfigError) as info:
        plan_records("PREFIX", "n" * 50, "task", "continuous", cfg)
    assert "name" in [e["loc"] for e in info.value.errors]


@pytest.mark.parametrize(
    "text,limit,expected",
    [
        ("short", 39, "short"),
        ("x" * 50, 39, "x" * 39),
        ("a\nb", 39, "a b"),
        ("é" * 30, 39, "é" * 19),
    ],
)
def test_truncate_fits_string_records(text: str, limit: int, expected: str) -> None:
    out = truncate(text, limit)
    assert out == expected
    assert len(out.encode()) <= limit
