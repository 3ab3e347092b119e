"""The record plan (iocmng.epics.plan): pure, one merge rule, STATUS and alarm names.

No EPICS here: the plan is checked against the old per-consumer derivation
(``plan_records`` + ``plugin_prefix``), against EPICS's own numbering (read
from pythonSoftIOC's ``softioc/alarm.py`` without importing softioc) and
against the import graph (validation does not reach the softioc bridge).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import grimp
import pytest

from iocmng.config.models import deep_merge, merged_parameters, parse_config
from iocmng.epics import ioc
from iocmng.epics import plan as plan_module
from iocmng.epics.plan import (
    DEFAULT_PV_NAMES,
    JOB_STATES,
    LINK_ALARM,
    SYS_CONN_ALARM,
    TASK_STATES,
    Alarm,
    AlarmStatus,
    JobStatus,
    RecordPlan,
    Severity,
    TaskStatus,
    merge_parameters,
    plan,
    plan_records,
    plugin_prefix,
    status_fields,
)
from iocmng.errors import ConfigError

FULL = """
prefix: INTLK:01
parameters: {mode: triggered, version: 3, opts: {a: 1, b: 2}, threshold: 5}
pvs:
  inputs:
    SP: {type: float, value: 1.5, low: 0, high: 10, unit: mm}
    GO: {type: bool}
    WIRED: {type: float, link: 'EXT:PV'}
  outputs:
    OUT: {type: int}
    TXT: {type: string}
    SYS_CONN: {type: string}
    REMOTE: {type: float, link: 'EXT:OUT'}
rules:
  - {id: hot, condition: 'SP > threshold', outputs: {OUT: 1}}
"""

CONFIGS = {
    "plain": "",
    "inputs": "parameters: {interval: 0.5}\npvs: {inputs: {A: {type: int}}, outputs: {B: {type: string}}}",
    "triggered": "parameters: {mode: triggered}",
    "reactive": "parameters: {mode: reactive}\npvs: {inputs: {A: {}}, outputs: {B: {}}}\n"
    "transforms: [{output: B, expression: 'A*2'}]",
    "full": FULL,
}


def _configs() -> list:
    return [pytest.param(parse_config(text), id=key) for key, text in CONFIGS.items()]


# -- the plan agrees with what each consumer derived before ------------------------------------
@pytest.mark.parametrize("cfg", _configs())
@pytest.mark.parametrize("kind", ["task", "job"])
def test_plan_names_are_the_old_derivation(cfg, kind: str) -> None:
    p = plan("BL:NS", "my-plugin", kind, cfg, {})
    mode = merged_parameters(cfg, {}).mode if kind == "task" else "job"
    specs = plan_records("BL:NS", "my-plugin", kind, mode, cfg)
    base = plugin_prefix("BL:NS", "my-plugin", cfg)
    assert p.base == base
    assert p.mode == mode
    assert list(p.records) == specs
    assert list(p.names) == [f"{base}:{s.short}" for s in specs]
    assert p.full_names == p.names
    assert p.shorts == tuple(s.short for s in specs)
    assert all(p.full(s) == n for s, n in zip(p.shorts, p.names, strict=True))


def test_plan_of_a_full_config() -> None:
    p = plan("SPARC", "my-interlock", "task", parse_config(FULL), {"threshold": 7})
    assert p.base == "SPARC:INTLK:01" and p.kind == "task" and p.mode == "triggered"
    assert p.shorts == (
        "ENABLE",
        "STATUS",
        "MESSAGE",
        "RUN",
        "VERSION",
        "CLEAR",
        "RESET",
        "CONN_INP",
        "CONN_INP_NAMES",
        "CONN_OUT",
        "CONN_OUT_NAMES",
        "SP",
        "GO",
        "WIRED",
        "OUT",
        "TXT",
        "SYS_CONN",
        "REMOTE",
    )
    assert p.writable == {
        "ENABLE",
        "RUN",
        "CLEAR",
        "RESET",
        "SP",
        "GO",
    }  # WIRED mirrors its link: read-only
    assert p.default_pvs == (
        "ENABLE",
        "STATUS",
        "MESSAGE",
        "RUN",
        "VERSION",
        "CLEAR",
        "RESET",
        "CONN_INP",
        "CONN_INP_NAMES",
        "CONN_OUT",
        "CONN_OUT_NAMES",
    )
    assert set(p.default_pvs) <= DEFAULT_PV_NAMES
    assert {s: p.spec(s).record_type for s in p.shorts} == {
        "ENABLE": "bo",
        "STATUS": "mbbi",
        "MESSAGE": "stringin",
        "RUN": "bo",
        "VERSION": "stringin",
        "CLEAR": "bo",
        "RESET": "bo",
        "CONN_INP": "waveform",
        "CONN_INP_NAMES": "waveform",
        "CONN_OUT": "waveform",
        "CONN_OUT_NAMES": "waveform",
        "SP": "ao",
        "GO": "bo",
        "WIRED": "ai",
        "OUT": "longin",
        "TXT": "stringin",
        "SYS_CONN": "stringin",
        "REMOTE": "ai",
    }
    assert p.spec("STATUS").value_type == "int" and p.spec("CONN_INP").value_type == "array"
    assert p.spec("CONN_INP_NAMES").value_type == "string" and p.spec("SP").value_type == "float"
    assert "SP" in p and "NOPE" not in p
    with pytest.raises(KeyError, match="NOPE"):
        p.spec("NOPE")
    assert p.states == TASK_STATES and p.status is TaskStatus
    assert p.parameters["threshold"] == 7 and p.parameters["opts"] == {"a": 1, "b": 2}


def test_exact_prefix_has_no_plugin_segment() -> None:
    p = plan("LOCAL:P", "demo", "task", parse_config(""), exact=True)
    assert p.base == "LOCAL:P" and p.names[0] == "LOCAL:P:ENABLE"


def test_plan_is_frozen_and_its_parameters_read_only() -> None:
    p = plan("P", "x", "task", parse_config("parameters: {opts: {a: 1}}"), {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.base = "Q"  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.parameters["opts"] = 2  # type: ignore[index]
    mine = p.parameters_dict()
    mine["opts"]["a"] = 99
    assert p.parameters["opts"] == {"a": 1}
    assert p == plan("P", "x", "task", parse_config("parameters: {opts: {a: 1}}"), {})
    assert isinstance(p, RecordPlan)


def test_plan_refuses_what_the_record_check_refuses() -> None:
    with pytest.raises(ConfigError) as err:
        plan("P", "x", "task", parse_config("pvs: {inputs: {STATUS: {}}}"))
    assert err.value.file == "config.yaml" and err.value.errors[0]["loc"] == "pvs.inputs.STATUS"
    with pytest.raises(ConfigError, match="over the EPICS limit of 60"):
        plan("P" * 40, "n" * 15, "task", parse_config(""))
    with pytest.raises(ValueError, match="kind"):
        plan("P", "x", "device", parse_config(""))


# -- one parameter rule: the runtime's ----------------------------------------------------------
def test_task_parameters_are_the_validated_keys() -> None:
    cfg = parse_config("parameters: {interval: 2, version: 1.5, opts: {a: 1, b: 2}}")
    mode, params = merge_parameters("task", cfg, {"opts": {"b": 3}, "extra": True})
    assert mode == "continuous"
    assert params == {
        "mode": "continuous",
        "interval": 2.0,
        "version": "1.5",
        "opts": {"a": 1, "b": 3},
        "extra": True,
    }
    assert params == merged_parameters(cfg, {"opts": {"b": 3}, "extra": True}).as_dict()


def test_job_parameters_are_the_merge_as_written() -> None:
    """A job sees config.yaml's parameters deep-merged with the overrides: no mode/interval added,
    version not turned into text (runtime.load_code's rule; the startup view used to agree only by copy)."""
    cfg = parse_config("parameters: {version: 2, opts: {a: 1, b: 2}}")
    mode, params = merge_parameters("job", cfg, {"opts": {"b": 3}})
    assert mode == "job"
    assert params == {"version": 2, "opts": {"a": 1, "b": 3}}
    assert params == deep_merge(cfg.parameters, {"opts": {"b": 3}})
    assert "mode" not in plan("P", "j", "job", cfg, {"opts": {"b": 3}}).parameters


def test_job_overrides_are_validated_as_the_runtime_does() -> None:
    """The runtime refuses a job whose overrides break a scheduling key; so does the plan."""
    cfg = parse_config("")
    with pytest.raises(ConfigError) as err:
        plan("P", "j", "job", cfg, {"interval": -1}, where="j/config.yaml")
    assert err.value.file == "j/config.yaml" and err.value.errors[0]["loc"] == "parameters.interval"


def test_a_task_mode_must_be_a_task_mode() -> None:
    cfg = parse_config("parameters: {mode: job}")
    with pytest.raises(ConfigError) as err:
        plan("P", "t", "task", cfg)
    assert err.value.file == "parameters" and err.value.errors[0]["loc"] == "parameters.mode"
    assert "use one of continuous, triggered, reactive" in err.value.errors[0]["msg"]
    assert plan("P", "j", "job", cfg).mode == "job"


def test_overrides_choose_the_mode_and_so_the_records() -> None:
    cfg = parse_config("")
    assert "RUN" in plan("P", "t", "task", cfg, {"mode": "triggered"})
    assert "CYCLE_COUNT" in plan("P", "t", "task", cfg, {})


# -- STATUS and alarms by name ----------------------------------------------------------------------
def test_status_enums_give_the_old_states() -> None:
    assert (
        TaskStatus.RUN == 1 and TaskStatus.RUN.label == "RUN" and TaskStatus(4) is TaskStatus.ERROR
    )
    assert JobStatus.FAILED == 3 and JobStatus.FAILED.label == "FAILED"
    assert TASK_STATES == ("INIT", "RUN", "PAUSED", "END", "ERROR")
    assert JOB_STATES == ("IDLE", "RUNNING", "SUCCESS", "FAILED")
    assert ioc.TASK_STATES is TASK_STATES and ioc.JOB_STATES is JOB_STATES


def test_status_mbbi_fields_are_unchanged() -> None:
    assert status_fields("task") == {
        "ZRST": "INIT",
        "ONST": "RUN",
        "TWST": "PAUSED",
        "THST": "END",
        "FRST": "ERROR",
        "FRSV": "MAJOR",
    }
    assert status_fields("job") == {
        "ZRST": "IDLE",
        "ONST": "RUNNING",
        "TWST": "SUCCESS",
        "THST": "FAILED",
        "THSV": "MAJOR",
    }


def _softioc_alarm() -> dict[str, int]:
    """pythonSoftIOC's alarm.h numbers, read from its source (importing softioc loads EPICS)."""
    spec = importlib.util.find_spec("softioc")
    assert spec is not None and spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations)), "alarm.py").read_text()
    names: dict[str, int] = {}
    exec(compile(source, "softioc/alarm.py", "exec"), {}, names)  # constants only
    return names


def test_alarm_names_match_epics() -> None:
    epics = _softioc_alarm()
    for sev in Severity:
        assert epics["NO_ALARM" if sev is Severity.NO_ALARM else f"{sev.name}_ALARM"] == sev
    for stat in AlarmStatus:
        key = {"NO_ALARM": "NO_ALARM", "HWLIMIT": "HW_LIMIT_ALARM"}.get(
            stat.name, f"{stat.name}_ALARM"
        )
        assert epics[key] == stat, stat
    assert LINK_ALARM == Alarm(AlarmStatus.LINK, Severity.INVALID) == (14, 3)
    assert SYS_CONN_ALARM == (AlarmStatus.LINK, Severity.MAJOR) == (14, 2)
    assert ioc.LINK_ALARM is LINK_ALARM


def test_pv_clients_name_alarms_as_before() -> None:
    from iocmng.epics.pvclient import CA_SEVERITIES, CA_STATUSES

    assert CA_SEVERITIES == ["NO_ALARM", "MINOR", "MAJOR", "INVALID"]
    assert CA_STATUSES == [
        "NO_ALARM",
        "READ",
        "WRITE",
        "HIHI",
        "HIGH",
        "LOLO",
        "LOW",
        "STATE",
        "COS",
        "COMM",
        "TIMEOUT",
        "HWLIMIT",
        "CALC",
        "SCAN",
        "LINK",
        "SOFT",
        "BAD_SUB",
        "UDF",
        "DISABLE",
        "SIMM",
        "READ_ACCESS",
        "WRITE_ACCESS",
    ]


# -- the plan is pure; validation does not reach the bridge ------------------------------------------
@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(
        "iocmng", include_external_packages=True, cache_dir=None
    )  # no stale cache


@pytest.mark.parametrize(
    "module",
    [
        "iocmng.epics.plan",
        "iocmng.epics.alarm",
        "iocmng.epics.backend",
        "iocmng.testing",
        "iocmng.epics.displays",
    ],
)
def test_pure_modules_import_neither_softioc_nor_the_bridge(
    graph: grimp.ImportGraph, module: str
) -> None:
    assert graph.find_shortest_chain(module, "iocmng.epics.ioc") is None
    assert graph.find_shortest_chain(module, "softioc") is None


def test_validation_does_not_import_the_softioc_bridge(graph: grimp.ImportGraph) -> None:
    assert graph.find_shortest_chain("iocmng.service.validation", "iocmng.epics.ioc") is None
    assert graph.find_shortest_chain("iocmng.service.validation", "softioc") is None


def test_old_names_stay_importable_from_the_bridge_module() -> None:
    for name in (
        "plan_records",
        "plugin_prefix",
        "RecordSpec",
        "TASK_STATES",
        "JOB_STATES",
        "MAX_STRING",
        "truncate",
        "PluginRecords",
        "DEFAULT_PV_NAMES",
        "MAX_RECORD_NAME",
        "default_records",
        "base_of",
        "LINK_ALARM",
        "IocBridge",
        "FastRecord",
    ):
        assert hasattr(ioc, name), name
        if hasattr(plan_module, name):
            assert getattr(ioc, name) is getattr(plan_module, name)
