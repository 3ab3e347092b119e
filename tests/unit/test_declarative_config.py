"""Declarative config.yaml: ``arguments:``, links, latches, alarms, rules and transforms.

Covers the files of iocmng 2.7.9 (its README examples load unchanged), every
mistake a declarative config can make (each a ConfigError naming the field),
the records such a plugin gets, and loading a config.yaml-only plugin.
"""

from __future__ import annotations

import itertools
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REFERENCE_2_7_9

from iocmng import DeclarativeTask, TaskBase
from iocmng.config.models import PluginConfig, parse_config
from iocmng.epics.plan import plan_records, plugin_prefix
from iocmng.errors import ConfigError, PluginLoadError
from iocmng.runtime.loader import is_declarative, kind_of, load_class, unload

_ids = itertools.count()

#: The examples of the iocmng 2.7.9 README, verbatim (tests/reference_2_7_9/README.md).
README_DECLARATIVE = (REFERENCE_2_7_9 / "interlock" / "config.yaml").read_text()
README_INTERLOCK_PY = (REFERENCE_2_7_9 / "interlock" / "my_interlock.py").read_text()
README_PLAIN = (REFERENCE_2_7_9 / "plain" / "config.yaml").read_text()


def problems(text: str) -> list[str]:
    """Parse config text that must fail; return its errors as ``"loc: msg"`` lines."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "plugin/config.yaml")
    exc = info.value
    assert exc.status == 422
    assert exc.file == "plugin/config.yaml"
    assert exc.errors, "a ConfigError must list its errors"
    return [f"{e['loc']}: {e['msg']}" for e in exc.errors]


def assert_problem(text: str, *words: str) -> None:
    """The config fails, and one of its errors contains every one of ``words``."""
    found = problems(text)
    assert any(all(w in line for w in words) for line in found), (words, found)


# -- the reference's README examples -------------------------------------------------------------
def test_readme_declarative_example_loads_unchanged() -> None:
    cfg = parse_config(README_DECLARATIVE)
    assert cfg.mode == "continuous"
    assert cfg.parameters == {"mode": "continuous", "interval": 1.0, "pva": False}
    # arguments: is merged into pvs: and then dropped
    assert cfg.arguments is None
    assert list(cfg.pvs.inputs) == ["temp", "pressure"]
    assert list(cfg.pvs.outputs) == ["avg_temp", "alarm"]
    temp = cfg.pvs.inputs["temp"]
    assert (temp.link, temp.effective_link_mode, temp.buffer_size) == (
        "DEVICE:TEMP",
        "monitor",
        100,
    )
    assert cfg.pvs.inputs["pressure"].link == "DEVICE:PRESSURE"
    alarm = cfg.pvs.outputs["alarm"]
    assert (alarm.type, alarm.latch, alarm.latch_dir, alarm.alarm_on) == (
        "bool",
        True,
        "rise",
        "MAJOR",
    )
    assert (alarm.znam, alarm.onam, alarm.value) == ("OK", "ALARM", 0)
    assert list(cfg.wired()) == ["temp", "pressure"]
    assert cfg.has_logic
    assert cfg.rule_ids() == ["OVER_TEMP"]
    assert cfg.rules[0].outputs == {"alarm": 1}
    assert cfg.rules[0].actuate == "change"
    assert cfg.rule_defaults == {"alarm": 0}
    assert [(t.output, t.expression) for t in cfg.transforms] == [("avg_temp", "mean(temp_buf)")]


def test_readme_declarative_example_records() -> None:
    cfg = parse_config(README_DECLARATIVE)
    recs = {r.short: r for r in plan_records("TEST", "interlock", "task", cfg.mode, cfg)}
    for name in (
        "ENABLE",
        "STATUS",
        "MESSAGE",
        "CYCLE_COUNT",
        "CLEAR",
        "RESET",
        "CONN_INP",
        "CONN_INP_NAMES",
        "temp",
        "pressure",
        "avg_temp",
        "alarm",
    ):
        assert name in recs, name
    # no wired output, no version parameter, continuous: none of these
    for name in ("CONN_OUT", "CONN_OUT_NAMES", "VERSION", "RUN"):
        assert name not in recs, name
    # wired inputs mirror their external PV: read-only, never autosaved
    assert not recs["temp"].writable and not recs["temp"].autosave
    assert not recs["pressure"].writable and not recs["pressure"].autosave
    assert not recs["avg_temp"].writable and not recs["alarm"].writable
    assert recs["CLEAR"].writable and recs["CLEAR"].special == "pulse"
    assert recs["RESET"].writable and recs["RESET"].special == "pulse"
    assert recs["CONN_INP"].special == "conn" and recs["CONN_INP"].count == 2
    assert not recs["CONN_INP"].writable
    assert recs["CONN_INP_NAMES"].special == "names"
    assert recs["CONN_INP_NAMES"].spec.value == "temp pressure"


def test_readme_plain_example_loads_unchanged() -> None:
    cfg = parse_config(README_PLAIN)
    assert cfg.arguments is None
    assert cfg.parameters["threshold"] == 75.0
    sp = cfg.pvs.inputs["SETPOINT"]
    assert (sp.type, sp.value, sp.unit, sp.prec, sp.low, sp.high) == (
        "float",
        50.0,
        "%",
        2,
        0.0,
        100.0,
    )
    assert sp.link is None and not sp.wired
    assert set(cfg.pvs.outputs) == {"READING", "ALARM"}
    assert cfg.pvs.outputs["ALARM"].onam == "ALARM"
    assert not cfg.has_logic
    recs = {r.short: r for r in plan_records("TEST", "plain", "task", cfg.mode, cfg)}
    # an unwired input stays an operator's setting
    assert recs["SETPOINT"].writable and recs["SETPOINT"].autosave
    assert not recs["READING"].writable
    for name in ("CLEAR", "RESET", "CONN_INP", "CONN_OUT", "VERSION"):
        assert name not in recs, name


def test_pvs_and_arguments_are_merged() -> None:
    cfg = parse_config(
        "pvs: {inputs: {A: {}}, outputs: {B: {}}}\n"
        "arguments: {inputs: {C: {}}, outputs: {D: {type: int}}}\n"
    )
    assert set(cfg.pvs.inputs) == {"A", "C"}
    assert set(cfg.pvs.outputs) == {"B", "D"}
    assert cfg.pvs.outputs["D"].type == "int"


# -- records of plugins with logic ------------------------------------------------------------------
def test_version_record_only_when_version_is_set() -> None:
    cfg = parse_config("parameters: {version: 1.2}\n")
    recs = {r.short: r for r in plan_records("T", "p", "task", cfg.mode, cfg)}
    assert recs["VERSION"].spec.value == "1.2" and not recs["VERSION"].writable
    assert "CLEAR" not in recs  # no logic
    cfg = parse_config("parameters: {}\n")
    assert "VERSION" not in {r.short for r in plan_records("T", "p", "task", cfg.mode, cfg)}


def test_wired_output_gets_conn_out() -> None:
    cfg = parse_config(
        "arguments: {outputs: {valve: {type: bool, link: 'pva://DEV:VALVE'}, "
        "fan: {type: int, link: 'ca://DEV:FAN', link_mode: poll, poll_rate: 0.5}}}\n"
    )
    recs = {r.short: r for r in plan_records("T", "p", "task", cfg.mode, cfg)}
    assert recs["CONN_OUT"].count == 2
    assert recs["CONN_OUT_NAMES"].spec.value == "valve fan"
    assert "CONN_INP" not in recs
    assert {"CLEAR", "RESET"} <= set(recs)  # links alone are logic
    fan = cfg.pvs.outputs["fan"]
    assert (fan.effective_link_mode, fan.poll_rate) == ("poll", 0.5)


def test_latch_alone_is_logic() -> None:
    cfg = parse_config("arguments: {outputs: {A: {type: bool, latch: true}}}\n")
    assert cfg.has_logic
    assert {"CLEAR", "RESET"} <= {r.short for r in plan_records("T", "p", "task", cfg.mode, cfg)}


def test_plugin_prefix_uses_config_prefix() -> None:
    cfg = parse_config("prefix: 'INTLK:01'\n")
    assert plugin_prefix("SPARC", "my-interlock", cfg) == "SPARC:INTLK:01"
    assert plugin_prefix("SPARC", "my-interlock", parse_config("")) == "SPARC:MY-INTERLOCK"
    assert plugin_prefix("SPARC", "my-interlock") == "SPARC:MY-INTERLOCK"


def test_plan_records_length_check_uses_the_prefix() -> None:
    cfg = parse_config(f"prefix: {'P' * 55}\n")
    with pytest.raises(ConfigError) as info:
        plan_records("SPARC", "x", "task", cfg.mode, cfg)
    assert "P" * 55 in info.value.detail and "EPICS limit" in info.value.detail


# -- accepted spellings -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [("rise", "rise"), ("fall", "fall"), ("any", "any"), ("'0->1'", "rise"), ("'1->0'", "fall")],
)
def test_latch_dir_and_its_aliases(text: str, expected: str) -> None:
    cfg = parse_config(
        f"arguments: {{outputs: {{A: {{type: bool, latch: true, latch_dir: {text}}}}}}}\n"
    )
    assert cfg.pvs.outputs["A"].latch_dir == expected


@pytest.mark.parametrize(
    "text,expected", [("MAJOR", "MAJOR"), ("major", "MAJOR"), ("Minor", "MINOR")]
)
def test_alarm_on_is_case_insensitive(text: str, expected: str) -> None:
    cfg = parse_config(f"arguments: {{outputs: {{A: {{type: bool, alarm_on: {text}}}}}}}\n")
    assert cfg.pvs.outputs["A"].alarm_on == expected


def test_alarm_on_number_thresholds() -> None:
    cfg = parse_config(
        "arguments: {outputs: {T: {alarm_on: MAJOR, alarm_high: 80, alarm_low: -5}}}\n"
    )
    t = cfg.pvs.outputs["T"]
    assert (t.alarm_high, t.alarm_low) == (80.0, -5.0)
    # iocmng 2.7.9 alarmed above the display limit `high`
    cfg = parse_config("arguments: {outputs: {T: {type: int, alarm_on: MINOR, high: 10}}}\n")
    assert cfg.pvs.outputs["T"].alarm_high == 10.0


def test_mode_is_an_alias_of_link_mode() -> None:
    cfg = parse_config(
        "arguments: {inputs: {T: {link: 'D:T', mode: poll, poll_rate: 2}, "
        "U: {link: 'D:U', mode: monitor, link_mode: monitor}, V: {link: 'D:V'}}}\n"
    )
    assert cfg.pvs.inputs["T"].effective_link_mode == "poll"
    assert cfg.pvs.inputs["U"].effective_link_mode == "monitor"
    assert cfg.pvs.inputs["V"].effective_link_mode == "monitor"  # the default


@pytest.mark.parametrize(
    "link", ["DEV:TEMP", "ca://DEV:TEMP", "pva://DEV:TEMP", "dev:temp.VAL", "X{1}"]
)
def test_good_links(link: str) -> None:
    cfg = parse_config(f"arguments: {{inputs: {{T: {{link: '{link}'}}}}}}\n")
    assert cfg.pvs.inputs["T"].link == link


@pytest.mark.parametrize("mode", ["continuous", "triggered", "reactive"])
def test_parameters_modes(mode: str) -> None:
    cfg = parse_config(f"parameters: {{mode: {mode}, version: v2, pva: true, timeout: 2.5}}\n")
    assert cfg.mode == mode


def test_sys_conn_string_output_is_accepted() -> None:
    cfg = parse_config("arguments: {outputs: {SYS_CONN: {type: string}}}\n")
    assert cfg.pvs.outputs["SYS_CONN"].type == "string"


# -- mistakes ----------------------------------------------------------------------------------------
def test_pv_in_both_pvs_and_arguments() -> None:
    assert_problem(
        "pvs: {inputs: {X: {}}}\narguments: {inputs: {X: {}}}\n", "both pvs: and arguments:", "X"
    )
    # also when it is an input in one and an output in the other
    assert_problem(
        "pvs: {outputs: {Y: {}}}\narguments: {inputs: {Y: {}}}\n", "both pvs: and arguments:", "Y"
    )


def test_same_name_input_and_output_within_arguments() -> None:
    assert_problem("arguments: {inputs: {X: {}}, outputs: {X: {}}}\n", "arguments", "X")


def test_latch_dir_typo() -> None:
    assert_problem(
        "arguments: {outputs: {A: {type: bool, latch: true, latch_dir: rising}}}\n",
        "arguments.outputs.A.latch_dir",
        "rise",
    )


def test_alarm_on_typo() -> None:
    assert_problem(
        "arguments: {outputs: {A: {type: bool, alarm_on: CRITICAL}}}\n",
        "arguments.outputs.A.alarm_on",
        "MAJOR",
    )


def test_link_mode_typo() -> None:
    assert_problem(
        "arguments: {inputs: {T: {link: 'D:T', link_mode: monitr}}}\n",
        "arguments.inputs.T.link_mode",
        "monitor",
    )


def test_mode_alias_typo() -> None:
    assert_problem(
        "arguments: {inputs: {T: {link: 'D:T', mode: pol}}}\n", "arguments.inputs.T.mode"
    )


def test_mode_and_link_mode_disagree() -> None:
    assert_problem(
        "arguments: {inputs: {T: {link: 'D:T', link_mode: poll, mode: monitor}}}\n",
        "arguments.inputs.T",
        "disagree",
    )


@pytest.mark.parametrize("key", ["poll_rate: 1", "link_mode: poll", "mode: monitor"])
def test_link_settings_without_link(key: str) -> None:
    assert_problem(
        f"arguments: {{inputs: {{T: {{{key}}}}}}}\n", "arguments.inputs.T", "needs a link"
    )


def test_poll_rate_with_monitor() -> None:
    assert_problem(
        "arguments: {inputs: {T: {link: 'D:T', link_mode: monitor, poll_rate: 1}}}\n",
        "arguments.inputs.T",
        "poll_rate",
    )
    # monitor is the default link mode
    assert_problem(
        "arguments: {inputs: {T: {link: 'D:T', poll_rate: 1}}}\n", "arguments.inputs.T", "poll_rate"
    )


@pytest.mark.parametrize("rate", [0, -1, 100000])
def test_poll_rate_bounds(rate: float) -> None:
    assert_problem(
        f"arguments: {{inputs: {{T: {{link: 'D:T', link_mode: poll, poll_rate: {rate}}}}}}}\n",
        "arguments.inputs.T.poll_rate",
    )


def test_rule_naming_an_undeclared_output() -> None:
    assert_problem(
        "arguments: {inputs: {T: {}}, outputs: {O: {}}}\n"
        "rules: [{id: HOT, condition: 'T > 1', outputs: {NOPE: 1}}]\n",
        "rules.HOT.outputs",
        "NOPE",
        "not a declared output",
    )


def test_rule_naming_an_input_as_output() -> None:
    assert_problem(
        "arguments: {inputs: {T: {}}}\nrules: [{id: HOT, condition: 'T > 1', outputs: {T: 1}}]\n",
        "rules.HOT.outputs",
        "'T'",
    )


def test_rule_output_that_is_wired() -> None:
    assert_problem(
        "arguments: {inputs: {T: {}}, outputs: {V: {link: 'D:V'}}}\n"
        "rules: [{id: HOT, condition: 'T > 1', outputs: {V: 1}}]\n",
        "rules.HOT.outputs",
        "'V'",
        "actuators",
    )


def test_unnamed_rule_is_named_by_position() -> None:
    assert_problem(
        "arguments: {inputs: {T: {}}, outputs: {O: {}}}\n"
        "rules: [{condition: 'T', outputs: {O: 1}}, {condition: 'T', outputs: {Z: 1}}]\n",
        "rules.rule-2.outputs",
        "'Z'",
    )


def test_actuator_that_is_not_wired() -> None:
    assert_problem(
        "arguments: {inputs: {T: {}}, outputs: {O: {}}}\n"
        "rules: [{id: R, condition: 'T > 1', actuators: {O: 1}}]\n",
        "rules.R.actuators",
        "'O'",
        "not a wired PV",
    )
    assert_problem(
        "arguments: {inputs: {T: {}}}\nrules: [{id: R, condition: 'T > 1', actuators: {GHOST: 1}}]\n",
        "rules.R.actuators",
        "'GHOST'",
    )


def test_message_pv_not_a_string_output() -> None:
    assert_problem(
        "arguments: {inputs: {T: {}}, outputs: {O: {}}}\n"
        "rules: [{id: R, condition: 'T > 1', message: hot, message_pv: O}]\n",
        "rules.R.message_pv",
        "'O'",
        "string output",
    )
    assert_problem(
        "arguments: {inputs: {T: {}}}\n"
        "rules: [{id: R, condition: 'T > 1', message: hot, message_pv: MSG}]\n",
        "rules.R.message_pv",
        "'MSG'",
    )
    # a string *input* is not an output either
    assert_problem(
        "arguments: {inputs: {T: {}, S: {type: string}}}\n"
        "rules: [{id: R, condition: 'T > 1', message: hot, message_pv: S}]\n",
        "rules.R.message_pv",
        "'S'",
    )


def test_rule_defaults_naming_an_undeclared_output() -> None:
    assert_problem(
        "arguments: {inputs: {T: {}}, outputs: {O: {}}}\nrule_defaults: {P: 0}\n",
        "rule_defaults",
        "'P'",
        "not a declared output",
    )
    assert_problem("arguments: {inputs: {T: {}}}\nrule_defaults: {T: 0}\n", "rule_defaults", "'T'")


def test_transform_to_an_undeclared_output() -> None:
    assert_problem(
        "arguments: {inputs: {T: {}}, outputs: {O: {}}}\n"
        "transforms: [{output: O, expression: 'T'}, {output: Q, expression: 'T * 2'}]\n",
        "transforms.1.output",
        "'Q'",
        "not a declared output",
    )


def test_duplicate_rule_ids() -> None:
    assert_problem(
        "arguments: {inputs: {T: {}}, outputs: {O: {}}}\n"
        "rules: [{id: R, condition: 'T', outputs: {O: 1}}, {id: R, condition: 'T > 2', outputs: {O: 2}}]\n",
        "rules",
        "duplicate id R",
    )


def test_rule_and_transform_unknown_keys() -> None:
    found = problems(
        "arguments: {inputs: {T: {}}, outputs: {O: {}}}\n"
        "rules: [{id: R, condition: 'T', output: {O: 1}}]\n"
        "transforms: [{output: O, expr: 'T'}]\n"
    )
    joined = "\n".join(found)
    assert "rules.0.output: unknown key" in joined
    assert "transforms.0.expr: unknown key" in joined


@pytest.mark.parametrize("spec", ["{condition: ''}", "{id: R}", "{condition: 'T', actuate: edge}"])
def test_malformed_rules(spec: str) -> None:
    assert_problem(f"arguments: {{inputs: {{T: {{}}}}}}\nrules: [{spec}]\n", "rules.0")


def test_latch_on_an_input() -> None:
    assert_problem(
        "arguments: {inputs: {T: {type: bool, latch: true}}}\n", "inputs.T", "latch", "outputs only"
    )


def test_alarm_on_a_string() -> None:
    assert_problem(
        "arguments: {outputs: {S: {type: string, alarm_on: MAJOR}}}\n",
        "arguments.outputs.S",
        "alarm_on",
        "string",
    )


def test_alarm_on_a_float_without_thresholds() -> None:
    assert_problem(
        "arguments: {outputs: {F: {type: float, alarm_on: MINOR}}}\n",
        "arguments.outputs.F",
        "alarm_high",
    )
    assert_problem(
        "arguments: {outputs: {N: {type: int, alarm_on: MAJOR, low: 0}}}\n",
        "arguments.outputs.N",
        "alarm_high",
    )


@pytest.mark.parametrize(
    "spec,word",
    [
        ("{type: float, alarm_high: 5}", "need alarm_on"),
        ("{type: bool, alarm_on: MAJOR, alarm_high: 1}", "not allowed on type bool"),
    ],
)
def test_alarm_thresholds_misused(spec: str, word: str) -> None:
    assert_problem(f"arguments: {{outputs: {{X: {spec}}}}}\n", "arguments.outputs.X", word)


@pytest.mark.parametrize(
    "link",
    [
        "DEV TEMP",
        "'DEV:TEMP '",
        "'DEV\"TEMP'",
        '"it\'s"',
        "''",
        "http://DEV:TEMP x",
        "'" + "A" * 201 + "'",
    ],
)
def test_bad_link(link: str) -> None:
    assert_problem(f"arguments: {{inputs: {{T: {{link: {link}}}}}}}\n", "arguments.inputs.T.link")


@pytest.mark.parametrize("prefix", ["'BAD PREFIX'", "':X'", "'A.B'", "'" + "P" * 61 + "'", "''"])
def test_bad_prefix(prefix: str) -> None:
    assert_problem(f"prefix: {prefix}\n", "prefix")


@pytest.mark.parametrize(
    "spec", ["{type: int}", "{type: bool}", "{type: float}", "{type: string, link: 'DEV:CONN'}"]
)
def test_sys_conn_must_be_a_plain_string_output(spec: str) -> None:
    assert_problem(f"arguments: {{outputs: {{SYS_CONN: {spec}}}}}\n", "SYS_CONN", "string")


@pytest.mark.parametrize(
    "params,loc",
    [
        ("{mode: sometimes}", "parameters.mode"),
        ("{pva: maybe}", "parameters.pva"),
        ("{timeout: 0}", "parameters.timeout"),
        ("{timeout: 61}", "parameters.timeout"),
    ],
)
def test_bad_logic_parameters(params: str, loc: str) -> None:
    assert_problem(f"parameters: {params}\n", loc)


def test_every_cross_check_mistake_is_reported() -> None:
    found = "\n".join(
        problems(
            "arguments: {inputs: {T: {latch: true}}, outputs: {O: {}}}\n"
            "rule_defaults: {P: 0}\n"
            "transforms: [{output: Q, expression: 'T'}]\n"
            "rules: [{id: R, condition: 'T', outputs: {Z: 1}, actuators: {O: 1}}]\n"
        )
    )
    for part in (
        "inputs.T",
        "rule_defaults",
        "transforms.0.output",
        "rules.R.outputs",
        "rules.R.actuators",
    ):
        assert part in found, part


# -- loading config.yaml-only plugins ---------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _restore_sys_path():
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def make_plugin(tmp_path: Path, files: dict[str, str]) -> tuple[Path, str]:
    name = f"decl{next(_ids)}"
    d = tmp_path / name
    d.mkdir()
    for fname, text in files.items():
        (d / fname).write_text(textwrap.dedent(text), encoding="utf-8")
    return d, name


RULE_ONLY = """\
arguments:
  inputs: {T: {}}
  outputs: {HOT: {type: bool}}
rules:
  - {id: HOT, condition: "T > 50", outputs: {HOT: 1}}
"""


@pytest.mark.parametrize(
    "config",
    [
        RULE_ONLY,
        README_DECLARATIVE,
        "arguments: {inputs: {T: {link: 'D:T'}}}\n",
        "arguments: {inputs: {T: {}}, outputs: {O: {}}}\n"
        "transforms: [{output: O, expression: 'T * 2'}]\n",
    ],
)
def test_config_only_plugin_is_a_declarative_task(tmp_path: Path, config: str) -> None:
    d, name = make_plugin(tmp_path, {"config.yaml": config})
    assert is_declarative(d)
    cls = load_class(d, name)
    assert cls is DeclarativeTask
    assert kind_of(cls) == "task"


@pytest.mark.parametrize(
    "config",
    ["", "parameters: {mode: continuous}\n", "arguments: {inputs: {T: {}}, outputs: {O: {}}}\n"],
)
def test_config_without_logic_and_no_code_is_refused(tmp_path: Path, config: str) -> None:
    d, name = make_plugin(tmp_path, {"config.yaml": config})
    assert not is_declarative(d)
    with pytest.raises(PluginLoadError) as info:
        load_class(d, name)
    assert "no .py file" in info.value.detail
    assert info.value.status == 422


def test_invalid_config_and_no_code_is_refused(tmp_path: Path) -> None:
    d, name = make_plugin(
        tmp_path, {"config.yaml": "rules: [{condition: 'x', outputs: {NOPE: 1}}]\n"}
    )
    assert not is_declarative(d)
    with pytest.raises(PluginLoadError) as info:
        load_class(d, name)
    assert "no .py file" in info.value.detail


def test_private_py_files_do_not_count_as_code(tmp_path: Path) -> None:
    d, name = make_plugin(tmp_path, {"config.yaml": RULE_ONLY, "_helpers.py": "X = 1\n"})
    assert load_class(d, name) is DeclarativeTask


def test_subclass_of_declarative_task_loads_the_subclass(tmp_path: Path) -> None:
    d, name = make_plugin(
        tmp_path, {"my_interlock.py": README_INTERLOCK_PY, "config.yaml": README_DECLARATIVE}
    )
    assert not is_declarative(d)  # it has code
    try:
        cls = load_class(d, name)
        assert cls.__name__ == "MyInterlock"
        assert cls is not DeclarativeTask
        assert issubclass(cls, DeclarativeTask) and issubclass(cls, TaskBase)
        assert kind_of(cls) == "task"
    finally:
        unload(name)


def test_declarative_task_is_concrete() -> None:
    assert not getattr(DeclarativeTask, "__abstractmethods__", None)
    assert isinstance(parse_config(README_DECLARATIVE), PluginConfig)
