"""Runtime scheduling logic in-process, on the in-memory record backend (no EPICS involved).

:class:`iocmng.testing.FakeBackend` records every ``.set()`` the runtime makes, and lets a
test play the operator by calling the record callbacks the real IOC would call.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import textwrap
import threading
import time
from pathlib import Path

import pytest

from iocmng.runtime.handle import check_timeout
from iocmng.runtime.runtime import PluginSpec, Runtime, State
from iocmng.testing import FakeBackend

_ids = itertools.count()


def make_plugin(tmp_path: Path, code: str, config: str = "") -> tuple[Path, str]:
    name = f"p{next(_ids)}"
    d = tmp_path / name
    d.mkdir()
    (d / "plugin.py").write_text(textwrap.dedent(code))
    (d / "config.yaml").write_text(textwrap.dedent(config))
    return d, name


@pytest.fixture
async def runtime():
    rt = Runtime(FakeBackend("TEST"))
    yield rt
    await rt.stop()


async def started(
    rt: Runtime, tmp_path: Path, code: str, config: str = "", params: dict | None = None
):
    d, name = make_plugin(tmp_path, code, config)
    h = rt.prepare(PluginSpec(name, d, params or {}))
    assert h.state == State.PENDING, h.last_error
    await rt.start()
    return h, name


async def poll(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


SYNC_TASK = """
import threading, time
from iocmng import TaskBase

class T(TaskBase):
    def initialize(self):
        self.threads = set()
        self.cleaned = False
    def execute(self):
        self.threads.add(threading.get_ident())
        time.sleep(float(self.parameters.get("work", 0)))
        if self.parameters.get("fail_from") is not None and self.cycle_count >= self.parameters["fail_from"]:
            raise RuntimeError("boom")
        self.set_pv("OUT", self.cycle_count)
    def cleanup(self):
        self.cleaned = True
"""

ASYNC_TASK = """
import asyncio
from iocmng import TaskBase

class T(TaskBase):
    async def initialize(self):
        self.fail = False
        self.cleaned = False
        self.inputs = []
    async def execute(self):
        await asyncio.sleep(float(self.parameters.get("work", 0)))
        if self.get_pv("FAIL"):
            raise ValueError("asked to fail")
        self.set_pv("OUT", self.cycle_count)
    async def on_input(self, name, value):
        self.inputs.append((name, value))
    async def cleanup(self):
        self.cleaned = True
"""

TASK_CONFIG = """
parameters: {{interval: {interval}}}
pvs:
  inputs: {{FAIL: {{type: bool}}, SP: {{type: float, value: 1.5}}}}
  outputs: {{OUT: {{type: int}}}}
"""


# -- continuous tasks ----------------------------------------------------------------------------
async def test_sync_methods_run_on_worker_threads(runtime: Runtime, tmp_path: Path) -> None:
    h, name = await started(runtime, tmp_path, SYNC_TASK, TASK_CONFIG.format(interval=0.02))
    await poll(lambda: h.cycle_count >= 3)
    assert threading.get_ident() not in h.instance.threads
    assert runtime.bridge.value(name, "STATUS") == 1
    assert runtime.bridge.value(name, "OUT") >= 2


async def test_fixed_rate_does_not_drift_with_work(runtime: Runtime, tmp_path: Path) -> None:
    # work of 60% of the interval: a sleep-after-work loop would reach only 1/1.6 of the rate
    interval = 0.1
    h, _ = await started(
        runtime, tmp_path, ASYNC_TASK, TASK_CONFIG.format(interval=interval), {"work": 0.06}
    )
    await poll(lambda: h.cycle_count >= 1)
    c0, t0 = h.cycle_count, time.monotonic()
    await asyncio.sleep(2.0)
    c1, t1 = h.cycle_count, time.monotonic()
    ratio = (c1 - c0) * interval / (t1 - t0)
    assert 0.8 <= ratio <= 1.1, f"achieved {ratio:.2f} of the nominal rate"
    assert h.overruns == 0 or h.overruns < (c1 - c0) / 4


async def test_overrun_starts_next_cycle_at_once_and_is_counted(
    runtime: Runtime, tmp_path: Path
) -> None:
    h, _ = await started(
        runtime, tmp_path, ASYNC_TASK, TASK_CONFIG.format(interval=0.02), {"work": 0.1}
    )
    await poll(lambda: h.cycle_count >= 6)
    assert h.overruns >= h.cycle_count - 2
    # late starts are not "made up" with a burst: the cycles still take ~work each
    assert h.last_cycle_s >= 0.09


async def test_cycle_count_published_at_most_every_half_second(
    runtime: Runtime, tmp_path: Path
) -> None:
    h, name = await started(runtime, tmp_path, ASYNC_TASK, TASK_CONFIG.format(interval=0.01))
    await poll(lambda: h.cycle_count >= 60)
    published = runtime.bridge.history(name, "CYCLE_COUNT")
    assert 1 <= len(published) - 1 < h.cycle_count / 5, published
    assert published == sorted(published)


async def test_pause_and_resume(runtime: Runtime, tmp_path: Path) -> None:
    bridge = runtime.bridge
    h, name = await started(runtime, tmp_path, ASYNC_TASK, TASK_CONFIG.format(interval=0.01))
    await poll(lambda: h.cycle_count >= 3)
    await bridge.write(name, "ENABLE", 0)
    assert bridge.value(name, "STATUS") == 2 and h.state == State.PAUSED
    await asyncio.sleep(0.05)  # a cycle in flight may still complete
    paused_at = h.cycle_count
    assert bridge.value(name, "CYCLE_COUNT") >= paused_at - 1, "the count is published on pause"
    await asyncio.sleep(0.3)
    assert h.cycle_count == paused_at
    await bridge.write(name, "ENABLE", 1)
    assert bridge.value(name, "STATUS") == 1 and h.state == State.RUNNING
    await poll(lambda: h.cycle_count >= paused_at + 3)


async def test_error_then_recovery(runtime: Runtime, tmp_path: Path) -> None:
    bridge = runtime.bridge
    h, name = await started(runtime, tmp_path, ASYNC_TASK, TASK_CONFIG.format(interval=0.01))
    await poll(lambda: h.cycle_count >= 2)
    await bridge.write(name, "FAIL", 1)
    await poll(lambda: bridge.value(name, "STATUS") == 4)
    assert bridge.value(name, "MESSAGE") == "execute: ValueError: asked to fail"
    assert h.last_error == "execute: ValueError: asked to fail"
    await poll(lambda: h.error_count >= 3)  # the loop goes on after an error
    assert h.task is not None and not h.task.done()
    await bridge.write(name, "FAIL", 0)
    await poll(lambda: bridge.value(name, "STATUS") == 1)
    assert bridge.value(name, "MESSAGE") == "recovered"


async def test_cycle_count_not_stale_while_failing(runtime: Runtime, tmp_path: Path) -> None:
    # successes close together, then only failures: the last count must still be published
    h, name = await started(
        runtime, tmp_path, SYNC_TASK, TASK_CONFIG.format(interval=0.05), {"fail_from": 3}
    )
    await poll(lambda: h.error_count >= 3)
    assert h.cycle_count == 3
    assert runtime.bridge.value(name, "CYCLE_COUNT") == 3


async def test_inputs_reach_the_plugin(runtime: Runtime, tmp_path: Path) -> None:
    bridge = runtime.bridge
    h, name = await started(runtime, tmp_path, ASYNC_TASK, TASK_CONFIG.format(interval=1))
    assert h.instance.get_pv("SP") == 1.5
    await bridge.write(name, "SP", 7.25)
    assert h.instance.inputs == [("SP", 7.25)]
    assert h.instance.get_pv("SP") == 7.25


async def test_plugin_may_not_write_managed_pvs(runtime: Runtime, tmp_path: Path) -> None:
    h, _ = await started(runtime, tmp_path, ASYNC_TASK, TASK_CONFIG.format(interval=1))
    for managed in ("STATUS", "CYCLE_COUNT", "ENABLE"):
        with pytest.raises(KeyError, match="managed"):
            h.instance.set_pv(managed, 1)
    with pytest.raises(KeyError, match="not a PV"):
        h.instance.set_pv("NOPE", 1)


async def test_stop_cancels_and_runs_cleanup(runtime: Runtime, tmp_path: Path) -> None:
    bridge = runtime.bridge
    h, name = await started(
        runtime, tmp_path, ASYNC_TASK, TASK_CONFIG.format(interval=0.01), {"work": 30}
    )
    await asyncio.sleep(0.1)  # execute is now inside a 30 s await
    t0 = time.monotonic()
    await runtime.stop_plugin(h, timeout=5)
    assert time.monotonic() - t0 < 5
    assert h.instance.cleaned
    assert h.state == State.STOPPED
    assert bridge.value(name, "STATUS") == 3  # END


async def test_initialize_failure_is_data(runtime: Runtime, tmp_path: Path) -> None:
    code = """
    from iocmng import TaskBase
    class T(TaskBase):
        def initialize(self): raise OSError("no device")
        def execute(self): pass
        def cleanup(self): pass
    """
    d, name = make_plugin(tmp_path, code)
    other_dir, other = make_plugin(tmp_path, ASYNC_TASK, TASK_CONFIG.format(interval=0.01))
    h = runtime.prepare(PluginSpec(name, d))
    ok = runtime.prepare(PluginSpec(other, other_dir))
    await runtime.start()
    assert h.state == State.FAILED
    assert h.last_error == "initialize: OSError: no device"
    assert runtime.bridge.value(name, "STATUS") == 4
    await poll(lambda: ok.cycle_count >= 3)  # the other plugin is untouched


# -- triggered tasks --------------------------------------------------------------------------------
TRIGGERED = """
import asyncio
from iocmng import TaskBase

class T(TaskBase):
    async def initialize(self): self.runs = 0
    async def execute(self):
        await asyncio.sleep(0.2)
        self.runs += 1
    async def cleanup(self): pass
"""


async def test_run_pv_runs_one_cycle_and_resets(runtime: Runtime, tmp_path: Path) -> None:
    bridge = runtime.bridge
    h, name = await started(runtime, tmp_path, TRIGGERED, "parameters: {mode: triggered}\n")
    assert "CYCLE_COUNT" not in bridge.plugins[name] and "RUN" in bridge.plugins[name]
    assert h.task is None
    write = asyncio.ensure_future(bridge.write(name, "RUN", 1))
    await poll(lambda: h.busy)
    assert bridge.value(name, "RUN") == 1
    await write  # like a put-callback: completes when the cycle ended
    assert h.instance.runs == 1
    assert bridge.value(name, "RUN") == 0
    assert h.cycle_count == 1 and not h.busy


async def test_run_ignored_while_disabled(runtime: Runtime, tmp_path: Path) -> None:
    bridge = runtime.bridge
    h, name = await started(runtime, tmp_path, TRIGGERED, "parameters: {mode: triggered}\n")
    await bridge.write(name, "ENABLE", 0)
    await bridge.write(name, "RUN", 1)
    assert h.instance.runs == 0 and bridge.value(name, "RUN") == 0
    assert "disabled" in bridge.value(name, "MESSAGE")


# -- jobs ------------------------------------------------------------------------------------------
JOB = """
import time
from iocmng import JobBase, JobResult

class J(JobBase):
    def initialize(self): pass
    def execute(self):
        time.sleep(float(self.parameters.get("sleep", 0)))
        if self.parameters.get("fail"):
            raise RuntimeError("asked to fail")
        return JobResult(True, {"n": self.parameters.get("n", 0)}, "done")
"""


async def test_job_success_failure_and_timeout(runtime: Runtime, tmp_path: Path) -> None:
    bridge = runtime.bridge
    h, name = await started(runtime, tmp_path, JOB, "parameters: {n: 1}\n")
    assert h.state == State.IDLE and bridge.value(name, "STATUS") == 0
    ok = await runtime.run_job(name)
    assert (ok["success"], ok["data"], ok["message"]) == (True, {"n": 1}, "done")
    assert bridge.value(name, "STATUS") == 2 and bridge.value(name, "MESSAGE") == "done"
    over = await runtime.run_job(name, {"n": 5})
    assert over["data"] == {"n": 5}
    assert h.instance.parameters["n"] == 1, "per-run parameters do not stick"
    bad = await runtime.run_job(name, {"fail": True})
    assert bad["success"] is False and "asked to fail" in bad["message"]
    assert bridge.value(name, "STATUS") == 3
    slow = await runtime.run_job(name, {"sleep": 2}, timeout=0.2)
    assert slow["success"] is False and "timed out" in slow["message"]
    assert slow["duration_s"] < 2
    await poll(
        lambda: h.state == State.IDLE, timeout=10
    )  # the thread finishes, then it is idle again
    assert (await runtime.run_job(name))["success"] is True


@pytest.mark.parametrize("good", [None, 2, 0.5])
def test_link_put_timeout_accepted(good: float | None) -> None:
    assert check_timeout(good) == (None if good is None else float(good))


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (0, ValueError),
        (-1.0, ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
        (True, TypeError),
        ("5", TypeError),
    ],
)
def test_link_put_timeout_refused(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout must be a"):
        check_timeout(bad)  # type: ignore[arg-type]
