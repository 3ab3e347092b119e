"""State carried across a reload, in process: the runtime's save/restore hooks and counters
(on the in-memory record backend), the carry-over file, work in flight at a reload, and the
pending changes a manual apply waits for."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from iocmng.errors import Reloading
from iocmng.runtime.handle import Carried, PluginSpec, State
from iocmng.runtime.runtime import Runtime
from iocmng.service.carryover import CARRY_FILE, read_carried, write_carried
from iocmng.service.reads import Reads, Served
from iocmng.service.registry import Entry, Registry, Source
from iocmng.testing import FakeBackend

pytestmark = pytest.mark.timeout(30)


def plugin(tmp_path: Path, name: str, code: str, config: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "plugin.py").write_text(textwrap.dedent(code))
    (d / "config.yaml").write_text(textwrap.dedent(config))
    return d


KEEPER = """
from iocmng import TaskBase

class Keeper(TaskBase):
    def cleanup(self):
        pass

    async def initialize(self):
        self.total = 0
        self.given = None
    async def execute(self):
        self.total += 1
    def save_state(self):
        return {"total": self.total}
    async def restore_state(self, state, old_commit, new_commit):
        self.given = (state, old_commit, new_commit)
        self.total = state["total"]
"""
CONTINUOUS = "parameters: {mode: continuous, interval: 0.01}\n"


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def started(rt: Runtime, backend: FakeBackend, *specs: PluginSpec) -> None:
    for spec in specs:
        h = rt.prepare(spec)
        assert h.state == State.PENDING, h.last_error
    backend.start()
    await rt.start()


async def test_state_and_counters_go_to_the_next_generation(tmp_path: Path) -> None:
    d = plugin(tmp_path, "keeper", KEEPER, CONTINUOUS)
    b1 = FakeBackend("A")
    rt1 = Runtime(b1)
    await started(rt1, b1, PluginSpec("keeper", d, commit="c0ffee1"))
    h1 = rt1.handles["keeper"]
    await until(lambda: h1.cycle_count >= 5)
    carried = await rt1.stop(save=True)
    total = h1.instance.total  # type: ignore[union-attr]
    assert carried["keeper"].state == {"total": total}
    assert carried["keeper"].counters["cycle_count"] == h1.cycle_count
    assert carried["keeper"].commit == "c0ffee1"

    # through the file, as a reload does
    entry = Entry(
        name="keeper", kind="task", source=Source(type="local"), plugin_dir=str(d), added_at=1.0
    )
    write_carried(tmp_path, carried, {"keeper": entry})
    back = read_carried(tmp_path, {"keeper": entry})
    assert not (tmp_path / CARRY_FILE).exists()  # consumed

    b2 = FakeBackend("A")
    rt2 = Runtime(b2)
    rt2.carried = back
    await started(rt2, b2, PluginSpec("keeper", d, commit="beef"))
    h2 = rt2.handles["keeper"]
    try:
        assert h2.instance.given == ({"total": total}, "c0ffee1", "beef")  # type: ignore[union-attr]
        assert h2.first_started == h1.first_started
        assert carried["keeper"].counters["cycle_count"] in b2.history("keeper", "CYCLE_COUNT")
        count = h2.cycle_count
        await until(lambda: h2.cycle_count > count)
        assert h2.instance.total > total  # type: ignore[union-attr]
        assert "keeper" not in rt2.carried  # handed over once
    finally:
        await rt2.stop()


def test_state_goes_back_only_to_the_same_registration(tmp_path: Path) -> None:
    def entry(added_at: float) -> Entry:
        return Entry(
            name="p", kind="task", source=Source(type="local"), plugin_dir="/x", added_at=added_at
        )

    carried = {"p": Carried({"cycle_count": 7}, {"x": 1}, None), "gone": Carried({}, {"y": 2})}
    write_carried(tmp_path, carried, {"p": entry(1.0)})
    saved = json.loads((tmp_path / CARRY_FILE).read_text())
    assert list(saved["plugins"]) == ["p"]  # a plugin no longer registered is not written
    assert read_carried(tmp_path, {"p": entry(2.0)}) == {}  # removed and added again: fresh
    write_carried(tmp_path, carried, {"p": entry(1.0)})
    (tmp_path / CARRY_FILE).write_text("{not json")
    assert read_carried(tmp_path, {"p": entry(1.0)}) == {}  # unreadable: ignored, removed
    assert not (tmp_path / CARRY_FILE).exists()


async def test_failing_hooks_are_logged_and_the_plugin_starts_fresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = plugin(
        tmp_path,
        "bad",
        """
        from iocmng import TaskBase

        class Bad(TaskBase):
            def cleanup(self):
                pass

            async def initialize(self):
                self.fresh = True
            async def execute(self):
                pass
            def save_state(self):
                return {"not json": object()}
            def restore_state(self, state, old_commit, new_commit):
                self.fresh = False
                raise ValueError("not mine")
        """,
        CONTINUOUS,
    )
    b1 = FakeBackend("B")
    rt1 = Runtime(b1)
    await started(rt1, b1, PluginSpec("bad", d))
    with caplog.at_level(logging.ERROR):
        carried = await rt1.stop(save=True)
    assert carried["bad"].state is None
    assert "save_state failed" in caplog.text

    b2 = FakeBackend("B")
    rt2 = Runtime(b2)
    rt2.carried = {"bad": Carried({}, {"anything": 1}, None)}
    with caplog.at_level(logging.ERROR):
        await started(rt2, b2, PluginSpec("bad", d))
    h = rt2.handles["bad"]
    try:
        assert h.state == State.RUNNING
        assert h.last_error is not None and h.last_error.startswith("restore_state: ValueError")
        assert "restore_state failed" in caplog.text
        assert h.error_count == 0  # a hook's failure is not a failed cycle
    finally:
        await rt2.stop()


SLOW = """
import asyncio
from iocmng import TaskBase

class Slow(TaskBase):
    def cleanup(self):
        pass

    async def initialize(self):
        self.ended = 0
    async def execute(self):
        await asyncio.sleep(float(self.parameters["seconds"]))
        self.ended += 1
"""


async def test_a_reload_waits_for_work_in_flight_then_cuts_it(tmp_path: Path) -> None:
    fast = plugin(tmp_path, "fast", SLOW, "parameters: {mode: triggered, seconds: 0.3}\n")
    slow = plugin(tmp_path, "slow", SLOW, "parameters: {mode: triggered, seconds: 30}\n")
    b = FakeBackend("C")
    rt = Runtime(b)
    await started(rt, b, PluginSpec("fast", fast), PluginSpec("slow", slow))
    try:
        runs = [asyncio.ensure_future(rt.trigger(n)) for n in ("fast", "slow")]
        await until(lambda: len(rt.busy()) == 2)
        assert {w["plugin"]: w["work"] for w in rt.busy()} == {
            "fast": "triggered cycle",
            "slow": "triggered cycle",
        }
        t0 = time.monotonic()
        cut = await rt.finish_work(1.0)
        assert cut == ["slow"] and time.monotonic() - t0 >= 1.0
        fast_out, slow_out = await asyncio.gather(*runs)
        assert fast_out["success"] and rt.handles["fast"].instance.ended == 1  # type: ignore[union-attr]
        assert not slow_out["success"] and "IOCMNG_RELOAD_WAIT" in slow_out["error"]
        with pytest.raises(Reloading):  # new runs wait for the next generation
            await rt.trigger("fast")
    finally:
        await rt.stop()


async def test_a_stop_during_the_wait_cuts_at_once_and_says_so(tmp_path: Path) -> None:
    slow = plugin(tmp_path, "slow", SLOW, "parameters: {mode: triggered, seconds: 30}\n")
    b = FakeBackend("E")
    rt = Runtime(b)
    await started(rt, b, PluginSpec("slow", slow))
    stop_asked = False
    try:
        run = asyncio.ensure_future(rt.trigger("slow"))
        await until(lambda: len(rt.busy()) == 1)
        waiting = asyncio.ensure_future(rt.finish_work(60.0, lambda: stop_asked))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        stop_asked = True  # SIGTERM while the reload waits
        assert await asyncio.wait_for(waiting, 5) == ["slow"]
        out = await run
        assert not out["success"] and "told to stop" in out["error"], out
        assert "IOCMNG_RELOAD_WAIT" not in out["error"]
    finally:
        await rt.stop()


async def test_a_continuous_task_finishes_the_cycle_it_is_in(tmp_path: Path) -> None:
    d = plugin(
        tmp_path,
        "cyc",
        """
        import asyncio
        from iocmng import TaskBase

        class Cyc(TaskBase):
            def cleanup(self):
                pass

            async def initialize(self):
                self.began = self.ended = 0
            async def execute(self):
                self.began += 1
                await asyncio.sleep(0.4)
                self.ended += 1
        """,
        "parameters: {mode: continuous, interval: 0.01}\n",
    )
    b = FakeBackend("D")
    rt = Runtime(b)
    await started(rt, b, PluginSpec("cyc", d))
    h = rt.handles["cyc"]
    await until(lambda: h.in_cycle)
    assert await rt.finish_work(5.0) == []
    assert [w["work"] for w in rt.busy()] == []
    began = h.instance.began  # type: ignore[union-attr]
    await asyncio.sleep(0.1)  # it starts no other cycle
    await rt.stop()
    assert h.instance.began == h.instance.ended == began == 1  # type: ignore[union-attr]


def test_pending_changes_compare_the_registry_with_what_is_served(tmp_path: Path) -> None:
    registry = Registry(tmp_path)

    def entry(name: str, records: list[str], added_at: float = 1.0) -> Entry:
        return Entry(
            name=name,
            kind="task",
            source=Source(type="local"),
            plugin_dir="/x",
            records=records,
            added_at=added_at,
        )

    for e in (entry("kept", ["K"]), entry("gone", ["G"]), entry("changed", ["C"])):
        registry.commit(add=e)
    served = Served(generation=1, entries=dict(registry.plugins))
    reads = Reads(registry, Runtime(FakeBackend("E")), "E", served)
    assert reads.pending_changes() == []
    registry.commit(remove="gone", bump=True)
    registry.commit(add=entry("new", ["N"]))
    registry.commit(add=entry("changed", ["C", "C2"]))
    registry.commit(add=entry("kept", ["K"]).model_copy(update={"parameters": {"a": 1}}))
    assert reads.pending_changes() == [
        {"change": "restart", "plugin": "changed", "kind": "task"},
        {"change": "remove", "plugin": "gone", "kind": "task"},
        {"change": "add", "plugin": "new", "kind": "task"},
    ]
    assert reads.is_pending_add("new") and not reads.is_pending_add("kept")
