"""The runtime's side of one plugin: its state, counters and records.

:class:`PluginHandle` is also the context behind a plugin instance's
``self.set_pv`` & co. (see :mod:`iocmng.plugin.base`). The loops that drive
plugins are in :mod:`iocmng.runtime.runtime`.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..config.models import PluginConfig, coerce_value
from ..epics.backend import Records
from ..epics.plan import JOB_STATES, TASK_STATES, JobStatus, RecordPlan, TaskStatus, truncate
from ..plugin.base import PluginBase
from ..plugin.job import JobBase, JobResult, describe
from ..plugin.task import TaskBase
from .services import RuntimeServices

if TYPE_CHECKING:
    from ..declarative.links import LinkSet
    from ..declarative.logic import Logic

#: CYCLE_COUNT is published at most this often per task: a counter that
#: changes every cycle would double the record updates and the monitor
#: traffic of a fast task for little use. Pause, stop and errors always publish.
COUNTER_PERIOD = 0.5


class PluginStalled(BaseException):
    """Raised into a plugin's code that held the event loop past the watchdog's limit.

    A ``BaseException`` (like ``asyncio.CancelledError``): a plugin's own
    ``except Exception`` does not swallow it; the runtime's boundaries do
    (``PLUGIN_ERRORS``) and turn it into a failed call.
    """

    def __init__(self, plugin: str, reason: str) -> None:
        super().__init__(reason)
        self.plugin = plugin
        self.reason = reason


#: What a plugin may raise without stopping anything but its own cycle:
#: ``sys.exit()`` in plugin code is a plugin error, never a service exit;
#: the watchdog's :class:`PluginStalled` fails the call (the service then
#: stops the plugin).
PLUGIN_ERRORS = (Exception, SystemExit, PluginStalled)
#: Bounded waits for plugin lifecycle calls.
INIT_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
#: The counters a plugin keeps across reloads (see :class:`Carried`).
COUNTERS = (
    "cycle_count",
    "error_count",
    "overruns",
    "last_error",
    "job_failures",
    "stalls",
    "first_started",
)


class WorkCut(Exception):
    """A job run or a triggered cycle cancelled because a reload stopped waiting for it."""


@dataclass
class Carried:
    """What a plugin hands to the next generation at a reload: its counters, the
    dict its ``save_state()`` returned (None: no hook, or it failed), and the
    source commit of the code that saved it."""

    counters: dict[str, Any]
    state: dict[str, Any] | None = None
    commit: str | None = None


#: Upper bounds (seconds) of the cycle/run duration histogram buckets.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Durations:
    """A cumulative-ready duration histogram kept by the runtime (no metrics
    library in the hot path: the metrics endpoint reads these at scrape time)."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1


class State(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    IDLE = "idle"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class PluginSpec:
    """What to load: a plugin directory with its parameter overrides."""

    name: str
    directory: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    extra_paths: list[Path] = field(default_factory=list)
    #: The plugin class itself, when the caller already has it (``iocmng-run -m``,
    #: ``run_ioc(cls)``): used as is instead of importing the directory's module.
    cls: type[PluginBase] | None = None
    #: The source commit of the code (handed to ``restore_state``), if it has one.
    commit: str | None = None


class PluginWiring(Protocol):
    """What the handle and the runtime use of a plugin's wiring (:class:`~iocmng.runtime.wiring.Wiring`)."""

    links: LinkSet
    buffers: dict[str, Any]

    def note_local(self, name: str, value: Any) -> None: ...
    def cycle(self) -> list[tuple[str, Exception]]: ...
    def changed(self, names: set[str]) -> None: ...
    def clear(self) -> None: ...
    def reset(self) -> None: ...
    async def close(self) -> None: ...


def check_timeout(timeout: float | None) -> float | None:
    """``link_put``'s ``timeout``: ``None`` (the plugin's default) or a positive number of seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


class PluginHandle:
    """The runtime's side of one plugin: state, counters, records. Also the
    context behind ``self.set_pv`` & co. of the plugin instance.

    Built with the runtime's :class:`~iocmng.runtime.services.RuntimeServices`
    (loop, events, devices); every change of state, STATUS, MESSAGE or counter
    is one of its methods, so the runtime and the service never touch its
    private members."""

    def __init__(self, spec: PluginSpec, services: RuntimeServices) -> None:
        self.services = services
        self.spec = spec
        self.name = spec.name
        self.kind = "task"
        self.mode = "continuous"
        self.interval = 1.0
        self.params: dict[str, Any] = {}
        #: The record plan (base, mode, parameters, record specs), once loaded.
        self.plan: RecordPlan | None = None
        self.config: PluginConfig | None = None
        self.cls: type[PluginBase] | None = None
        self.deferred = False  # records built, class not imported yet (Runtime.load_deferred)
        self.instance: TaskBase | JobBase | None = None
        self.records: Records | None = None
        self.wiring: PluginWiring | None = None  # links and rules, when the config declares them
        self.logic: Logic | None = None
        self.last_inputs: dict[str, Any] = {}  # operator inputs: the value before a write ("old")
        self.hooks: set[asyncio.Task[Any]] = (
            set()
        )  # running on_input_changed calls of trigger inputs
        self.state = State.PENDING
        self.last_error: str | None = None
        self.error_count = 0
        self.cycle_count = 0
        self.overruns = 0
        self.last_cycle_s = 0.0
        self.lateness: collections.deque[float] = collections.deque(maxlen=512)
        self.durations = Durations()  # cycles (tasks) or runs (jobs)
        self.stalls = 0  # times the loop watchdog caught this plugin hogging the loop
        self.stalled: str | None = None  # set when the watchdog's limit stopped it: why
        self.job_failures = 0
        #: Wall-clock time of the plugin's first start (carried across reloads): its uptime.
        self.first_started: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.in_cycle = False  # a continuous task is inside a cycle
        self.cycle_started = 0.0  # time.monotonic() when that cycle began
        self.finishing = False  # a reload: end the cycle in progress, start no other
        #: The job run or triggered cycle in progress (a reload may cut it), and why it was cut.
        self.work: asyncio.Future[Any] | None = None
        self.cut_reason: str | None = None
        #: What save_state() returned at the last stop for a reload.
        self.saved_state: dict[str, Any] | None = None
        self.enabled = True
        self._resume = asyncio.Event()
        self._status = -1
        self._message = ""
        self._published_at = 0.0
        self._published_count = -1
        self.busy = False  # a job run or a triggered cycle in progress
        self.busy_since = 0.0  # time.monotonic() when it began
        self.echo: dict[str, Any] = {}  # inputs last written by the plugin itself
        self._run_lock = asyncio.Lock()
        self._last_logged: tuple[str, float] = ("", 0.0)

    # -- the PluginContext protocol ------------------------------------------------
    @property
    def pv_prefix(self) -> str:
        return self.records.prefix if self.records else ""

    def set_pv(self, name: str, value: Any) -> None:
        if self.records is None:
            raise RuntimeError(f"plugin {self.name} has no records")
        if name in ("STATUS", "CYCLE_COUNT", "RUN", "ENABLE"):
            raise KeyError(f"{name} is managed by iocmng; use set_status()/set_message()")
        pvs = self.config.pvs if self.config is not None else None
        spec = pvs.inputs.get(name) if pvs is not None else None
        if spec is not None and spec.link is None:
            # An input written by the plugin itself is processed (so monitors
            # see it) and its on_update comes back to the runtime's input
            # callback; remember the value so that echo is not taken for an
            # operator's write (see take_echo).
            self.echo[name] = coerce_value(self.records.type_of(name), value)
        self.records.set(name, value)
        if self.wiring is not None:
            out = pvs.outputs.get(name) if pvs is not None else None
            if out is not None and out.link is not None:  # a wired output writes its external PV
                if self._in_loop():
                    self.wiring.links.put_soon(name, value)
                else:
                    self.services.loop.call_soon_threadsafe(self.wiring.links.put_soon, name, value)  # type: ignore[union-attr]
            else:
                self.wiring.note_local(name, value)

    def _in_loop(self) -> bool:
        """True in the service loop's thread (async plugin code), False in a worker thread."""
        try:
            return asyncio.get_running_loop() is self.services.loop
        except RuntimeError:
            return False

    def link_put(self, name: str, value: Any, timeout: float | None = None) -> Any:
        wiring = self.wiring
        if wiring is None or name not in wiring.links.links:
            wired = ", ".join(wiring.links.links) if wiring is not None else ""
            raise KeyError(f"{name!r} is not a wired PV of {self.name} (wired: {wired or 'none'})")
        timeout = check_timeout(timeout)
        if self._in_loop():
            return wiring.links.put_soon(name, value, timeout)
        # a worker thread (sync plugin code): wait for the write, raise its failure
        loop = self.services.loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(
            wiring.links.put(name, value, timeout), loop
        ).result()

    def link_values(self) -> dict[str, Any]:
        if self.wiring is None:
            return {}
        return {n: lk.value for n, lk in self.wiring.links.links.items()}

    def get_pv(self, name: str) -> Any:
        if self.records is None:
            raise RuntimeError(f"plugin {self.name} has no records")
        return self.records.get(name)

    def set_status(self, status: str) -> None:
        states = JOB_STATES if self.kind == "job" else TASK_STATES
        try:
            index = states.index(str(status).upper())
        except ValueError:
            raise ValueError(f"status must be one of {', '.join(states)}") from None
        self.set_status_index(index)

    def set_message(self, message: str) -> None:
        message = truncate(message)
        if message != self._message and self.records is not None:
            self._message = message
            self.records.set("MESSAGE", message)

    def get_device(self, name: str) -> Any:
        return self.services.devices.get(name)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The service loop (sync plugin code reaches it with run_coroutine_threadsafe)."""
        return self.services.loop

    @property
    def channelfinder_url(self) -> str | None:
        return self.services.channelfinder_url

    @property
    def channelfinder_timeout(self) -> float | None:
        return self.services.channelfinder_timeout

    @property
    def beamline_config_path(self) -> Any:
        """The values.yaml the service's devices come from (the 2.7.9 member ``beamline_config``)."""
        return self.services.beamline_config_path

    def list_devices(self) -> list[str]:
        return sorted(self.services.devices)

    # -- STATUS and state ------------------------------------------------------------------
    def set_status_index(self, index: int) -> None:
        """STATUS by its index in TASK_STATES / JOB_STATES (written only when it changes)."""
        index = int(index)  # a TaskStatus/JobStatus goes to the record as a plain int
        if index != self._status and self.records is not None:
            self._status = index
            self.records.set("STATUS", index)

    @property
    def status_index(self) -> int:
        """The STATUS index last written (-1: none yet)."""
        return self._status

    def set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.services.emit("state", plugin=self.name, state=str(state))

    def show_error(self, message: str) -> None:
        """STATUS to ERROR (a task) or FAILED (a job), MESSAGE to ``message``."""
        self.set_status_index(TaskStatus.ERROR if self.kind == "task" else JobStatus.FAILED)
        self.set_message(message)

    def starting(self) -> None:
        """A (re)start begins: no watchdog verdict, state ``starting``, STATUS INIT (tasks) / IDLE (jobs)."""
        self.stalled = None
        self.set_state(State.STARTING)
        self.set_status_index(TaskStatus.INIT)  # JobStatus.IDLE too

    def set_enabled(self, enabled: bool) -> None:
        """ENABLE was written: pause or resume."""
        self.enabled = enabled
        self.apply_enable()

    def apply_enable(self) -> None:
        """Pause (ENABLE=0: STATUS PAUSED, the count published) or resume (STATUS RUN) a started task."""
        if self.state in (State.FAILED, State.STOPPED, State.PENDING):
            return
        if self.enabled:
            self._resume.set()
            self.set_status_index(TaskStatus.RUN)
            self.set_state(State.RUNNING)
        else:
            self._resume.clear()
            self.set_status_index(TaskStatus.PAUSED)
            self.publish_count(force=True)
            self.set_state(State.PAUSED)

    async def wait_resumed(self) -> None:
        """Until ENABLE is 1 again."""
        await self._resume.wait()

    def ended(self) -> None:
        """A task stopped: the last count published, STATUS END."""
        if self.records is not None and self.kind == "task":
            self.publish_count(force=True)
            self.set_status_index(TaskStatus.END)

    def refuse(self, reason: str) -> None:
        """Not loaded, or not to be started: ``failed`` with ``reason`` (its records, if any, untouched)."""
        self.last_error = reason
        self.set_state(State.FAILED)

    def hold_failed(self, reason: str) -> None:
        """A stopped plugin held ``failed`` with ``reason`` (the watchdog's limit): REST, STATUS, MESSAGE."""
        self.last_error = reason
        if self.records is not None:
            self.show_error(reason)
        self.set_state(State.FAILED)

    def mark_stalled(self, reason: str) -> bool:
        """The watchdog's limit hit this plugin: its loop ends; True the first time."""
        first = self.stalled is None
        self.stalled = reason
        return first

    def note_stall(self, seconds: float, where: str) -> None:
        """The watchdog caught this plugin holding the loop (below the limit)."""
        self.stalls += 1
        self.last_error = (
            f"held the event loop for {seconds:.2f}s at {where} (use async I/O or a sync method)"
        )

    def reload(
        self,
        spec: PluginSpec,
        cls: type[PluginBase],
        config: PluginConfig,
        params: dict[str, Any],
        logic: Logic,
    ) -> None:
        """New code for a stopped plugin (same records): back to ``pending``, no error."""
        self.spec, self.cls, self.config, self.params, self.logic = spec, cls, config, params, logic
        self.interval = float(params.get("interval", 1.0))
        self.last_error = None
        self.state = State.PENDING  # quietly: the start that follows says `starting`

    def take_echo(self, name: str, value: Any) -> bool:
        """True if ``value`` written to input ``name`` is the plugin's own set_pv coming back."""
        if name in self.echo and self.echo[name] == value:
            del self.echo[name]
            return True
        return False

    # -- counters ---------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """The counters carried to the next generation."""
        return {k: getattr(self, k) for k in COUNTERS}

    def carry_counters(self, saved: dict[str, Any]) -> None:
        """Go on from the counters of the previous generation (values of the wrong type are ignored)."""
        for key in COUNTERS:
            value = saved.get(key)
            if key == "last_error":
                if isinstance(value, str):
                    self.last_error = value
            elif key == "first_started":
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.first_started = float(value)
            elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, key, value)

    async def track(self, work: asyncio.Future[Any], *, shield: bool = True) -> Any:
        """Await a job run's or triggered cycle's work; :class:`WorkCut` if a reload cut it.
        ``shield``: the work goes on if the caller is cancelled (a job's timeout)."""
        self.work = work
        try:
            return await (asyncio.shield(work) if shield else work)
        except asyncio.CancelledError:
            if self.cut_reason is not None and work.cancelled():
                raise WorkCut(self.cut_reason) from None
            raise
        finally:
            self.work = None

    def cut(self, reason: str) -> bool:
        """Cancel the work in progress (a reload stops waiting for it); True if there was some."""
        if self.work is None or self.work.done():
            return False
        self.cut_reason = reason
        self.work.cancel()
        return True

    def publish_carried(self) -> None:
        """CYCLE_COUNT goes on from the previous generation's count (without starting the
        publish throttle: the first cycle of this generation still publishes at once)."""
        if self.cycle_count and self.records is not None and "CYCLE_COUNT" in self.records:
            self._published_count = self.cycle_count
            self.records.set("CYCLE_COUNT", self.cycle_count)

    def publish_count(self, force: bool = False) -> None:
        if self.records is None or "CYCLE_COUNT" not in self.records:
            return
        now = time.monotonic()
        if self.cycle_count != self._published_count and (
            force or now - self._published_at >= COUNTER_PERIOD
        ):
            self._published_at = now
            self._published_count = self.cycle_count
            self.records.set("CYCLE_COUNT", self.cycle_count)

    def cycle_ok(self) -> None:
        self.cycle_count += 1
        if self._status == TaskStatus.ERROR:  # ERROR -> RUN: one success clears the error
            self.set_status_index(TaskStatus.RUN)
            self.set_message("recovered")
        self.publish_count()

    def reset_count(self) -> None:
        """RESET: CYCLE_COUNT back to 0."""
        self.cycle_count = 0
        self.publish_count(force=True)
        self.set_message("reset")

    def note_cycle(self, lateness: float, seconds: float, overrun: bool) -> None:
        """A continuous cycle ran ``seconds``, starting ``lateness`` after its slot."""
        self.lateness.append(lateness)
        self.last_cycle_s = seconds
        self.durations.observe(seconds)
        if overrun:
            self.overruns += 1

    def observe(self, seconds: float) -> None:
        """A triggered cycle or a job run took ``seconds``."""
        self.durations.observe(seconds)

    @contextlib.asynccontextmanager
    async def run_exclusive(self) -> AsyncIterator[None]:
        """One triggered cycle at a time; ``busy`` while it runs."""
        async with self._run_lock:
            self.busy, self.busy_since = True, time.monotonic()
            self.cut_reason = None
            try:
                yield
            finally:
                self.busy = False

    def job_started(self) -> None:
        self.busy, self.busy_since = True, time.monotonic()
        self.cut_reason = None
        self.set_state(State.RUNNING)
        self.set_status_index(JobStatus.RUNNING)
        self.set_message("running")

    def job_result(self, result: JobResult) -> None:
        """A run's outcome: count, STATUS SUCCESS/FAILED, MESSAGE."""
        self.cycle_count += 1
        self.set_status_index(JobStatus.SUCCESS if result.success else JobStatus.FAILED)
        self.set_message(result.message or ("success" if result.success else "failed"))
        if not result.success:
            self.job_failures += 1

    def job_done(self) -> None:
        """The run's code returned (a timed-out sync run: later): idle again."""
        self.busy = False
        if self.state == State.RUNNING:
            self.set_state(State.IDLE)

    def fail(self, exc: BaseException, where: str = "execute") -> None:
        """Record a plugin error as data: STATUS, MESSAGE, last_error, counters."""
        self.error_count += 1
        text = f"{where}: {describe(exc)}"
        self.last_error = text
        self.show_error(text)
        # The throttled CYCLE_COUNT may hold back the last successes; with no
        # success to come it would stay stale. A no-op when nothing changed.
        self.publish_count(force=True)
        now = time.monotonic()
        last_text, last_at = self._last_logged
        if text != last_text or now - last_at > 60:  # do not flood the log at 10 Hz
            self._last_logged = (text, now)
            self.services.plugin_logger(self.name).error(
                "%s failed (error #%d)",
                where,
                self.error_count,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        self.services.emit("error", plugin=self.name, error=text)

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary for listings."""
        return {
            "name": self.name,
            "kind": self.kind,
            "mode": self.mode if self.kind == "task" else None,
            "state": str(self.state),
            "parameters": self.params,
            "pvs": self.records.names() if self.records else [],
            "cycle_count": self.cycle_count,
            "error_count": self.error_count,
            "overruns": self.overruns,
            "last_error": self.last_error,
            "enabled": self.enabled if self.kind == "task" else None,
            "first_started_at": self.first_started,
            "uptime_s": (
                round(time.time() - self.first_started, 3)
                if self.first_started is not None
                else None
            ),
        }
