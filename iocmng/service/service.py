"""The service: start-up and shut-down order, mutations, the one event loop.

Start-up of a generation::

    settings → data dir (orphans removed) → registry → startup/demo plugins
    → every plugin prepared (records built) → iocInit → plugins started
    → HTTP served on the (possibly inherited) socket

A change that alters the record set is validated, committed to the registry
with the next generation number, answered, and applied by a reload
(:mod:`iocmng.service.reload`) a short ``reload_delay`` later, so changes arriving
together share one reload. Everything else (restart, parameters, jobs,
ENABLE) happens live.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .._version import __version__
from ..config.bootlist import read_boot_list
from ..config.models import deep_merge, load_config, merged_parameters
from ..config.settings import (
    Settings,
    StartupPlugin,
    load_settings,
    read_service_config,
    resolve_prefix,
)
from ..epics.devices import Devices
from ..epics.ioc import IocBridge, base_of, plan_records, plugin_prefix
from ..errors import (
    Abandoned,
    Conflict,
    IocmngError,
    NotFound,
    SettingsError,
    SourceError,
    ValidationFailed,
)
from ..runtime.runtime import PluginHandle, PluginSpec, Runtime, State
from ..runtime.watchdog import LoopWatchdog, exit_after, stalled_plugin_in_trace
from .autosave import AutosaveStore
from .events import EventBus, PluginLogs
from .metrics import make_registry
from .registry import Entry, Registry
from .reload import LISTEN_FD_ENV, exec_next_generation, listen_socket, unblock_stop_signals
from .supervisor import FRESH_START_ENV, SAFE_MODE_ENV
from .validation import Candidate, Options, Pipeline, Request
from .views import legacy_fields, legacy_live

log = logging.getLogger("iocmng.service")

#: Seconds a built listing (GET /tasks, /jobs, /plugins) is shared by later requests.
LISTING_TTL = 0.2
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

def examples_dir() -> Path:
    """plugins_examples/ of a source checkout, or of the installation prefix (container)."""
    for candidate in (Path(__file__).resolve().parents[2] / "plugins_examples", Path(sys.prefix) / "plugins_examples"):
        if candidate.is_dir():
            return candidate
    raise SettingsError("--demo: no plugins_examples directory next to the package or under sys.prefix")


class Service:
    """One generation of the iocmng service."""

    def __init__(self, settings: Settings, *, demo: bool = False) -> None:
        self.settings = settings
        self.demo = demo
        self.data_dir = settings.plugins_dir
        self.service_config = read_service_config(settings.config)
        self.prefix = resolve_prefix(settings, self.service_config)
        self.registry = Registry(self.data_dir)
        self.autosave = AutosaveStore(self.data_dir)
        self.bridge = IocBridge(self.prefix)
        # ophyd devices (SPEC §9): built in the background at boot; empty without the extra.
        self.devices = Devices(settings.beamline_config, enabled=not settings.disable_ophyd)
        self.runtime = Runtime(self.bridge, on_save=self.autosave.update, devices=self.devices)
        self.events = EventBus()
        self.runtime.listeners.append(self.events.publish)
        self.runtime.channelfinder_url = settings.channelfinder_url
        self.runtime.channelfinder_timeout = settings.channelfinder_timeout
        self.runtime.link_protocol = settings.default_link_protocol
        self.logs = PluginLogs()
        self.watchdog: LoopWatchdog | None = None
        self.metrics = make_registry(self)
        self.pipeline = Pipeline(Options(
            data_dir=self.data_dir, prefix=self.prefix, allow_requirements=settings.allow_requirements,
            git_timeout=settings.git_timeout, pip_timeout=settings.pip_timeout, import_timeout=settings.import_timeout,
        ))
        self.generation = 0  # the generation this process serves
        self.started_at = time.time()
        self.lock = asyncio.Lock()  # serializes registry changes
        self._adding: set[str] = set()
        self._no_adds = asyncio.Event()
        self._no_adds.set()
        self._abandon = asyncio.Event()  # set when a reload stops waiting for adds in flight
        self._stop = asyncio.Event()
        self._reload_requested = False
        self._shutdown_requested = False
        self._reload_timer: asyncio.TimerHandle | None = None
        self._reload_deadline = 0.0
        self.boot_errors: list[str] = []
        self._static_cache: dict[str, tuple[Entry, Any, dict[str, Any], dict[str, Any]]] = {}
        self._listings: dict[str | None, tuple[Any, asyncio.Task[bytes], float]] = {}
        self._starting: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # plugins being stopped by the watchdog
        # A reload is not a start: the startup/demo list is applied at a real
        # start only, so a demo plugin the user removed stays removed.
        # Under --supervise the socket is inherited at every start of the child:
        # the supervisor says which starts are real ones (iocmng/service/supervisor.py).
        fresh = os.environ.pop(FRESH_START_ENV, None) == "1"
        self.fresh_start = fresh or LISTEN_FD_ENV not in os.environ
        self.safe_mode = os.environ.pop(SAFE_MODE_ENV, None) == "1"
        # The boot list is read at a real start only (a bad file stops the start, naming the variable).
        self.boot_list, self.boot_errors = read_boot_list(settings.plugins_config if self.fresh_start else None)

    # -- state ---------------------------------------------------------------------------
    @property
    def reload_pending(self) -> bool:
        return self.registry.state.generation > self.generation

    def info(self, name: str) -> dict[str, Any]:
        entry = self.registry.plugins.get(name)
        if entry is None:
            raise NotFound(f"no plugin named {name!r}")
        h = self.runtime.handles.get(name)
        if h is not None:
            out = h.info()
        else:  # committed, waiting for its reload
            out = {"name": name, "kind": entry.kind, "mode": None, "state": "pending", "parameters": entry.parameters,
                   "pvs": entry.records, "cycle_count": 0, "error_count": 0, "overruns": 0, "last_error": None,
                   "enabled": None}
        static, planned_params = self._static_info(entry, h)
        out.update(static)
        out.update(legacy_live(out["state"], planned_params if h is None else out["parameters"]))
        return out

    def _static_info(self, entry: Entry, h: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """What does not change while the plugin runs: source, PV names, iocmng 2.7.9's fields.

        Entries are replaced, never mutated, on change, and a generation keeps
        its handles: cached by identity of both. A pending plugin's is computed
        from its files (config.yaml read once), as it will start.
        """
        cached = self._static_cache.get(entry.name)
        if cached is None or cached[0] is not entry or cached[1] is not h:
            config, mode, params = None, None, dict(entry.parameters)
            records = entry.records
            if h is not None and h.config is not None:
                config, records = h.config, (h.records.names() if h.records is not None else entry.records)
                mode = h.mode if h.kind == "task" else None
            else:
                try:
                    config = load_config(Path(entry.plugin_dir))
                    if entry.kind == "task":
                        params = merged_parameters(config, entry.parameters).as_dict()
                        mode = params["mode"]
                    else:
                        params = deep_merge(config.parameters, entry.parameters)
                except IocmngError:
                    pass  # files changed or gone: the plugin's own state says so when it loads
            base = base_of(records) or plugin_prefix(self.prefix, entry.name, config)
            class_name = entry.class_name or (h.cls.__name__ if h is not None and h.cls is not None else "")
            static = {"source": entry.source.model_dump(exclude_none=True), "pv_prefix": base,
                      **legacy_fields(entry, config, base, records, mode, class_name)}
            cached = self._static_cache[entry.name] = (entry, h, static, params)
        return cached[2], cached[3]

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [self.info(n) for n, e in sorted(self.registry.plugins.items()) if kind is None or e.kind == kind]

    async def list_json(self, kind: str | None = None) -> bytes:
        """The listing as JSON, shared by requests within LISTING_TTL seconds.

        Clients that poll listings back to back would otherwise keep the loop
        busy building the same answer (measured: 4 pollers saturated it with
        200 plugins); one build serves every request arriving meanwhile, and
        a registry change always gives a fresh one.
        """
        loop = asyncio.get_running_loop()
        key = (kind, id(self.registry.state))
        cached = self._listings.get(kind)
        if cached is not None and cached[0] == key and (not cached[1].done() or loop.time() - cached[2] < LISTING_TTL):
            return await asyncio.shield(cached[1])
        building = loop.create_task(self._build_listing(kind), name="iocmng:listing")
        self._listings[kind] = (key, building, loop.time())
        return await asyncio.shield(building)

    async def _build_listing(self, kind: str | None, chunk: int = 25) -> bytes:
        """Build and encode in chunks, yielding to the loop between them, so a
        large listing never holds the plugins' cycles back for long."""
        names = [n for n, e in sorted(self.registry.plugins.items()) if kind is None or e.kind == kind]
        parts: list[str] = []
        count = 0
        for i in range(0, len(names), chunk):
            if i:
                await asyncio.sleep(0)
            infos = [self.info(n) for n in names[i:i + chunk] if n in self.registry.plugins]
            if infos:
                parts.append(json.dumps(infos, default=str)[1:-1])
                count += len(infos)
        # iocmng 2.7.9's shape: clients read .plugins and .count
        return ('{"plugins": [' + ", ".join(parts) + f'], "count": {count}}}').encode()

    def health(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for item in self.list():
            states[item["state"]] = states.get(item["state"], 0) + 1
        kinds = [e.kind for e in self.registry.plugins.values()]
        return {
            "status": "ok",
            "version": __version__,
            "generation": self.generation,
            "pending_generation": self.registry.state.generation if self.reload_pending else None,
            "uptime_s": round(time.time() - self.started_at, 3),
            "prefix": self.prefix,
            "plugins": {"total": len(kinds), **states},
            "tasks_count": kinds.count("task"),
            "jobs_count": kinds.count("job"),
            "boot_errors": self.boot_errors,
        }

    def get_kind(self, name: str, kind: str | None) -> Entry:
        entry = self.registry.plugins.get(name)
        if entry is None or (kind is not None and entry.kind != kind):
            what = kind or "plugin"
            raise NotFound(f"no {what} named {name!r}")
        return entry

    # -- mutations ---------------------------------------------------------------------------
    async def add(self, req: Request) -> dict[str, Any]:
        """Validate, commit, schedule the reload; answer with the pending generation."""
        if req.name in self.registry.plugins or req.name in self._adding:
            raise Conflict(f"a plugin named {req.name!r} already exists; remove it first or choose another name",
                           field="name")
        if self._abandon.is_set():  # the reload is under way: the next generation takes it
            raise Abandoned(f"the service is reloading; {req.name!r} was not added: send the request again")
        self._adding.add(req.name)
        self._no_adds.clear()
        try:
            cand = await self._validate_or_abandon(req)
            try:
                async with self.lock:
                    self._check_record_clash(cand)
                    entry = self._entry(cand)
                    self.registry.commit(add=entry, bump=not self.reload_pending)
            except BaseException:
                await asyncio.to_thread(cand.discard)
                raise
        finally:
            self._adding.discard(req.name)
            if not self._adding:
                self._no_adds.set()
        log.info("added %s %s from %s; generation %d will serve it", cand.kind, req.name,
                 cand.source.url or cand.source.local_path, self.registry.state.generation)
        self.runtime.emit("added", plugin=req.name, generation=self.registry.state.generation)
        self.schedule_reload()
        generation = self.registry.state.generation
        return {
            "ok": True,
            "message": f"{cand.kind} {req.name!r} added; generation {generation} will serve it",
            "plugin": self.info(req.name),
            "reload_pending": True,
            "generation": generation,
            # iocmng 2.7.9's validation report, then this pipeline's steps
            "validation": {"ok": True, "class_name": cand.class_name or None, "plugin_type": cand.kind, "errors": []},
            "steps": [s.to_dict() for s in cand.steps],
        }

    async def _validate_or_abandon(self, req: Request) -> Candidate:
        """The pipeline, unless a reload abandons it (see ``run``): then 503, nothing left
        behind (a half-made clone is an orphan, removed as the next generation starts)."""
        work = asyncio.ensure_future(self.pipeline.run(req))
        abandon = asyncio.ensure_future(self._abandon.wait())
        try:
            await asyncio.wait({work, abandon}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            abandon.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            log.warning("add of %s abandoned: the service reloads for another change", req.name)
            raise Abandoned(f"the service reloaded for another change while {req.name!r} was being validated; "
                            "nothing was added: send the request again")
        return work.result()

    def _check_record_clash(self, cand: Candidate) -> None:
        self._check_records_free(cand.records, cand.request.name)

    def _check_records_free(self, records: list[str], name: str) -> None:
        """Two plugins may not build the same record (config.yaml ``prefix:`` can make them meet)."""
        mine = set(records)
        for other in self.registry.plugins.values():
            if other.name == name:
                continue
            clash = sorted(mine & set(other.records))
            if clash:
                raise Conflict(f"PV {clash[0]} is already served by plugin {other.name!r}; give this plugin "
                               "another prefix: in its config.yaml (or another name)", field="name")

    def _entry(self, cand: Candidate) -> Entry:
        req = cand.request
        task = cand.kind == "task"  # a job waits idle: auto_start means nothing for it (as in iocmng 2.7.9)
        return Entry(
            name=req.name, kind=cand.kind, source=cand.source, parameters=req.parameters,
            plugin_dir=str(cand.plugin_dir), owned_dir=str(cand.owned_dir) if cand.owned_dir else None,
            deps_dir=str(cand.deps_dir) if cand.deps_dir else None, records=cand.records,
            class_name=cand.class_name, autostart_order=req.autostart_order,
            auto_start=req.auto_start or not task, auto_start_on_boot=req.auto_start_on_boot or not task,
        )

    async def remove(self, name: str, kind: str | None = None) -> dict[str, Any]:
        async with self.lock:
            entry = self.get_kind(name, kind)
            # Persist first: if the data directory refuses the write (full,
            # read-only), the plugin is still registered and keeps running.
            self.registry.commit(remove=name, bump=not self.reload_pending)
            h = self.runtime.handles.pop(name, None)
            if h is not None:
                await self.runtime.stop_plugin(h)
        self.autosave.forget(name)
        self.logs.forget(name)
        await asyncio.to_thread(self._delete_files, entry)
        log.info("removed %s; generation %d drops its records", name, self.registry.state.generation)
        self.runtime.emit("removed", plugin=name, generation=self.registry.state.generation)
        self.schedule_reload()
        generation = self.registry.state.generation
        return {"ok": True, "message": f"{entry.kind} {name!r} removed; generation {generation} drops its PVs",
                "removed": name, "reload_pending": True, "generation": generation}

    def _delete_files(self, entry: Entry) -> None:
        """Delete only what we own, and only inside the data directory."""
        root = self.data_dir.resolve()
        for d in (entry.owned_dir, entry.deps_dir):
            if not d:
                continue
            path = Path(d).resolve()
            if path.is_relative_to(root / "repos") or path.is_relative_to(root / "deps"):
                shutil.rmtree(path, ignore_errors=True)
            else:
                log.error("refusing to delete %s: outside the data directory", path)

    async def restart(self, name: str, parameters: dict[str, Any] | None = None,
                      pat: str | None = None) -> dict[str, Any]:
        """Fetch (git sources), re-import the code and restart live; a changed record set goes through a reload.

        A git plugin is cloned again first (iocmng 2.7.9's "re-fetch,
        validate, hot-reload"): new code is validated like an add before
        anything stops, and refused with 422 leaving the running plugin as it
        is. If the repository cannot be reached (e.g. a private one and no
        ``pat``), the registered commit restarts and the answer says so.
        """
        async with self.lock:
            entry = self.get_kind(name, None)
            h = self.runtime.handles.get(name)
            if h is None:
                raise Conflict(f"{name!r} is waiting for the reload to generation {self.registry.state.generation}")
            params = entry.parameters if parameters is None else parameters
            cand, note = (await self._refetch(entry, params, pat)) if entry.source.type == "git" else (None, "")
            try:
                if cand is not None:  # new commit, validated in a child process like an add
                    new_entry = entry.model_copy(update={
                        "source": cand.source, "plugin_dir": str(cand.plugin_dir), "records": cand.records,
                        "owned_dir": str(cand.owned_dir) if cand.owned_dir else None,
                        "deps_dir": str(cand.deps_dir) if cand.deps_dir else None,
                        "class_name": cand.class_name or entry.class_name})
                else:
                    # The code may have changed on disk (local sources): check it in a
                    # child process before this process imports it.
                    await self.pipeline.check_code(name, Path(entry.plugin_dir),
                                                   Path(entry.deps_dir) if entry.deps_dir else None, entry.kind)
                    new_entry = entry
                config = await asyncio.to_thread(load_config, Path(new_entry.plugin_dir))
                p = merged_parameters(config, params)
                mode = p.mode if entry.kind == "task" else "job"
                base = plugin_prefix(self.prefix, name, config)
                records = [f"{base}:{s.short}" for s in plan_records(self.prefix, name, entry.kind, mode, config)]
                self._check_records_free(records, name)
                # auto_start: an operator's restart starts it in later generations too
                # and a restart on purpose lifts the watchdog's hold
                new_entry = new_entry.model_copy(update={"parameters": params, "records": records, "auto_start": True,
                                                         "failed": None})
                live = h.records is not None and sorted(records) == sorted(h.records.names())
                if live:
                    extra = [Path(new_entry.deps_dir)] if new_entry.deps_dir else []
                    await self.runtime.restart(name, params, Path(new_entry.plugin_dir), extra)
                self.registry.commit(add=new_entry, bump=not live and not self.reload_pending)
            except BaseException:
                if cand is not None:
                    await asyncio.to_thread(cand.discard)
                raise
        if cand is not None:  # the old clone is no longer used (a reload's next start would remove it too)
            old = entry.model_copy(update={"owned_dir": entry.owned_dir if entry.owned_dir != new_entry.owned_dir
                                           else None, "deps_dir": entry.deps_dir if entry.deps_dir != new_entry.deps_dir
                                           else None})
            if live:
                await asyncio.to_thread(self._delete_files, old)
        if live:
            return {"ok": True, "message": f"{entry.kind} {name!r} restarted{note}", "plugin": self.info(name),
                    "reload_pending": False, "generation": self.generation}
        self.schedule_reload()
        generation = self.registry.state.generation
        return {"ok": True, "message": f"{entry.kind} {name!r} restarts with generation {generation} (its PVs "
                f"change){note}", "plugin": self.info(name), "reload_pending": True, "generation": generation}

    async def _refetch(self, entry: Entry, params: dict[str, Any], pat: str | None) -> tuple[Candidate | None, str]:
        """Clone the plugin's repository again: a validated candidate if the commit moved, else None; and a note."""
        src = entry.source
        assert src.url is not None
        from .sources import remote_head

        registered = f"at its registered commit {(src.commit or '?')[:12]}"
        # Asking the remote first makes a restart without a new commit cost no clone.
        try:
            head = await remote_head(src.url, src.branch, pat, self.settings.git_timeout)
        except SourceError as exc:  # unreachable: restart what is registered
            log.warning("restart %s: %s; restarting the registered commit", entry.name, exc.detail)
            return None, f" {registered} (could not fetch: {exc.detail})"
        if head is not None and head == src.commit:
            return None, f" (no new commit: {head[:12]})"
        req = Request(name=entry.name, git_url=src.url, branch=src.branch, pat=pat, path=src.path,
                      parameters=params, expect_kind=entry.kind)
        try:
            cand = await self.pipeline.run(req)
        except ValidationFailed as exc:
            steps = exc.extra.get("steps") or []
            if steps and steps[-1]["step"] == "clone":  # unreachable: restart what is registered
                log.warning("restart %s: could not fetch %s (%s); restarting the registered commit",
                            entry.name, src.url, steps[-1]["detail"])
                return None, f" {registered} (could not fetch: {steps[-1]['detail']})"
            raise
        if cand.source.commit == src.commit:
            await asyncio.to_thread(cand.discard)
            return None, f" (no new commit: {(src.commit or '?')[:12]})"
        log.info("restart %s: %s moved from %s to %s", entry.name, src.url, (src.commit or "?")[:12], cand.source.commit)
        return cand, f" at the new commit {(cand.source.commit or '?')[:12]} (was {(src.commit or '?')[:12]})"

    # -- reload ------------------------------------------------------------------------------
    def schedule_reload(self) -> None:
        """Coalesce: one reload ``reload_delay`` after the first pending change."""
        if self._reload_timer is None and not self._reload_requested:
            loop = asyncio.get_running_loop()
            self._reload_deadline = loop.time() + self.settings.reload_delay + RELOAD_DEFER
            self._reload_timer = loop.call_later(self.settings.reload_delay, self._request_reload)

    def _request_reload(self) -> None:
        self._reload_timer = None
        loop = asyncio.get_running_loop()
        if self._adding and loop.time() < self._reload_deadline:
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
        keep = set()
        for e in self.registry.plugins.values():
            keep.update(str(Path(d).resolve()) for d in (e.owned_dir, e.deps_dir) if d)
        for sub in ("repos", "deps"):
            folder = self.data_dir / sub
            if not folder.is_dir():
                continue
            for child in folder.iterdir():
                if str(child.resolve()) not in keep:
                    log.warning("removing orphan %s (left by an interrupted operation)", child)
                    shutil.rmtree(child, ignore_errors=True)
        for tmp in self.data_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    async def _register_startup(self) -> None:
        """Register the IOCMNG_CONFIG ``plugins:``, the boot list (IOCMNG_PLUGINS_CONFIG) and the
        demo plugins; a name the registry already holds keeps its registered state."""
        wanted: list[StartupPlugin] = list(self.service_config.plugins) + list(self.boot_list)
        if self.demo:
            for d in sorted(p for p in examples_dir().iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
                wanted.append(StartupPlugin(name=d.name, local_path=str(d)))
        for sp in wanted:
            if sp.name in self.registry.plugins:
                log.info("startup plugin %s: already registered; the registry's entry is used", sp.name)
                continue
            pat = os.environ.get(sp.pat_env) if sp.pat_env else None
            if sp.pat_env and not pat:
                self._boot_refused(sp.name, f"pat_env: the variable {sp.pat_env} is not set (or empty)")
                continue
            await self._register_startup_plugin(sp, pat)
        # iocmng 2.7.9's persisted plugins (the site swapped the image, the volume stayed)
        from .legacy_registry import mark_imported, read_legacy

        legacy, errors = await asyncio.to_thread(read_legacy, self.data_dir)
        for message in errors:
            self._boot_refused("2.7.9 registry", message)
        for sp, pat in legacy:
            if sp.name in self.registry.plugins or await self._register_startup_plugin(sp, pat, "iocmng 2.7.9's"):
                mark_imported(self.data_dir, sp.name)
                log.info("plugin %s taken over from iocmng 2.7.9's autostart_plugins.yaml", sp.name)

    async def _register_startup_plugin(self, sp: StartupPlugin, pat: str | None, what: str = "startup") -> bool:
        """Validate and register one entry; a refusal goes to boot_errors (the others go on)."""
        from .sources import check_git_url, check_subpath

        try:
            git_url = check_git_url(sp.git_url, pat) if sp.git_url else None
            check_subpath(sp.path)
            req = Request(name=sp.name, git_url=git_url, local_path=sp.local_path, branch=sp.branch, pat=pat,
                          path=sp.path, parameters=sp.parameters, expect_kind=sp.kind, auto_start=sp.auto_start,
                          autostart_order=sp.autostart_order)
            cand = await self.pipeline.run(req)
        except IocmngError as exc:
            self._boot_refused(sp.name, exc.detail, what)
            return False
        self.registry.commit(add=self._entry(cand))
        return True

    def _boot_refused(self, name: str, detail: str, what: str = "startup") -> None:
        self.boot_errors.append(f"{name}: {detail}")
        log.error("%s plugin %s refused: %s", what, name, detail)

    def _on_limit(self, plugin: str, reason: str) -> None:
        """Called by the watchdog's SIGALRM handler (in the loop's thread, between two
        bytecodes of the plugin's code) just before it raises PluginStalled into it:
        flag the plugin and stop it as soon as the loop turns."""
        h = self.runtime.handles.get(plugin)
        if h is None:
            return
        first = h.stalled is None
        h.stalled = reason
        if first:
            asyncio.get_running_loop().call_soon(self._stop_stalled, h)

    def _stop_stalled(self, h: PluginHandle) -> None:
        reason = h.stalled or "stopped by the watchdog"
        log.error("plugin %s %s", h.name, reason)
        self.runtime.emit("stall", plugin=h.name, stopped=True, reason=reason)
        self._keep_failed(h.name, reason)
        task = asyncio.get_running_loop().create_task(self.runtime.hold_failed(h, reason), name=f"iocmng:stop:{h.name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _keep_failed(self, name: str, reason: str) -> None:
        """Persist the watchdog's verdict: the plugin stays failed at every start until restarted or changed."""
        e = self.registry.plugins.get(name)
        if e is None or e.failed == reason:
            return
        try:
            self.registry.commit(add=e.model_copy(update={"failed": reason}))
        except IocmngError as exc:  # a read-only data directory must not stop the stop
            log.warning("%s: stopped by the watchdog, but the registry could not say so: %s", name, exc.detail)

    def _read_stall_trace(self) -> None:
        """The previous process ended on the C-level stall timer: hold the plugin on its loop stack failed."""
        path = self.data_dir / STALL_TRACE
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
        dirs = {n: Path(e.plugin_dir) for n, e in self.registry.plugins.items()}
        plugin, where = stalled_plugin_in_trace(text, dirs)
        limit = exit_after(self.settings.stall_limit)
        log.error("the previous run ended on the watchdog's C-level timer (event loop held for %gs); stack:\n%s",
                  limit, text)
        if plugin is None:
            self.boot_errors.append(f"the previous run ended on the watchdog: the event loop was held for {limit:g}s "
                                    f"outside any plugin's code (stack in {kept})")
            return
        reason = (f"stopped by the watchdog: held the event loop for {limit:g}s (3 x IOCMNG_STALL_LIMIT) in code "
                  f"Python could not interrupt at {where}; the service was restarted without it (stack in {kept})")
        self.boot_errors.append(f"{plugin}: {reason}")
        self._keep_failed(plugin, reason)

    def _on_stall(self, plugin: str | None, seconds: float, where: str) -> None:
        """The watchdog caught the loop stalled: blame the plugin on the stack."""
        h = self.runtime.handles.get(plugin) if plugin else None
        if h is not None:
            h.stalls += 1
            h.last_error = f"held the event loop for {seconds:.2f}s at {where} (use async I/O or a sync method)"
        self.runtime.emit("stall", plugin=plugin, seconds=round(seconds, 3), where=where)

    async def boot(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs.install()
        self.registry.load()
        self.generation = self.registry.state.generation
        self._read_stall_trace()
        await asyncio.to_thread(self._clean_orphans)
        if self.fresh_start:
            await self._register_startup()
        self.runtime.saved = self.autosave.load()
        for name, e in sorted(self.registry.plugins.items()):
            extra = [Path(e.deps_dir)] if e.deps_dir else []
            self.runtime.prepare(PluginSpec(name, Path(e.plugin_dir), e.parameters, extra))
        for name, e in self.registry.plugins.items():  # auto_start: false: records built, not started
            h = self.runtime.handles.get(name)
            held = not e.auto_start or (self.fresh_start and not e.auto_start_on_boot)
            if held and h is not None and h.state == State.PENDING:
                h.set_state(State.STOPPED)
                if e.auto_start:  # held at boot: later reloads keep it stopped too, until a restart starts it
                    try:
                        self.registry.commit(add=e.model_copy(update={"auto_start": False}))
                    except IocmngError as exc:  # a read-only data directory must not stop the start
                        log.warning("%s: held at boot, but the registry could not say so: %s", name, exc.detail)
        for name, e in self.registry.plugins.items():  # stopped by the watchdog: failed until restarted
            h = self.runtime.handles.get(name)
            if e.failed and h is not None and h.state == State.PENDING:
                h.stalled = h.last_error = e.failed
                h.set_state(State.FAILED)
        if self.safe_mode:
            self._hold_plugins()
        self.bridge.start(asyncio.get_running_loop())
        for h in self.runtime.handles.values():
            if h.stalled is not None:
                h._set_status(4 if h.kind == "task" else 3)
                h.set_message(h.stalled)
        self.devices.start()  # after iocInit: a device may use this process's own PVs
        if self.devices.error:
            self.boot_errors.append(f"devices: {self.devices.error}")
        self.watchdog = LoopWatchdog(self.settings.stall_threshold, lambda: list(self.runtime.handles), self._on_stall,
                                     limit=self.settings.stall_limit, on_limit=self._on_limit,
                                     trace_path=self.data_dir / STALL_TRACE)
        self.watchdog.start()
        # Plugins initialize while HTTP already answers (state `starting`): a
        # plugin whose initialize() hangs must not keep the API down.
        self._starting = asyncio.get_running_loop().create_task(self._start_plugins(), name="iocmng:start")

    def _hold_plugins(self) -> None:
        """Safe mode (the supervisor saw the process die at every start): start no plugin."""
        reason = ("not started: the service died repeatedly right after its start (safe mode); remove the "
                  "plugin at fault, then POST /api/v1/plugins/{name}/restart for the others")
        for h in self.runtime.handles.values():
            if h.state == State.PENDING:
                h.last_error = reason.replace("{name}", h.name)
                h.set_state(State.FAILED)
        self.boot_errors.append("safe mode: the service died repeatedly right after its start; no plugin started")
        log.error("safe mode: %d plugin(s) not started", len(self.runtime.handles))

    async def _start_plugins(self) -> None:
        await self.devices.ready()  # bounded: an unreachable IOC does not hold the plugins
        # autostart_order (boot list): ascending groups, each started after the previous one
        orders = sorted({e.autostart_order for e in self.registry.plugins.values() if e.autostart_order is not None})
        await self.runtime.start([[n for n, e in sorted(self.registry.plugins.items()) if e.autostart_order == o]
                                  for o in orders])
        # What exists now lives as long as the generation: keep it out of the
        # collector's way (fewer, shorter GC pauses in the plugins' cycles).
        gc.freeze()
        failed = [h.name for h in self.runtime.handles.values() if h.state == State.FAILED]
        log.info("generation %d running %d plugin(s) under %s%s", self.generation, len(self.runtime.handles),
                 self.prefix, f"; failed: {', '.join(failed)}" if failed else "")

    async def run(self) -> bool:
        """Serve until a stop or a reload; return True for a reload."""
        from ..api.app import create_app
        from ..api.keys import IDLE

        sock = listen_socket(self.settings.bind_host, self.settings.port)
        loop = asyncio.get_running_loop()
        # Handlers first: a SIGTERM that arrives while this generation boots
        # is honoured as soon as it can be (no default kill mid-start).
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        unblock_stop_signals()
        await self.boot()
        app = create_app(self)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        # aiohttp closes the socket it serves on when it stops; give it a
        # duplicate so the original stays listening across the exec.
        site = web.SockSite(runner, sock.dup())
        await site.start()
        log.info("HTTP on %s:%d (generation %d)", *sock.getsockname()[:2], self.generation)
        if self.settings.insecure:
            log.warning("IOCMNG_ALLOW_INSECURE=true: the API on %s:%d has no token; anyone who can reach this "
                        "port can load and run code in this service (set IOCMNG_API_TOKEN)",
                        *sock.getsockname()[:2])
        await self._stop.wait()
        reload = self._reload_requested
        # Stop accepting at once: from here new connections wait in the
        # listening socket's backlog (for the next generation, on a reload)
        # instead of being accepted by a server that is about to go away.
        await site.stop()
        # On a reload, let adds in flight (clone, validation) commit first; a
        # stop does not wait for them (their half-made clone is an orphan,
        # removed at the next start).
        # Adds still in flight (past RELOAD_DEFER): a moment only, as the clients waiting
        # in the backlog wait for this too; then abandoned (each answers 503).
        if self._adding and not self._shutdown_requested:
            log.info("waiting up to %.0f s for %d add(s) in flight before stopping", ADD_GRACE, len(self._adding))
            try:
                await asyncio.wait_for(self._no_adds.wait(), ADD_GRACE)
            except TimeoutError:
                log.warning("abandoning the add(s) still in flight: %s", ", ".join(sorted(self._adding)))
                self._abandon.set()
                try:
                    await asyncio.wait_for(self._no_adds.wait(), ADD_GRACE)
                except TimeoutError:
                    log.error("adds still in flight after abandoning them: %s", ", ".join(self._adding))
        self._abandon.set()  # an add arriving on a kept-alive connection now: the next generation takes it
        log.info("%s: stopping plugins", "reload" if reload else "shutdown")
        self.runtime.emit("reload" if reload else "shutdown", generation=self.generation,
                          next_generation=self.registry.state.generation if reload else None)
        self.events.close()  # end SSE streams so the HTTP shutdown does not wait on them
        # Let requests in progress finish (bounded), then close the rest at
        # once: an idle kept-alive connection would otherwise hold the
        # shutdown for aiohttp's whole timeout (measured: 3 s per reload).
        # A reload waits longer (a job run in progress delivers its result);
        # a stop must fit in a container's stop timeout (10 s by default).
        grace = RELOAD_GRACE if reload and not self._shutdown_requested else STOP_GRACE
        try:
            await asyncio.wait_for(app[IDLE].wait(), grace)
        except TimeoutError:
            log.warning("requests still running after %.0f s; closing them", grace)
        await runner.cleanup()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self._starting is not None:
            await asyncio.wait({self._starting})
        await self.runtime.stop()
        await asyncio.to_thread(self.devices.close)
        if self.watchdog is not None:
            await self.watchdog.stop()
        await self.autosave.close()
        self.logs.uninstall()
        if reload and not self._shutdown_requested:
            exec_next_generation(sock)
        if reload:
            log.info("stop requested during the reload: generation %d will start with the next start",
                     self.registry.state.generation)
        sock.close()
        return reload


def main(argv: list[str] | None = None) -> int:
    from ..logs import setup_logging

    parser = argparse.ArgumentParser(prog="iocmng-server", description="iocmng service (settings: IOCMNG_* variables)")
    parser.add_argument("--demo", action="store_true", help="also load the example plugins (plugins_examples/)")
    parser.add_argument("--supervise", action="store_true",
                        help="run the service as a child and restart it if its process dies (iocmng/service/supervisor.py)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        settings.check_exposure()
    except SettingsError as exc:
        print(f"iocmng-server: invalid setting: {exc.detail}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    if args.supervise:
        from .supervisor import supervise

        try:
            return supervise(settings.bind_host, settings.port, ["--demo"] if args.demo else [])
        except OSError as exc:
            print(f"iocmng-server: cannot start: {exc}", file=sys.stderr)
            return 1

    async def serve() -> None:
        service = Service(settings, demo=args.demo)
        await service.run()

    try:
        asyncio.run(serve())
    except SettingsError as exc:
        print(f"iocmng-server: invalid setting: {exc.detail}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"iocmng-server: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
