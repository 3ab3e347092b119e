"""The plugin runtime: every plugin's code on the one asyncio loop.

Life of a plugin in a generation::

    prepare()  import class, merge parameters, build records   (before iocInit)
               (with the registry's kind: records from config.yaml alone, and
               load_deferred() imports the class while iocInit runs)
    start()    initialize(), then its owned task `plugin:<name>`
    ...        cycles (continuous), RUN writes (triggered), run_job() (jobs)
    stop()     cancel within a bounded time, then cleanup()

Sync plugin methods run on :class:`~iocmng.runtime.workers.WorkerPool` threads, async
ones on the loop. A plugin's exception is data: it becomes STATUS=ERROR,
MESSAGE, ``last_error`` and ``error_count``; it never reaches the loop.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config.models import PluginConfig, deep_merge, load_config, merged_parameters
from ..declarative.links import link_protocol
from ..declarative.logic import Logic
from ..epics.backend import RecordBackend
from ..epics.plan import RecordPlan, plan
from ..errors import Conflict, IocmngError, NotFound, PluginLoadError, Reloading
from ..plugin.base import PluginBase, attach_context
from ..plugin.job import JobBase, JobResult, describe, normalize_result
from ..plugin.task import TaskBase
from .handle import (
    COUNTER_PERIOD,
    DURATION_BUCKETS,
    INIT_TIMEOUT,
    PLUGIN_ERRORS,
    STOP_TIMEOUT,
    Carried,
    Durations,
    PluginHandle,
    PluginSpec,
    State,
    WorkCut,
)
from .loader import kind_of, load_class, missing_abstract
from .services import DeviceSource, RuntimeServices, plugin_logger
from .wiring import Wiring
from .workers import WorkerPool

__all__ = [
    "COUNTER_PERIOD",
    "Carried",
    "DURATION_BUCKETS",
    "Durations",
    "PluginHandle",
    "PluginSpec",
    "Runtime",
    "State",
    "describe",
    "normalize_result",
]

log = logging.getLogger("iocmng.runtime")


def _overridden(instance: object, method: str, base: type) -> bool:
    return getattr(type(instance), method) is not getattr(base, method)


class Runtime:
    """Owns every plugin of this generation and the worker pool."""

    def __init__(
        self,
        bridge: RecordBackend,
        *,
        saved: dict[str, dict[str, Any]] | None = None,
        on_save: Callable[[str, str, Any], None] | None = None,
        devices: DeviceSource | None = None,
    ) -> None:
        self.bridge = bridge
        self.handles: dict[str, PluginHandle] = {}
        self.saved = saved or {}
        #: What the previous generation's plugins handed over (counters, saved state), by name.
        self.carried: dict[str, Carried] = {}
        #: Set while a reload waits for the work in progress: why new runs are refused.
        self.draining: str | None = None
        self.on_save = on_save
        self.devices = devices or {}
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.pool: WorkerPool | None = None
        #: What every handle and wiring of this runtime uses of it (loop, events, devices, PVA).
        self.services = RuntimeServices(
            emit=self.emit, pva_context=self.pva_context, devices=self.devices
        )
        #: Protocol of links without ca:// or pva:// (a plugin's ``pva`` parameter overrides it).
        self.link_protocol = "ca"
        self._pva: Any = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The service loop, once started."""
        return self.services.loop

    @loop.setter
    def loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.services.loop = loop

    @property
    def channelfinder_url(self) -> str | None:
        """Service-wide ChannelFinder URL (a plugin parameter overrides it)."""
        return self.services.channelfinder_url

    @channelfinder_url.setter
    def channelfinder_url(self, url: str | None) -> None:
        self.services.channelfinder_url = url

    @property
    def channelfinder_timeout(self) -> float | None:
        """Service-wide ChannelFinder timeout (a plugin parameter overrides it)."""
        return self.services.channelfinder_timeout

    @channelfinder_timeout.setter
    def channelfinder_timeout(self, timeout: float | None) -> None:
        self.services.channelfinder_timeout = timeout

    def pva_context(self) -> Any:
        """The process's p4p asyncio client context for PVA links (created on first use, on the loop)."""
        if self._pva is None:
            from p4p.client.asyncio import Context

            self._pva = Context("pva", nt=False)
        return self._pva

    # -- events / logging --------------------------------------------------------------
    def emit(self, kind: str, **data: Any) -> None:
        event = {"type": kind, "time": time.time(), **data}
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")

    plugin_logger = staticmethod(plugin_logger)

    def get(self, name: str) -> PluginHandle:
        try:
            return self.handles[name]
        except KeyError:
            raise NotFound(f"no plugin named {name!r}") from None

    # -- prepare (before iocInit) ----------------------------------------------------------
    def load_code(self, spec: PluginSpec) -> tuple[type[PluginBase], PluginConfig, RecordPlan]:
        """Import the class and plan its records (parameters merged); raises IocmngError on any problem."""
        config = self.read_config(spec)
        cls = self.import_class(spec, config)
        return cls, config, self.plan_records(spec, kind_of(cls), config)

    @staticmethod
    def read_config(spec: PluginSpec) -> PluginConfig:
        config = load_config(spec.directory)
        # Parameters first: a bad config.yaml value is reported before any import error.
        merged_parameters(config, spec.parameters, where=str(spec.directory / "config.yaml"))
        return config

    @staticmethod
    def import_class(spec: PluginSpec, config: PluginConfig) -> type[PluginBase]:
        """Import the plugin's class and check it (complete; a job without rules)."""
        cls = spec.cls or load_class(spec.directory, spec.name, spec.extra_paths)
        if missing_abstract(cls):
            raise PluginLoadError(
                f"{cls.__name__} does not implement {', '.join(missing_abstract(cls))}"
            )
        if kind_of(cls) == "job" and (
            config.rules or config.transforms
        ):  # mode/interval are task scheduling keys
            raise PluginLoadError(
                f"{cls.__name__} is a job: rules and transforms need a task "
                "(mode continuous, triggered or reactive)"
            )
        return cls

    def plan_records(self, spec: PluginSpec, kind: str, config: PluginConfig) -> RecordPlan:
        where = str(spec.directory / "config.yaml")
        return plan(
            self.bridge.prefix,
            spec.name,
            kind,
            config,
            spec.parameters,
            where=where,
            exact=self.bridge.exact,
        )

    def load_deferred(self) -> list[PluginHandle]:
        """Import the classes that :meth:`prepare` left for later (``kind`` given), for the
        plugins still to start or to be started on request. A failure leaves the plugin
        ``failed`` with its records; returns those plugins (their STATUS and MESSAGE are
        for the caller to set once the IOC runs: this may run alongside ``iocInit``)."""
        failed = []
        for h in self.handles.values():
            if not h.deferred:
                continue
            h.deferred = False
            if h.state not in (State.PENDING, State.STOPPED):
                continue  # held failed (safe mode, the watchdog): its code is not even imported
            try:
                assert h.config is not None
                cls = self.import_class(h.spec, h.config)
                if kind_of(cls) != h.kind:
                    raise PluginLoadError(
                        f"{cls.__name__} is now a {kind_of(cls)}; the plugin was added as a "
                        f"{h.kind} (its PVs): remove it and add it again"
                    )
                h.cls = cls
                h.logic = self.compile_logic(cls, h.config, h.params)
            except Exception as exc:  # a plugin's import-time bug is still data
                self._not_loaded(h, exc)
                failed.append(h)
        return failed

    @staticmethod
    def _not_loaded(h: PluginHandle, exc: Exception) -> None:
        """``h`` could not be loaded: ``failed`` with the reason, logged (with the traceback
        of an error that is not one of iocmng's own)."""
        if isinstance(exc, IocmngError):
            h.refuse(exc.detail)
            log.error("plugin %s cannot be loaded: %s", h.name, exc.detail)
        else:
            h.refuse(describe(exc))
            log.exception("plugin %s cannot be loaded", h.name)

    @staticmethod
    def compile_logic(cls: type[PluginBase], config: PluginConfig, params: dict[str, Any]) -> Logic:
        """The plugin's rules and transforms, compiled (raises ConfigError naming the rule)."""
        return Logic(config, params, dict(getattr(cls, "expression_functions", {}) or {}))

    def prepare(self, spec: PluginSpec, kind: str | None = None) -> PluginHandle:
        """Load a plugin and build its records. A failure leaves a `failed` handle.

        With ``kind`` (the registry's: validation imported the code when it was added),
        the records are planned from config.yaml alone and the import waits for
        :meth:`load_deferred`, which the service runs while ``iocInit`` does: a plugin's
        imports (ophyd: 0.55 s) then do not lengthen every reload's outage."""
        if spec.name in self.handles:
            raise Conflict(f"a plugin named {spec.name!r} is already loaded")
        h = PluginHandle(spec, self.services)
        self.handles[spec.name] = h
        carried = self.carried.get(spec.name)
        if carried is not None:
            h.carry_counters(carried.counters)
        if not spec.directory.is_dir():
            h.refuse(
                f"the plugin's files are missing ({spec.directory}); was the data directory "
                "restored without repos/? Remove the plugin and add it again"
            )
            log.error("plugin %s cannot be loaded: %s", spec.name, h.last_error)
            return h
        try:
            if kind is not None and spec.cls is None:
                config = self.read_config(spec)
                p = self.plan_records(spec, kind, config)
                h.deferred = True
            else:
                cls, config, p = self.load_code(spec)
                h.cls = cls
            h.config, h.plan = config, p
            h.kind, h.mode, h.params = p.kind, p.mode, p.parameters_dict()
            h.interval = float(h.params.get("interval", 1.0))
            if h.cls is not None:
                h.logic = self.compile_logic(h.cls, config, h.params)
            h.records = self.bridge.create(
                p,
                on_input=functools.partial(self._on_input, h),
                on_run=functools.partial(self._on_run, h) if h.mode == "triggered" else None,
                restored=self.saved.get(spec.name),
            )
            if h.kind == "task":
                h.enabled = bool(h.records.get("ENABLE"))
        except Exception as exc:  # a plugin's import-time bug is still data
            self._not_loaded(h, exc)
        return h

    # -- calling plugin code ---------------------------------------------------------------
    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Await ``fn(*args)``: on the loop if async, on a worker thread if sync."""
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        assert self.pool is not None, "runtime not started"
        result = await self.pool.submit(fn, *args)
        if inspect.isawaitable(result):
            result = await result
        return result

    # -- start / stop --------------------------------------------------------------------
    async def start(self, groups: list[list[str]] | None = None) -> None:
        """Start every prepared plugin (after the bridge ran iocInit): the plugins of
        ``groups`` first, one group after the other (each waits for the previous
        group's initialize()), then all the others together."""
        self.loop = asyncio.get_running_loop()
        if self.pool is None:
            self.pool = WorkerPool(asyncio.get_running_loop())
        for group in [*(groups or []), list(self.handles)]:
            await asyncio.gather(
                *(
                    self.start_plugin(self.handles[n])
                    for n in group
                    if n in self.handles and self.handles[n].state == State.PENDING
                )
            )

    async def start_plugin(self, h: PluginHandle) -> None:
        assert h.cls is not None and h.records is not None
        if h.first_started is None:
            h.first_started = time.time()
        h.starting()
        h.publish_carried()
        instance = h.cls(name=h.name, parameters=h.params)
        assert isinstance(instance, (TaskBase, JobBase))  # the loader accepts nothing else
        h.instance = instance
        attach_context(instance, h)
        if h.config is not None:
            h.last_inputs = {
                n: h.records.get(n) for n, s in h.config.pvs.inputs.items() if s.link is None
            }
        if "VERSION" in h.records and h.params.get("version") is not None:
            h.records.set("VERSION", h.params["version"])
        config, logic = h.config, h.logic
        if config is not None and logic is not None and config.has_logic:
            wiring = Wiring(
                h,
                config,
                logic,
                link_protocol(h.params, self.link_protocol),
                self.services,
                on_trigger=lambda name, value, old: self.dispatch_input_soon(h, name, value, old),
            )
            h.wiring = wiring
            wiring.start()  # subscriptions: values arrive while initialize() runs
        try:
            async with asyncio.timeout(INIT_TIMEOUT):
                await self.call(instance.initialize)
        except PLUGIN_ERRORS as exc:
            h.fail(exc, "initialize")
            h.set_state(State.FAILED)
            return
        await self._restore(h)
        if h.kind == "job":
            h.set_state(State.IDLE)
            h.set_message("ready")
            return
        if h.mode == "continuous":
            h.task = asyncio.get_running_loop().create_task(
                self._continuous(h), name=f"plugin:{h.name}"
            )
        h.apply_enable()

    async def stop_plugin(
        self, h: PluginHandle, timeout: float = STOP_TIMEOUT, *, save: bool = False
    ) -> None:
        """Cancel the plugin's task within ``timeout`` (at a reload :meth:`finish_work` has
        let the cycle in progress end first), then ``save_state()`` if ``save`` (a reload),
        then cleanup()."""
        if h.task is not None:
            h.task.cancel()
            done, _ = await asyncio.wait({h.task}, timeout=timeout)
            if not done:
                h.fail(TimeoutError(f"did not stop within {timeout}s"), "stop")
            h.task = None
            h.finishing = h.in_cycle = False  # a cancelled cycle did not get to reset it
        for hook in list(h.hooks):
            hook.cancel()
        if h.wiring is not None:
            await h.wiring.close()
            h.wiring = None
        started = h.state not in (State.STOPPED, State.FAILED, State.PENDING)
        h.saved_state = await self._save(h) if save and started else None
        if h.instance is not None and started:
            try:
                async with asyncio.timeout(timeout):
                    await self.call(h.instance.cleanup)
            except PLUGIN_ERRORS as exc:
                h.fail(exc, "cleanup")
        h.ended()
        if h.state != State.FAILED:
            h.set_state(State.STOPPED)

    async def hold_failed(self, h: PluginHandle, reason: str) -> None:
        """Stop a plugin and leave it ``failed`` with ``reason`` (the watchdog's limit)."""
        await self.stop_plugin(h)
        h.hold_failed(reason)

    async def stop(self, *, save: bool = False) -> dict[str, Carried]:
        """Stop every plugin (in parallel) and the worker pool. With ``save`` (a
        reload), each plugin's ``save_state()`` is called: what the next generation
        gets back, with the counters, is returned."""
        await asyncio.gather(*(self.stop_plugin(h, save=save) for h in self.handles.values()))
        if self.pool is not None:
            self.pool.close()
        if self._pva is not None:
            self._pva.close()
            self._pva = None
        if not save:
            return {}
        return {
            name: Carried(h.counters(), h.saved_state, h.spec.commit)
            for name, h in self.handles.items()
        }

    # -- state carried across a reload ---------------------------------------------------
    async def _save(self, h: PluginHandle) -> dict[str, Any] | None:
        """The plugin's ``save_state()``, checked (a dict that JSON can hold); None if it
        has no such hook or the hook failed (logged)."""
        instance = h.instance
        if instance is None or not _overridden(instance, "save_state", PluginBase):
            return None
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                state = await self.call(instance.save_state)
            if state is None:
                return None
            if not isinstance(state, dict):
                raise TypeError(
                    f"save_state() returned a {type(state).__name__}; return a dict (or None)"
                )
            json.dumps(state)  # TypeError/ValueError now rather than at the write
        except PLUGIN_ERRORS as exc:
            self._hook_failed(h, "save_state", exc, "the next generation starts it fresh")
            return None
        return state

    async def _restore(self, h: PluginHandle) -> None:
        """Hand the previous generation's saved state to ``restore_state()``, once."""
        carried = self.carried.pop(h.name, None)
        instance = h.instance
        if carried is None or carried.state is None or instance is None:
            return
        if not _overridden(instance, "restore_state", PluginBase):
            return
        try:
            async with asyncio.timeout(INIT_TIMEOUT):
                await self.call(
                    instance.restore_state, carried.state, carried.commit, h.spec.commit
                )
        except PLUGIN_ERRORS as exc:
            self._hook_failed(h, "restore_state", exc, "it goes on without the saved state")
            return
        self.plugin_logger(h.name).info(
            "state restored (saved by commit %s)", (carried.commit or "-")[:12]
        )

    def _hook_failed(self, h: PluginHandle, hook: str, exc: BaseException, then: str) -> None:
        """A failing save_state/restore_state: logged, last_error, an event; not a failed plugin."""
        text = f"{hook}: {describe(exc)}; {then}"
        h.last_error = text
        self.plugin_logger(h.name).error(
            "%s failed; %s", hook, then, exc_info=(type(exc), exc, exc.__traceback__)
        )
        self.emit("error", plugin=h.name, error=text)

    # -- work in progress at a reload -------------------------------------------------------
    def busy(self) -> list[dict[str, Any]]:
        """The job runs and triggered cycles in progress, and the continuous cycles a
        reload lets end (what a reload waits for)."""
        now = time.monotonic()
        out = []
        for h in self.handles.values():
            if h.busy:
                work, since = ("job run" if h.kind == "job" else "triggered cycle"), h.busy_since
            elif h.finishing and h.in_cycle:
                work, since = "continuous cycle", h.cycle_started
            else:
                continue
            out.append({"plugin": h.name, "work": work, "running_s": round(now - since, 3)})
        return out

    async def finish_work(
        self, limit: float, give_up: Callable[[], bool] = lambda: False
    ) -> list[str]:
        """Refuse new runs, wait up to ``limit`` s for those in progress; then let each
        continuous task end the cycle it is in (it starts no other) within what is left
        of ``limit``; then cancel the runs still going (their answers say why). Return
        the names of the plugins cut."""
        self.draining = "the service is reloading"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit

        async def until(done: Callable[[], bool]) -> None:
            while loop.time() < deadline and not give_up():
                if done():
                    return
                await asyncio.sleep(0.02)  # polled: the work ends in plugin code, unannounced

        await until(lambda: not any(h.busy for h in self.handles.values()))
        for h in self.handles.values():
            if h.task is not None:
                h.finishing = True
        await until(lambda: not any(h.in_cycle for h in self.handles.values()))
        reason = (
            "cancelled: the service was told to stop while its reload waited for this"
            if give_up()
            else f"cancelled: the service reloaded after waiting {limit:g} s for it (IOCMNG_RELOAD_WAIT)"
        )
        cut = [h.name for h in self.handles.values() if h.busy and h.cut(reason)]
        for _ in range(3):  # let the cut runs answer (their handlers resume on the loop)
            await asyncio.sleep(0)
        return cut

    async def restart(
        self,
        name: str,
        parameters: dict[str, Any] | None = None,
        directory: Path | None = None,
        extra_paths: list[Path] | None = None,
        commit: str | None = None,
    ) -> PluginHandle:
        """Re-import the code (from ``directory``, e.g. a new clone at ``commit``) and restart
        the plugin live (same records); its saved state and counters carry over, as at a reload."""
        h = self.get(name)
        old = h.spec
        spec = PluginSpec(
            old.name,
            directory or old.directory,
            old.parameters if parameters is None else parameters,
            old.extra_paths if extra_paths is None else extra_paths,
            commit=commit if directory is not None else old.commit,
        )
        cls, config, p = self.load_code(spec)  # raises before anything is stopped
        params = p.parameters_dict()
        logic = self.compile_logic(cls, config, params)
        if h.records is None:
            raise Conflict(f"plugin {name!r} has no records in this generation; it needs a reload")
        await self.stop_plugin(h, save=True)
        self.carried[name] = Carried(h.counters(), h.saved_state, old.commit)
        h.reload(spec, cls, config, params, logic)
        h.plan = p
        await self.start_plugin(h)
        return h

    # -- tasks -----------------------------------------------------------------------------
    async def _continuous(self, h: PluginHandle) -> None:
        """Fixed-rate loop: cycle starts on a grid of ``interval``; no drift."""
        loop = asyncio.get_running_loop()
        instance = h.instance
        assert instance is not None
        execute: Callable[[], Any] = instance.execute
        is_async = inspect.iscoroutinefunction(execute)
        pool = self.pool
        assert pool is not None
        interval = h.interval
        # Spread the start phases over the period so that a generation's tasks
        # do not all wake in the same instant (jitter), stable per name.
        phase = (zlib.crc32(h.name.encode()) % 1000) / 1000 * interval
        next_t = loop.time() + min(phase, 1.0)
        # The watchdog's limit ends the loop (the service stops the plugin); so does a
        # stop, once the cycle in progress is over (``finishing``).
        while h.stalled is None and not h.finishing:
            delay = next_t - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                if h.finishing:  # a reload: no new cycle
                    break
            if not h.enabled:
                await h.wait_resumed()
                next_t = loop.time()
                continue
            start = loop.time()
            lateness = start - next_t
            h.in_cycle, h.cycle_started = True, time.monotonic()
            try:  # a failure of the rules is a failed cycle, never the end of the loop
                errors: Sequence[tuple[str, BaseException]] = (
                    h.wiring.cycle() if h.wiring is not None else ()
                )
            except PLUGIN_ERRORS as exc:
                errors = [("rules", exc)]
            try:
                if is_async:
                    await execute()
                else:
                    await pool.submit(execute)
            except PLUGIN_ERRORS as exc:
                h.fail(exc)
            else:
                if errors:
                    h.fail(errors[0][1], errors[0][0])
                else:
                    h.cycle_ok()
            h.in_cycle = False
            end = loop.time()
            next_t += interval
            overrun = end > next_t
            h.note_cycle(lateness, end - start, overrun)
            if overrun:  # start the next cycle at once, re-anchor the grid
                next_t = end

    async def trigger(self, name: str) -> dict[str, Any]:
        """Run one triggered cycle (the RUN PV and REST use this)."""
        h = self.get(name)
        if h.kind != "task":
            raise Conflict(f"{name!r} is a job; run it with POST /api/v1/jobs/{name}/run")
        if h.mode != "triggered":
            raise Conflict(f"{name!r} is a {h.mode} task; only triggered tasks run on demand")
        # The REST twin of RUN=1: RUN reads 1 while the cycle runs, as for a put.
        if h.records is not None:
            h.records.set_quiet("RUN", 1)
        try:
            return await self._run_cycle(h)
        finally:
            if h.records is not None:
                h.records.set_quiet("RUN", 0)

    async def _run_cycle(self, h: PluginHandle) -> dict[str, Any]:
        if h.state in (State.FAILED, State.STOPPED, State.PENDING, State.STARTING):
            raise Conflict(f"plugin {h.name!r} is {h.state}; it cannot run now")
        if not h.enabled:
            h.set_message("disabled: RUN ignored")
            raise Conflict(f"plugin {h.name!r} is disabled (ENABLE=0)")
        if self.draining:
            h.set_message("reloading: RUN ignored")
            raise Reloading(f"{self.draining}; run {h.name!r} again once it is back")
        instance = h.instance
        assert instance is not None
        assert isinstance(instance, TaskBase)
        fn = (
            instance.triggered if _overridden(instance, "triggered", TaskBase) else instance.execute
        )
        async with h.run_exclusive():
            t0 = time.monotonic()
            ok, error = True, None
            try:
                errors = h.wiring.cycle() if h.wiring is not None else ()
                if errors:
                    raise errors[0][1]
                await h.track(asyncio.ensure_future(self.call(fn)), shield=False)
            except PLUGIN_ERRORS as exc:
                ok, error = False, describe(exc)
                h.fail(exc, "triggered")
            else:
                h.cycle_ok()
                h.publish_count(force=True)
            duration = time.monotonic() - t0
            h.observe(duration)
            return {
                "success": ok,
                "error": error,
                "duration_s": duration,
                "cycle_count": h.cycle_count,
            }

    async def _on_run(self, h: PluginHandle) -> None:
        # Called by the RUN record's on_update (blocking): the CA put-callback
        # completes when this returns. RUN reads 1 until we reset it here.
        try:
            await self._run_cycle(h)
        except IocmngError:
            pass
        finally:
            if h.records is not None:
                h.records.set_quiet("RUN", 0)

    async def _on_input(self, h: PluginHandle, short: str, value: Any) -> None:
        """An operator wrote an input PV (or ENABLE, CLEAR, RESET)."""
        if short in ("CLEAR", "RESET"):  # pulses: nothing to autosave
            if value and h.records is not None:
                self._pulse(h, short)
            return
        if self.on_save is not None:
            self.on_save(h.name, short, value)
        if h.take_echo(short, value):  # the plugin's own set_pv, not an operator's write
            h.last_inputs[short] = value
            return
        if short == "ENABLE":
            h.set_enabled(bool(value))
            self.emit("enable", plugin=h.name, enabled=h.enabled)
            return
        old = h.last_inputs.get(short, h.config.pvs.inputs[short].value if h.config else None)
        h.last_inputs[short] = value
        if h.wiring is not None:
            h.wiring.note_local(short, value)
            h.wiring.changed({short})
        await self.dispatch_input(h, short, value, old)

    def _pulse(self, h: PluginHandle, short: str) -> None:
        """CLEAR: release latches; RESET: CLEAR, forget fired rules, CYCLE_COUNT to 0. Then back to 0."""
        if h.wiring is not None:
            if short == "CLEAR":
                h.wiring.clear()
            else:
                h.wiring.reset()
        if short == "RESET":
            h.reset_count()
        self.emit(short.lower(), plugin=h.name)
        assert h.records is not None
        h.records.set_quiet(short, 0)

    async def dispatch_input(self, h: PluginHandle, name: str, value: Any, old: Any) -> None:
        """The one input hook: ``on_input_changed(name, value, old)`` if the plugin
        overrides it, else ``on_input(name, value)``."""
        instance = h.instance
        if instance is None:
            return
        if _overridden(instance, "on_input_changed", PluginBase):
            fn: Callable[..., Any] = instance.on_input_changed
            args: tuple[Any, ...] = (name, value, old)
            where = "on_input_changed"
        elif _overridden(instance, "on_input", PluginBase):
            fn, args, where = instance.on_input, (name, value), "on_input"
        else:
            return
        try:
            await self.call(fn, *args)
        except PLUGIN_ERRORS as exc:
            h.fail(exc, where)

    def dispatch_input_soon(self, h: PluginHandle, name: str, value: Any, old: Any) -> None:
        """A wired input with ``trigger: true`` changed: run the hook in a task of the plugin's."""
        instance = h.instance
        if instance is None or h.state not in (State.RUNNING, State.STARTING):
            return
        if not (
            _overridden(instance, "on_input_changed", PluginBase)
            or _overridden(instance, "on_input", PluginBase)
        ):
            return  # no hook to call (a declarative task): no task per change
        task = asyncio.get_running_loop().create_task(
            self.dispatch_input(h, name, value, old), name=f"plugin:{h.name}:input"
        )
        h.hooks.add(task)
        task.add_done_callback(h.hooks.discard)

    # -- jobs --------------------------------------------------------------------------------
    async def run_job(
        self, name: str, parameters: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Run a job once; a raising or timed-out execute is a failed result, not an error."""
        h = self.get(name)
        if h.kind != "job":
            raise Conflict(f"{name!r} is a task, not a job")
        if h.state != State.IDLE or h.busy:
            raise Conflict(
                f"job {name!r} is {'running' if h.busy else h.state}; try again when it is idle"
            )
        if self.draining:
            raise Reloading(f"{self.draining}; run {name!r} again once it is back")
        instance = h.instance
        assert instance is not None and self.pool is not None
        h.job_started()
        base_params = instance.parameters
        instance.parameters = deep_merge(base_params, parameters or {})
        started = time.time()
        t0 = time.monotonic()
        execute = instance.execute
        if inspect.iscoroutinefunction(execute):
            work: asyncio.Future[Any] = asyncio.get_running_loop().create_task(
                _guarded(execute()), name=f"plugin:{name}:run"
            )
        else:
            work = self.pool.submit(execute)

        def finished(_: Any) -> None:
            instance.parameters = base_params
            h.job_done()

        try:
            async with asyncio.timeout(timeout):
                result = normalize_result(await h.track(work))
        except WorkCut as exc:
            result = JobResult(False, {}, str(exc))
            h.fail(exc, "execute")
        except TimeoutError:
            if inspect.iscoroutinefunction(execute):
                work.cancel()
            result = JobResult(False, {}, f"timed out after {timeout}s")
            h.fail(TimeoutError(result.message), "execute")
        except PLUGIN_ERRORS as exc:
            result = JobResult(False, {}, describe(exc))
            h.fail(exc, "execute")
        h.job_result(result)
        if work.done():
            finished(None)
        else:  # a sync execute that timed out keeps its thread: busy until it ends
            work.add_done_callback(finished)
            work.add_done_callback(lambda f: f.cancelled() or f.exception())
        duration = time.monotonic() - t0
        h.observe(duration)
        out = {**result.to_dict(), "job": name, "started_at": started, "duration_s": duration}
        self.emit("job", plugin=name, success=result.success, duration_s=duration)
        return out


async def _guarded(coro: Any) -> Any:
    """Await plugin code in a task of its own: SystemExit must not reach the loop."""
    try:
        return await coro
    except SystemExit as exc:
        raise RuntimeError(f"plugin called sys.exit({exc.code!r})") from None
