"""A plugin's wiring and handle in-process, built from the runtime's services alone.

No Runtime and no EPICS: a :class:`~iocmng.runtime.handle.PluginHandle` and a
:class:`~iocmng.runtime.wiring.Wiring` are built with a
:class:`~iocmng.runtime.services.RuntimeServices` whose event publisher the
test reads, over records kept in memory (the fake record backend below). The
links are never started: a test plays the link layer by setting a link's
value and connection and calling the wiring's callbacks, as the
:class:`~iocmng.declarative.links.LinkSet` does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grimp
import pytest

from iocmng.config.models import parse_config
from iocmng.declarative.logic import Logic
from iocmng.epics.ioc import PluginRecords
from iocmng.epics.plan import plan_records
from iocmng.plugin.job import JobResult
from iocmng.runtime.handle import PluginHandle, PluginSpec, State
from iocmng.runtime.services import RuntimeServices
from iocmng.runtime.wiring import Wiring


class FakeRecord:
    def __init__(self, value: Any) -> None:
        self.value = value
        self.history: list[Any] = [value]

    def set(self, value: Any, process: bool = True) -> None:
        self.value = value
        self.history.append(value)

    def get(self) -> Any:
        return self.value


class Plugin:
    """One plugin's handle, wiring and in-memory records, and the events they published."""

    def __init__(self, config_text: str, *, kind: str = "task", name: str = "wired") -> None:
        self.events: list[dict[str, Any]] = []
        self.triggers: list[tuple[str, Any, Any]] = []
        self.services = RuntimeServices(
            emit=lambda kind, **data: self.events.append({"type": kind, **data})
        )
        config = parse_config(config_text)
        params: dict[str, Any] = {"mode": "continuous", "interval": 1.0, **config.parameters}
        h = PluginHandle(PluginSpec(name, Path(".")), self.services)
        h.config, h.params, h.kind = config, params, kind
        h.mode = params["mode"] if kind == "task" else "job"
        records = PluginRecords(f"TEST:{name.upper()}")
        for rec in plan_records("TEST", name, kind, h.mode, config):
            records.records[rec.short] = FakeRecord(rec.spec.value)
            records.types[rec.short] = rec.value_type
        h.records = records
        self.h = h
        self.wiring: Wiring | None = None
        if config.has_logic:
            self.wiring = Wiring(
                h,
                config,
                Logic(config, params),
                "ca",
                self.services,
                on_trigger=lambda *args: self.triggers.append(args),
            )
            h.wiring = self.wiring

    def value(self, short: str) -> Any:
        assert self.h.records is not None
        return self.h.records.get(short)

    def link_update(self, name: str, value: Any) -> None:
        """What the LinkSet does when a wired PV sends a value."""
        assert self.wiring is not None
        link = self.wiring.links.links[name]
        if not link.connected:
            link.connected = True
            self.wiring.on_connection(name, True)
        old, link.value = link.value, value
        if link.buffer is not None:
            link.buffer.append(value)
        self.wiring.on_link_value(name, value, old)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


INTERLOCK = """
parameters: {mode: continuous, limit: 10}
arguments:
  inputs:
    T: {type: float, value: 0.0, link: 'ca://DEV:T', buffer_size: 3}
    P: {type: float, value: 0.0, link: 'ca://DEV:P'}
    CMD: {type: int, value: 0, link: 'ca://DEV:CMD', trigger: true}
  outputs:
    ALARM: {type: int, value: 0}
    MEAN: {type: float, value: 0.0}
    SYS_CONN: {type: string, value: ''}
transforms:
  - {output: MEAN, expression: 'mean(T_buf)'}
rule_defaults: {ALARM: 0}
rules:
  - id: HOT
    condition: 'T > limit'
    message: 'too hot'
    outputs: {ALARM: 1}
"""


def test_a_cycle_writes_outputs_and_publishes_fired_rules_through_the_services() -> None:
    p = Plugin(INTERLOCK)
    assert p.wiring is not None
    p.link_update("T", 5.0)
    assert p.wiring.cycle() == []
    assert (p.value("ALARM"), p.value("MEAN")) == (0, 5.0)
    p.link_update("T", 20.0)
    assert p.wiring.cycle() == []
    assert (p.value("ALARM"), p.value("MEAN")) == (1, 12.5)
    (rule,) = p.of_type("rule")
    assert (
        rule["plugin"] == "wired" and rule["rule"] == "HOT" and rule["message"].endswith("too hot")
    )


def test_wired_inputs_mirror_their_pv_and_a_trigger_input_calls_the_hook_on_change_only() -> None:
    p = Plugin(INTERLOCK)
    p.link_update("CMD", 3)
    assert p.value("CMD") == 3
    assert p.triggers == [("CMD", 3, 0)]
    p.link_update("CMD", 3)  # the same value again: no call
    p.link_update("P", 1.5)  # not a trigger input
    assert p.triggers == [("CMD", 3, 0)] and p.value("P") == 1.5


def test_connections_show_in_conn_inp_sys_conn_and_the_events() -> None:
    p = Plugin(INTERLOCK)
    assert p.wiring is not None
    p.link_update("T", 1.0)
    assert p.value("CONN_INP") == [1, 0, 0]
    assert p.value("SYS_CONN") == "DISCONNECTED: P, CMD"
    p.link_update("P", 1.0)
    p.link_update("CMD", 1)
    assert p.value("CONN_INP") == [1, 1, 1] and p.value("SYS_CONN") == "OK"
    p.wiring.links.links["P"].connected = False
    p.wiring.on_connection("P", False)
    assert p.value("SYS_CONN") == "DISCONNECTED: P"
    assert [(e["link"], e["pv"], e["connected"]) for e in p.of_type("link")] == [
        ("T", "DEV:T", True),
        ("P", "DEV:P", True),
        ("CMD", "DEV:CMD", True),
        ("P", "DEV:P", False),
    ]


REACTIVE = """
parameters: {mode: reactive}
arguments:
  inputs:
    A: {type: float, value: 1.0, link: 'ca://DEV:A'}
  outputs:
    INV: {type: float, value: 0.0}
transforms:
  - {output: INV, expression: '1 / A'}
"""


async def test_reactive_changes_are_evaluated_once_per_loop_turn_and_an_error_fails_the_plugin() -> (
    None
):
    p = Plugin(REACTIVE)
    p.h.set_state(State.RUNNING)
    p.link_update("A", 4.0)  # connection and value: two changes, one evaluation
    assert p.value("INV") == 0.0  # not yet: one loop turn later
    await asyncio.sleep(0)
    assert p.value("INV") == 0.25 and p.h.cycle_count == 1
    assert p.wiring is not None and p.wiring.evaluations == 1
    p.link_update("A", 0.0)
    await asyncio.sleep(0)
    assert p.h.error_count == 1 and p.h.state == State.RUNNING
    assert p.value("STATUS") == 4 and p.value("MESSAGE").startswith("transform INV: ExpressionEval")
    assert p.h.last_error is not None and "ZeroDivisionError" in p.h.last_error
    assert p.of_type("error")[0]["error"] == p.h.last_error
    p.link_update("A", 2.0)  # one success clears the error
    await asyncio.sleep(0)
    assert p.value("STATUS") == 1 and p.value("MESSAGE") == "recovered" and p.value("INV") == 0.5


async def test_a_disabled_plugin_evaluates_nothing() -> None:
    p = Plugin(REACTIVE)
    p.h.set_state(State.RUNNING)
    p.h.set_enabled(False)
    p.link_update("A", 4.0)
    await asyncio.sleep(0)
    assert p.value("INV") == 0.0 and p.h.cycle_count == 0 and p.h.state == State.PAUSED


TASK = """
arguments:
  inputs: {X: {type: int, value: 0}}
"""


def test_task_state_changes_are_handle_methods() -> None:
    p = Plugin(TASK)
    h = p.h
    h.starting()
    assert (h.state, p.value("STATUS")) == (State.STARTING, 0)
    h.apply_enable()
    assert (h.state, p.value("STATUS")) == (State.RUNNING, 1)
    h.cycle_ok()
    h.set_enabled(False)  # pause: STATUS PAUSED, the count published at once
    assert (h.state, p.value("STATUS"), p.value("CYCLE_COUNT")) == (State.PAUSED, 2, 1)
    h.set_enabled(True)
    assert (h.state, p.value("STATUS")) == (State.RUNNING, 1)
    h.fail(ValueError("bad value"))
    assert (p.value("STATUS"), p.value("MESSAGE"), h.last_error) == (
        4,
        "execute: ValueError: bad value",
        "execute: ValueError: bad value",
    )
    h.reset_count()
    assert (h.cycle_count, p.value("CYCLE_COUNT"), p.value("MESSAGE")) == (0, 0, "reset")
    assert h.mark_stalled("held the loop") and not h.mark_stalled("again")
    h.ended()
    assert p.value("STATUS") == 3
    h.hold_failed("held the loop")
    assert (h.state, p.value("STATUS"), p.value("MESSAGE"), h.last_error) == (
        State.FAILED,
        4,
        "held the loop",
        "held the loop",
    )
    assert [e["state"] for e in p.of_type("state")] == [
        "starting",
        "running",
        "paused",
        "running",
        "failed",
    ]


def test_a_plugin_own_write_to_an_input_is_not_taken_for_an_operator() -> None:
    p = Plugin(TASK)
    p.h.set_pv("X", 7)
    assert p.value("X") == 7
    assert p.h.take_echo("X", 7) and not p.h.take_echo("X", 7)
    with pytest.raises(KeyError, match="managed by iocmng"):
        p.h.set_pv("STATUS", 1)


def test_job_runs_are_handle_methods() -> None:
    p = Plugin("", kind="job")
    h = p.h
    h.set_state(State.IDLE)
    h.job_started()
    assert (h.state, h.busy, p.value("STATUS"), p.value("MESSAGE")) == (
        State.RUNNING,
        True,
        1,
        "running",
    )
    h.job_result(JobResult(False, {}, ""))
    h.job_done()
    assert (h.state, h.busy, p.value("STATUS"), p.value("MESSAGE")) == (
        State.IDLE,
        False,
        3,
        "failed",
    )
    assert (h.cycle_count, h.job_failures) == (1, 1)
    h.job_result(JobResult(True, {}, ""))
    assert (p.value("STATUS"), p.value("MESSAGE"), h.job_failures) == (2, "success", 1)


def test_the_handle_reaches_devices_loop_and_channelfinder_through_the_services() -> None:
    class Devices(dict):
        config = Path("/beamline/values.yaml")

    p = Plugin(TASK)
    p.services.devices = Devices(motor="m1", camera="c1")
    p.services.channelfinder_url = "http://cf.invalid"
    assert p.h.get_device("motor") == "m1" and p.h.list_devices() == ["camera", "motor"]
    assert p.h.beamline_config_path == Path("/beamline/values.yaml")
    assert p.h.channelfinder_url == "http://cf.invalid" and p.h.loop is None


def test_module_graph_plugin_knows_nothing_of_runtime_and_runtime_has_no_cycle() -> None:
    graph = grimp.build_graph("iocmng", include_external_packages=True, cache_dir=None)
    plugin = sorted(
        m for m in graph.modules if m == "iocmng.plugin" or m.startswith("iocmng.plugin.")
    )
    for module in plugin:
        for target in ("iocmng.runtime", "softioc"):
            assert graph.find_shortest_chain(module, target) is None, (module, target)
    runtime = sorted(m for m in graph.modules if m.startswith("iocmng.runtime."))
    for a in runtime:
        for b in runtime:
            if a < b and graph.find_shortest_chain(a, b) and graph.find_shortest_chain(b, a):
                raise AssertionError(f"import cycle: {a} <-> {b}")
