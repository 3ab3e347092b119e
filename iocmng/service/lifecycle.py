"""One generation's life: boot, serve until a stop or a reload, stop.

Start-up of a generation::

    data dir (orphans removed) → registry → startup/demo plugins
    → every plugin prepared (records built) → iocInit → plugins started
    → HTTP served on the (possibly inherited) socket

A change that alters the record set is committed to the registry (see
:mod:`iocmng.service.mutations`) and applied by a reload a short
``reload_delay`` later, so changes arriving together share one reload: this
process stops its plugins and re-executes itself on the same listening
socket (:mod:`iocmng.service.reload`). The HTTP front is handed in
(:class:`Front`), so this layer does not import the REST app.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..config.settings import StartupPlugin
from ..errors import IocmngError
from ..runtime.handle import PluginHandle, PluginSpec, State
from ..runtime.watchdog import LoopWatchdog, exit_after, stalled_plugin_in_trace
from .carryover import discard_carried, read_carried, write_carried
from .legacy_registry import mark_imported, read_legacy
from .mutations import Mutations, entry_of
from .parts import Parts
from .reload import exec_next_generation, listen_socket, unblock_stop_signals
from .sources import check_git_url, check_subpath
from .validation import Request

log = logging.getLogger("iocmng.service")

#: Seconds a reload / a stop waits for requests in progress (e.g. a job run).
RELOAD_GRACE = 60.0
STOP_GRACE = 5.0
#: Seconds a due reload is put off while adds are in flight (HTTP answers meanwhile, and
#: the adds join the reload), then seconds it waits for them once stopping, before
#: abandoning them (each answers 503; nothing registered).
RELOAD_DEFER = 8.0
ADD_GRACE = 2.0
#: The C-level stall timer writes every thread's stack here as it ends the process
#: (read and moved to STALL_TRACE_LAST by the next start).
STALL_TRACE = "watchdog-trace.txt"
STALL_TRACE_LAST = "watchdog-trace.last.txt"


class Front(Protocol):
    """The HTTP side of a generation, as the lifecycle drives it (the REST app in iocmng.server)."""

    def prepare(self) -> None:
        """Import what serving needs; called while ``iocInit`` runs in a worker thread."""

    async def start(self, sock: socket.socket) -> None:
        """Serve on ``sock`` (a duplicate of it: the original stays listening across the exec)."""

    async def stop_accepting(self) -> None:
        """Accept no new connection (they wait in the socket's backlog for the next generation)."""

    async def drain(self, grace: float) -> bool:
        """Wait up to ``grace`` s for the requests in progress; True if none is left."""

    async def close(self) -> None:
        """Close every connection."""


class Lifecycle:
    """Boot, serve and stop one generation: its parts, and the mutations' adds in flight."""

    def __init__(self, parts: Parts, mutations: Mutations) -> None:
        self.svc = parts
        self.mutations = mutations
        self.watchdog: LoopWatchdog | None = None
        self._stop = asyncio.Event()
        self._reload_requested = False
        self._shutdown_requested = False
        self._reload_timer: asyncio.TimerHandle | None = None
        self._reload_deadline = 0.0
        self._starting: asyncio.Task[None] | None = None
        self._waiting = False  # the reload waits for the work in progress
        self._background: set[asyncio.Task[None]] = set()  # plugins being stopped by the watchdog

    # -- reload and stop requests --------------------------------------------------------------
    def changed(self) -> None:
        """A change was committed (or withdrawn): reload soon (IOCMNG_APPLY=auto), or keep
        it pending for :meth:`apply` (manual); nothing left pending: no reload at all."""
        svc = self.svc
        pending = self.mutations.reads.pending_changes()
        if not pending:
            self._withdrawn()
        elif svc.settings.apply == "auto":
            self.schedule_reload()
        else:
            log.info(
                "%d change(s) pending for generation %d: POST /api/v1/apply applies them",
                len(pending),
                svc.registry.state.generation,
            )

    def _withdrawn(self) -> None:
        """Every pending change was withdrawn: the registry goes back to this generation."""
        if self._reload_timer is not None:
            self._reload_timer.cancel()
            self._reload_timer = None
        registry, served = self.svc.registry, self.svc.served
        if registry.state.generation != served.generation and not self._reload_requested:
            try:
                registry.commit(generation=served.generation)
            except IocmngError as exc:  # a read-only data directory: the reload stays due
                log.warning("cannot take back the pending generation: %s", exc.detail)

    def apply(self) -> dict[str, Any]:
        """POST /api/v1/apply: reload now for the pending changes (if any)."""
        svc = self.svc
        pending = self.mutations.reads.pending_changes()
        if not pending:
            return {
                "ok": True,
                "message": "nothing to apply: no change is pending",
                "reload_pending": False,
                "generation": svc.served.generation,
                "pending": [],
            }
        if not self._reload_requested:
            loop = asyncio.get_running_loop()
            if self._reload_timer is not None:
                self._reload_timer.cancel()
            self._reload_deadline = loop.time() + RELOAD_DEFER
            self._reload_timer = loop.call_later(0, self._request_reload)
        generation = svc.registry.state.generation
        log.info("apply: reloading to generation %d for %d change(s)", generation, len(pending))
        return {
            "ok": True,
            "message": f"applying {len(pending)} change(s): generation {generation} serves them "
            "after the reload",
            "reload_pending": True,
            "generation": generation,
            "pending": pending,
        }

    def reload_status(self) -> dict[str, Any]:
        """What /health says of the reload: none, scheduled, or waiting for work in progress."""
        state = (
            "waiting"
            if self._waiting
            else "stopping"
            if self._reload_requested
            else "scheduled"
            if self._reload_timer is not None
            else "none"
        )
        return {
            "state": state,
            "waiting_for": self.svc.runtime.busy() if self._waiting else [],
            "wait_limit_s": self.svc.settings.reload_wait,
        }

    def schedule_reload(self) -> None:
        """Coalesce: one reload ``reload_delay`` after the first pending change."""
        if self._reload_timer is None and not self._reload_requested:
            loop = asyncio.get_running_loop()
            self._reload_deadline = loop.time() + self.svc.settings.reload_delay + RELOAD_DEFER
            self._reload_timer = loop.call_later(
                self.svc.settings.reload_delay, self._request_reload
            )

    def _request_reload(self) -> None:
        self._reload_timer = None
        loop = asyncio.get_running_loop()
        if not self.mutations.reads.pending_changes():  # withdrawn meanwhile
            self._withdrawn()
            return
        if self.mutations.adding and loop.time() < self._reload_deadline:
            # Adds in flight commit into this same reload; HTTP keeps answering meanwhile.
            self._reload_timer = loop.call_later(0.1, self._request_reload)
            return
        self._reload_requested = True
        self._stop.set()

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: stop for good, even if a reload is already under way."""
        self._shutdown_requested = True
        self._stop.set()

    # -- boot ----------------------------------------------------------------------------------
    def _clean_orphans(self) -> None:
        """Remove clones/requirements left by an interrupted operation (not in the registry)."""
        data_dir = self.svc.data_dir
        keep: set[str] = set()
        for e in self.svc.registry.plugins.values():
            keep.update(str(Path(d).resolve()) for d in (e.owned_dir, e.deps_dir) if d)
        for sub in ("repos", "deps"):
            folder = data_dir / sub
            if not folder.is_dir():
                continue
            for child in folder.iterdir():
                if str(child.resolve()) not in keep:
                    log.warning("removing orphan %s (left by an interrupted operation)", child)
                    shutil.rmtree(child, ignore_errors=True)
        for tmp in data_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    async def _register_startup(self) -> None:
        """Register the IOCMNG_CONFIG ``plugins:``, the boot list (IOCMNG_PLUGINS_CONFIG) and the
        demo plugins; a name the registry already holds keeps its registered state."""
        svc = self.svc
        for sp in svc.startup_plugins:
            if sp.name in svc.registry.plugins:
                log.info(
                    "startup plugin %s: already registered; the registry's entry is used", sp.name
                )
                continue
            pat = os.environ.get(sp.pat_env) if sp.pat_env else None
            if sp.pat_env and not pat:
                self._boot_refused(
                    sp.name, f"pat_env: the variable {sp.pat_env} is not set (or empty)"
                )
                continue
            await self._register_startup_plugin(sp, pat)
        # iocmng 2.7.9's persisted plugins (the site swapped the image, the volume stayed)
        legacy, errors = await asyncio.to_thread(read_legacy, svc.data_dir)
        for message in errors:
            self._boot_refused("2.7.9 registry", message)
        for sp, pat in legacy:
            if sp.name in svc.registry.plugins or await self._register_startup_plugin(
                sp, pat, "iocmng 2.7.9's"
            ):
                mark_imported(svc.data_dir, sp.name)
                log.info("plugin %s taken over from iocmng 2.7.9's autostart_plugins.yaml", sp.name)

    async def _register_startup_plugin(
        self, sp: StartupPlugin, pat: str | None, what: str = "startup"
    ) -> bool:
        """Validate and register one entry; a refusal goes to boot_errors (the others go on)."""
        try:
            git_url = check_git_url(sp.git_url, pat) if sp.git_url else None
            check_subpath(sp.path)
            req = Request(
                name=sp.name,
                git_url=git_url,
                local_path=sp.local_path,
                branch=sp.branch,
                pat=pat,
                path=sp.path,
                parameters=sp.parameters,
                expect_kind=sp.kind,
                auto_start=sp.auto_start,
                autostart_order=sp.autostart_order,
            )
            cand = await self.svc.pipeline.run(req)
        except IocmngError as exc:
            self._boot_refused(sp.name, exc.detail, what)
            return False
        self.svc.registry.commit(add=entry_of(cand))
        return True

    def _boot_refused(self, name: str, detail: str, what: str = "startup") -> None:
        self.svc.served.boot_errors.append(f"{name}: {detail}")
        log.error("%s plugin %s refused: %s", what, name, detail)

    # -- the watchdog's verdicts ---------------------------------------------------------------
    def _on_limit(self, plugin: str, reason: str) -> None:
        """Called by the watchdog's SIGALRM handler (in the loop's thread, between two
        bytecodes of the plugin's code) just before it raises PluginStalled into it:
        flag the plugin and stop it as soon as the loop turns."""
        h = self.svc.runtime.handles.get(plugin)
        if h is None:
            return
        if h.mark_stalled(reason):
            asyncio.get_running_loop().call_soon(self._stop_stalled, h)

    def _stop_stalled(self, h: PluginHandle) -> None:
        reason = h.stalled or "stopped by the watchdog"
        log.error("plugin %s %s", h.name, reason)
        self.svc.runtime.emit("stall", plugin=h.name, stopped=True, reason=reason)
        self._keep_failed(h.name, reason)
        task = asyncio.get_running_loop().create_task(
            self.svc.runtime.hold_failed(h, reason), name=f"iocmng:stop:{h.name}"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _keep_failed(self, name: str, reason: str) -> None:
        """Persist the watchdog's verdict: the plugin stays failed at every start until restarted or changed."""
        e = self.svc.registry.plugins.get(name)
        if e is None or e.failed == reason:
            return
        try:
            self.svc.registry.commit(add=e.model_copy(update={"failed": reason}))
        except IocmngError as exc:  # a read-only data directory must not stop the stop
            log.warning(
                "%s: stopped by the watchdog, but the registry could not say so: %s",
                name,
                exc.detail,
            )

    def _read_stall_trace(self) -> None:
        """The previous process ended on the C-level stall timer: hold the plugin on its loop stack failed."""
        path = self.svc.data_dir / STALL_TRACE
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return
        if not text.strip():
            return
        kept = path.with_name(STALL_TRACE_LAST)
        try:
            path.replace(kept)
        except OSError:
            kept = path
        dirs = {n: Path(e.plugin_dir) for n, e in self.svc.registry.plugins.items()}
        plugin, where = stalled_plugin_in_trace(text, dirs)
        limit = exit_after(self.svc.settings.stall_limit)
        log.error(
            "the previous run ended on the watchdog's C-level timer (event loop held for %gs); stack:\n%s",
            limit,
            text,
        )
        if plugin is None:
            self.svc.served.boot_errors.append(
                f"the previous run ended on the watchdog: the event loop was held for {limit:g}s "
                f"outside any plugin's code (stack in {kept})"
            )
            return
        reason = (
            f"stopped by the watchdog: held the event loop for {limit:g}s (3 x IOCMNG_STALL_LIMIT) in code "
            f"Python could not interrupt at {where}; the service was restarted without it (stack in {kept})"
        )
        self.svc.served.boot_errors.append(f"{plugin}: {reason}")
        self._keep_failed(plugin, reason)

    def _on_stall(self, plugin: str | None, seconds: float, where: str) -> None:
        """The watchdog caught the loop stalled: blame the plugin on the stack."""
        h = self.svc.runtime.handles.get(plugin) if plugin else None
        if h is not None:
            h.note_stall(seconds, where)
        self.svc.runtime.emit("stall", plugin=plugin, seconds=round(seconds, 3), where=where)

    async def boot(self, meanwhile: Callable[[], object] | None = None) -> None:
        """Bring the generation up: registry, records, iocInit, devices, watchdog; the
        plugins start in a task. ``meanwhile`` runs on this thread during ``iocInit``."""
        svc = self.svc
        svc.data_dir.mkdir(parents=True, exist_ok=True)
        svc.logs.install()
        svc.registry.load()
        svc.served.generation = svc.registry.state.generation
        self._read_stall_trace()
        await asyncio.to_thread(self._clean_orphans)
        if svc.fresh_start:
            await self._register_startup()
        svc.runtime.saved = svc.autosave.load()
        # counters and saved state: across a reload, or a start too with IOCMNG_KEEP_STATE
        if svc.fresh_start and not svc.settings.keep_state:
            await asyncio.to_thread(discard_carried, svc.data_dir)
        else:
            svc.runtime.carried = await asyncio.to_thread(
                read_carried, svc.data_dir, dict(svc.registry.plugins)
            )
        for name, e in sorted(svc.registry.plugins.items()):
            extra = [Path(e.deps_dir)] if e.deps_dir else []
            svc.runtime.prepare(
                PluginSpec(name, Path(e.plugin_dir), e.parameters, extra, commit=e.source.commit),
                kind=e.kind,  # records from config.yaml; the code is imported during iocInit
            )
        for (
            name,
            e,
        ) in svc.registry.plugins.items():  # auto_start: false: records built, not started
            h = svc.runtime.handles.get(name)
            held = not e.auto_start or (svc.fresh_start and not e.auto_start_on_boot)
            if held and h is not None and h.state == State.PENDING:
                h.set_state(State.STOPPED)
                if (
                    e.auto_start
                ):  # held at boot: later reloads keep it stopped too, until a restart starts it
                    try:
                        svc.registry.commit(add=e.model_copy(update={"auto_start": False}))
                    except IocmngError as exc:  # a read-only data directory must not stop the start
                        log.warning(
                            "%s: held at boot, but the registry could not say so: %s",
                            name,
                            exc.detail,
                        )
        for (
            name,
            e,
        ) in svc.registry.plugins.items():  # stopped by the watchdog: failed until restarted
            h = svc.runtime.handles.get(name)
            if e.failed and h is not None and h.state == State.PENDING:
                h.mark_stalled(e.failed)
                h.refuse(e.failed)
        if svc.safe_mode:
            self._hold_plugins()
        svc.served.entries = dict(svc.registry.plugins)
        # iocInit in a worker thread: it spends most of its time in EPICS's C start-up (0.5 s
        # of it a fixed sleep) without the GIL, so the plugins' imports and ``meanwhile`` (the
        # REST app's) run alongside instead of before it: CA/PVA serve that much sooner after
        # a reload. Nothing here touches a record until iocInit has returned.
        loop = asyncio.get_running_loop()
        started = loop.run_in_executor(None, svc.bridge.start, loop)
        try:
            not_loaded = svc.runtime.load_deferred()
            if meanwhile is not None:
                meanwhile()
        finally:
            await started
        for h in not_loaded:
            h.show_error(h.last_error or "the plugin's code could not be loaded")
        for h in svc.runtime.handles.values():
            if h.stalled is not None:
                h.show_error(h.stalled)
        svc.devices.start()  # after iocInit: a device may use this process's own PVs
        if svc.devices.error:
            svc.served.boot_errors.append(f"devices: {svc.devices.error}")
        self.watchdog = LoopWatchdog(
            svc.settings.stall_threshold,
            lambda: list(svc.runtime.handles),
            self._on_stall,
            limit=svc.settings.stall_limit,
            on_limit=self._on_limit,
            trace_path=svc.data_dir / STALL_TRACE,
        )
        self.watchdog.start()
        # Plugins initialize while HTTP already answers (state `starting`): a
        # plugin whose initialize() hangs must not keep the API down.
        self._starting = asyncio.get_running_loop().create_task(
            self._start_plugins(), name="iocmng:start"
        )

    def _hold_plugins(self) -> None:
        """Safe mode (the supervisor saw the process die at every start): start no plugin."""
        reason = (
            "not started: the service died repeatedly right after its start (safe mode); remove the "
            "plugin at fault, then POST /api/v1/plugins/{name}/restart for the others"
        )
        handles = self.svc.runtime.handles
        for h in handles.values():
            if h.state == State.PENDING:
                h.refuse(reason.replace("{name}", h.name))
        self.svc.served.boot_errors.append(
            "safe mode: the service died repeatedly right after its start; no plugin started"
        )
        log.error("safe mode: %d plugin(s) not started", len(handles))

    async def _start_plugins(self) -> None:
        svc = self.svc
        await svc.devices.ready()  # bounded: an unreachable IOC does not hold the plugins
        # autostart_order (boot list): ascending groups, each started after the previous one
        plugins = svc.registry.plugins
        orders = sorted(
            {e.autostart_order for e in plugins.values() if e.autostart_order is not None}
        )
        await svc.runtime.start(
            [[n for n, e in sorted(plugins.items()) if e.autostart_order == o] for o in orders]
        )
        # What exists now lives as long as the generation: keep it out of the
        # collector's way (fewer, shorter GC pauses in the plugins' cycles).
        gc.freeze()
        failed = [h.name for h in svc.runtime.handles.values() if h.state == State.FAILED]
        log.info(
            "generation %d running %d plugin(s) under %s%s",
            svc.served.generation,
            len(svc.runtime.handles),
            svc.prefix,
            f"; failed: {', '.join(failed)}" if failed else "",
        )

    # -- serve and stop ------------------------------------------------------------------------
    async def run(self, front: Front) -> bool:
        """Serve until a stop or a reload; return True for a reload."""
        svc = self.svc
        sock = listen_socket(svc.settings.bind_host, svc.settings.port)
        loop = asyncio.get_running_loop()
        # Handlers first: a SIGTERM that arrives while this generation boots
        # is honoured as soon as it can be (no default kill mid-start).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        unblock_stop_signals()
        await self.boot(front.prepare)
        await front.start(sock)
        log.info("HTTP on %s:%d (generation %d)", *sock.getsockname()[:2], svc.served.generation)
        if svc.settings.insecure:
            log.warning(
                "IOCMNG_ALLOW_INSECURE=true: the API on %s:%d has no token; anyone who can reach this "
                "port can load and run code in this service (set IOCMNG_API_TOKEN)",
                *sock.getsockname()[:2],
            )
        await self._stop.wait()
        reload = self._reload_requested
        if reload and not self._shutdown_requested:
            await self._finish_work()
        # Stop accepting at once: from here new connections wait in the
        # listening socket's backlog (for the next generation, on a reload)
        # instead of being accepted by a server that is about to go away.
        await front.stop_accepting()
        await self._settle_adds()
        log.info("%s: stopping plugins", "reload" if reload else "shutdown")
        svc.runtime.emit(
            "reload" if reload else "shutdown",
            generation=svc.served.generation,
            next_generation=svc.registry.state.generation if reload else None,
        )
        svc.events.close()  # end SSE streams so the HTTP shutdown does not wait on them
        # Let requests in progress finish (bounded), then close the rest at
        # once: an idle kept-alive connection would otherwise hold the
        # shutdown for aiohttp's whole timeout (measured: 3 s per reload).
        # A reload waits longer (a job run in progress delivers its result);
        # a stop must fit in a container's stop timeout (10 s by default).
        grace = RELOAD_GRACE if reload and not self._shutdown_requested else STOP_GRACE
        if not await front.drain(grace):
            log.warning("requests still running after %.0f s; closing them", grace)
        await front.close()
        # counters and saved state go to the next generation (a reload), or to the next
        # start with IOCMNG_KEEP_STATE
        await self._stop_parts(
            carry=(reload and not self._shutdown_requested) or svc.settings.keep_state
        )
        if reload and not self._shutdown_requested:
            exec_next_generation(sock)
        if reload:
            log.info(
                "stop requested during the reload: generation %d will start with the next start",
                svc.registry.state.generation,
            )
        sock.close()
        return reload

    async def _finish_work(self) -> None:
        """Before stopping: let job runs and triggered cycles in progress end (HTTP still
        answers, /health says what is awaited), up to IOCMNG_RELOAD_WAIT, then cut them."""
        runtime, limit = self.svc.runtime, self.svc.settings.reload_wait
        busy = runtime.busy()
        if busy:
            log.info(
                "reload: waiting up to %g s for %s",
                limit,
                ", ".join(f"{b['plugin']} ({b['work']})" for b in busy),
            )
        self._waiting = True
        try:
            cut = await runtime.finish_work(limit, lambda: self._shutdown_requested)
        finally:
            self._waiting = False
        if cut:
            log.warning(
                "reload: cancelled the work still running after %g s: %s", limit, ", ".join(cut)
            )

    async def _settle_adds(self) -> None:
        """On a reload, let adds in flight (clone, validation) commit first, a moment only (clients
        waiting in the backlog wait for this too), then abandon them (each answers 503). A stop does
        not wait for them (a half-made clone is an orphan, removed at the next start)."""
        mutations = self.mutations
        if mutations.adding and not self._shutdown_requested:
            log.info(
                "waiting up to %.0f s for %d add(s) in flight before stopping",
                ADD_GRACE,
                len(mutations.adding),
            )
            if not await mutations.wait_adds(ADD_GRACE):
                log.warning(
                    "abandoning the add(s) still in flight: %s", ", ".join(sorted(mutations.adding))
                )
                mutations.abandon_adds()
                if not await mutations.wait_adds(ADD_GRACE):
                    log.error(
                        "adds still in flight after abandoning them: %s",
                        ", ".join(mutations.adding),
                    )
        mutations.abandon_adds()  # an add arriving on a kept-alive connection now: the next generation takes it

    async def _stop_parts(self, *, carry: bool = False) -> None:
        """Plugins (``carry``: their state and counters written for the next start), devices,
        watchdog, autosave and the log capture, in that order."""
        svc = self.svc
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self._starting is not None:
            await asyncio.wait({self._starting})
        carried = await svc.runtime.stop(save=carry)
        if carry:
            await asyncio.to_thread(
                write_carried, svc.data_dir, carried, dict(svc.registry.plugins)
            )
        await asyncio.to_thread(svc.devices.close)
        if self.watchdog is not None:
            await self.watchdog.stop()
        await svc.autosave.close()
        svc.logs.uninstall()
