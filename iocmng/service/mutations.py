"""Plugin mutations: add, remove, restart.

Each is validated first (a candidate from :mod:`iocmng.service.validation`),
then committed to the registry under one lock, then answered. A change of
the record set bumps the registry's generation and asks for a reload (the
``changed`` callback); a restart that keeps the record set happens live.
Adds in flight are tracked so a reload can let them commit first, or
abandon them (each answers 503 and leaves nothing behind).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config.models import load_config
from ..config.settings import Settings
from ..epics.plan import plan
from ..errors import Abandoned, Conflict, SourceError, ValidationFailed
from ..runtime.runtime import Runtime
from .autosave import AutosaveStore
from .events import PluginLogs
from .reads import Reads
from .registry import Entry, Registry
from .sources import remote_head
from .validation import Candidate, Pipeline, Request

log = logging.getLogger("iocmng.service")


class Mutations:
    """Adds, removes and restarts of plugins, each committed to the registry."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        runtime: Runtime,
        pipeline: Pipeline,
        reads: Reads,
        autosave: AutosaveStore,
        logs: PluginLogs,
        changed: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.data_dir = settings.plugins_dir
        self.registry = registry
        self.runtime = runtime
        self.pipeline = pipeline
        self.reads = reads
        self.autosave = autosave
        self.logs = logs
        self.changed = changed  # a committed change alters the record set: schedule the reload
        self.lock = asyncio.Lock()  # serializes registry changes
        self.adding: set[str] = set()  # names of adds in flight
        self._no_adds = asyncio.Event()
        self._no_adds.set()
        self._abandon = asyncio.Event()  # set when a reload stops waiting for adds in flight

    # -- adds in flight, as a reload sees them -------------------------------------------------
    async def wait_adds(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the adds in flight to end; True if none is left."""
        try:
            await asyncio.wait_for(self._no_adds.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def abandon_adds(self) -> None:
        """From now on an add in flight or arriving answers 503 (the next generation takes it)."""
        self._abandon.set()

    # -- add ----------------------------------------------------------------------------------
    async def add(self, req: Request) -> dict[str, Any]:
        """Validate, commit, schedule the reload; answer with the pending generation."""
        if req.name in self.registry.plugins or req.name in self.adding:
            raise Conflict(
                f"a plugin named {req.name!r} already exists; remove it first or choose another name",
                field="name",
            )
        if self._abandon.is_set():  # the reload is under way: the next generation takes it
            raise Abandoned(
                f"the service is reloading; {req.name!r} was not added: send the request again"
            )
        self.adding.add(req.name)
        self._no_adds.clear()
        try:
            cand = await self._validate_or_abandon(req)
            try:
                async with self.lock:
                    self.check_records_free(cand.records, cand.request.name)
                    entry = entry_of(cand)
                    self.registry.commit(add=entry, bump=not self.reads.reload_pending)
            except BaseException:
                await asyncio.to_thread(cand.discard)
                raise
        finally:
            self.adding.discard(req.name)
            if not self.adding:
                self._no_adds.set()
        log.info(
            "added %s %s from %s; generation %d will serve it",
            cand.kind,
            req.name,
            cand.source.url or cand.source.local_path,
            self.registry.state.generation,
        )
        self.runtime.emit("added", plugin=req.name, generation=self.registry.state.generation)
        self.changed()
        generation = self.registry.state.generation
        return {
            "ok": True,
            "message": f"{cand.kind} {req.name!r} added; generation {generation} will serve it"
            + self._when(),
            "plugin": self.reads.info(req.name),
            "reload_pending": True,
            "apply": self.settings.apply,
            "generation": generation,
            # iocmng 2.7.9's validation report, then this pipeline's steps
            "validation": {
                "ok": True,
                "class_name": cand.class_name or None,
                "plugin_type": cand.kind,
                "errors": [],
            },
            "steps": [s.to_dict() for s in cand.steps],
        }

    async def _validate_or_abandon(self, req: Request) -> Candidate:
        """The pipeline, unless a reload abandons it: then 503, nothing left behind
        (a half-made clone is an orphan, removed as the next generation starts)."""
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
            raise Abandoned(
                f"the service reloaded for another change while {req.name!r} was being validated; "
                "nothing was added: send the request again"
            )
        return work.result()

    def check_records_free(self, records: list[str], name: str) -> None:
        """Two plugins may not build the same record (config.yaml ``prefix:`` can make them meet)."""
        mine = set(records)
        for other in self.registry.plugins.values():
            if other.name == name:
                continue
            clash = sorted(mine & set(other.records))
            if clash:
                raise Conflict(
                    f"PV {clash[0]} is already served by plugin {other.name!r}; give this plugin "
                    "another prefix: in its config.yaml (or another name)",
                    field="name",
                )

    def _when(self) -> str:
        """When a committed change is applied, for the answer's message."""
        if self.settings.apply == "manual":
            return " after POST /api/v1/apply (IOCMNG_APPLY=manual)"
        return ""

    # -- remove -------------------------------------------------------------------------------
    async def remove(self, name: str, kind: str | None = None) -> dict[str, Any]:
        manual = self.settings.apply == "manual"
        async with self.lock:
            entry = self.reads.get_kind(name, kind)
            if self.reads.is_pending_add(name):
                return await self._withdraw(entry)
            # Persist first: if the data directory refuses the write (full,
            # read-only), the plugin is still registered and keeps running.
            self.registry.commit(remove=name, bump=not self.reads.reload_pending)
            # IOCMNG_APPLY=manual: it runs until the reload applies the removal (its
            # files are removed as orphans at that start)
            h = None if manual else self.runtime.handles.pop(name, None)
            if h is not None:
                await self.runtime.stop_plugin(h)
        self.autosave.forget(name)
        self.logs.forget(name)
        if not manual:
            await asyncio.to_thread(delete_files, self.data_dir, entry)
        log.info(
            "removed %s; generation %d drops its records", name, self.registry.state.generation
        )
        self.runtime.emit("removed", plugin=name, generation=self.registry.state.generation)
        self.changed()
        generation = self.registry.state.generation
        return {
            "ok": True,
            "message": f"{entry.kind} {name!r} removed; generation {generation} drops its PVs"
            + self._when(),
            "removed": name,
            "reload_pending": True,
            "apply": self.settings.apply,
            "generation": generation,
        }

    async def _withdraw(self, entry: Entry) -> dict[str, Any]:
        """DELETE of a plugin whose add waits for the reload: taken back, no reload for it."""
        name = entry.name
        self.registry.commit(remove=name)
        self.autosave.forget(name)
        self.logs.forget(name)
        await asyncio.to_thread(delete_files, self.data_dir, entry)
        self.changed()  # nothing else pending: the reload is called off
        log.info("withdrew the pending add of %s", name)
        self.runtime.emit("removed", plugin=name, generation=self.registry.state.generation)
        pending = self.reads.reload_pending
        return {
            "ok": True,
            "message": f"the pending add of {entry.kind} {name!r} was withdrawn"
            + ("" if pending else "; nothing to reload"),
            "removed": name,
            "reload_pending": pending,
            "generation": self.registry.state.generation,
        }

    # -- restart ------------------------------------------------------------------------------
    async def restart(
        self, name: str, parameters: dict[str, Any] | None = None, pat: str | None = None
    ) -> dict[str, Any]:
        """Fetch (git sources), re-import the code and restart live; a changed record set goes through a reload.

        A git plugin is cloned again first (iocmng 2.7.9's "re-fetch,
        validate, hot-reload"): new code is validated like an add before
        anything stops, and refused with 422 leaving the running plugin as it
        is. If the repository cannot be reached (e.g. a private one and no
        ``pat``), the registered commit restarts and the answer says so.
        """
        async with self.lock:
            entry = self.reads.get_kind(name, None)
            h = self.runtime.handles.get(name)
            if h is None:
                raise Conflict(
                    f"{name!r} is waiting for the reload to generation {self.registry.state.generation}"
                )
            params = entry.parameters if parameters is None else parameters
            cand, note = (
                (await self._refetch(entry, params, pat))
                if entry.source.type == "git"
                else (None, "")
            )
            try:
                if cand is not None:  # new commit, validated in a child process like an add
                    new_entry = entry.model_copy(
                        update={
                            "source": cand.source,
                            "plugin_dir": str(cand.plugin_dir),
                            "records": cand.records,
                            "owned_dir": str(cand.owned_dir) if cand.owned_dir else None,
                            "deps_dir": str(cand.deps_dir) if cand.deps_dir else None,
                            "class_name": cand.class_name or entry.class_name,
                        }
                    )
                else:
                    # The code may have changed on disk (local sources): check it in a
                    # child process before this process imports it.
                    await self.pipeline.check_code(
                        name,
                        Path(entry.plugin_dir),
                        Path(entry.deps_dir) if entry.deps_dir else None,
                        entry.kind,
                    )
                    new_entry = entry
                config = await asyncio.to_thread(load_config, Path(new_entry.plugin_dir))
                records = list(plan(self.reads.prefix, name, entry.kind, config, params).names)
                self.check_records_free(records, name)
                # auto_start: an operator's restart starts it in later generations too
                # and a restart on purpose lifts the watchdog's hold
                new_entry = new_entry.model_copy(
                    update={
                        "parameters": params,
                        "records": records,
                        "auto_start": True,
                        "failed": None,
                    }
                )
                live = h.records is not None and sorted(records) == sorted(h.records.names())
                if live:
                    extra = [Path(new_entry.deps_dir)] if new_entry.deps_dir else []
                    await self.runtime.restart(
                        name,
                        params,
                        Path(new_entry.plugin_dir),
                        extra,
                        commit=new_entry.source.commit,
                    )
                self.registry.commit(add=new_entry, bump=not live and not self.reads.reload_pending)
            except BaseException:
                if cand is not None:
                    await asyncio.to_thread(cand.discard)
                raise
        if (
            cand is not None
        ):  # the old clone is no longer used (a reload's next start would remove it too)
            old = entry.model_copy(
                update={
                    "owned_dir": entry.owned_dir
                    if entry.owned_dir != new_entry.owned_dir
                    else None,
                    "deps_dir": entry.deps_dir if entry.deps_dir != new_entry.deps_dir else None,
                }
            )
            if live:
                await asyncio.to_thread(delete_files, self.data_dir, old)
        if live:
            return {
                "ok": True,
                "message": f"{entry.kind} {name!r} restarted{note}",
                "plugin": self.reads.info(name),
                "reload_pending": False,
                "generation": self.reads.served.generation,
            }
        self.reads.served.restarts.add(name)
        self.changed()
        generation = self.registry.state.generation
        return {
            "ok": True,
            "message": f"{entry.kind} {name!r} restarts with generation {generation} (its PVs "
            f"change){note}" + self._when(),
            "plugin": self.reads.info(name),
            "reload_pending": True,
            "apply": self.settings.apply,
            "generation": generation,
        }

    async def _refetch(
        self, entry: Entry, params: dict[str, Any], pat: str | None
    ) -> tuple[Candidate | None, str]:
        """Clone the plugin's repository again: a validated candidate if the commit moved, else None; and a note."""
        src = entry.source
        if src.url is None:
            raise ValueError(f"{entry.name}: a git source without a url in the registry")
        registered = f"at its registered commit {(src.commit or '?')[:12]}"
        # Asking the remote first makes a restart without a new commit cost no clone.
        try:
            head = await remote_head(src.url, src.branch, pat, self.settings.git_timeout)
        except SourceError as exc:  # unreachable: restart what is registered
            log.warning("restart %s: %s; restarting the registered commit", entry.name, exc.detail)
            return None, f" {registered} (could not fetch: {exc.detail})"
        if head is not None and head == src.commit:
            return None, f" (no new commit: {head[:12]})"
        req = Request(
            name=entry.name,
            git_url=src.url,
            branch=src.branch,
            pat=pat,
            path=src.path,
            parameters=params,
            expect_kind=entry.kind,
        )
        try:
            cand = await self.pipeline.run(req)
        except ValidationFailed as exc:
            steps = exc.extra.get("steps") or []
            if steps and steps[-1]["step"] == "clone":  # unreachable: restart what is registered
                log.warning(
                    "restart %s: could not fetch %s (%s); restarting the registered commit",
                    entry.name,
                    src.url,
                    steps[-1]["detail"],
                )
                return None, f" {registered} (could not fetch: {steps[-1]['detail']})"
            raise
        if cand.source.commit == src.commit:
            await asyncio.to_thread(cand.discard)
            return None, f" (no new commit: {(src.commit or '?')[:12]})"
        log.info(
            "restart %s: %s moved from %s to %s",
            entry.name,
            src.url,
            (src.commit or "?")[:12],
            cand.source.commit,
        )
        return (
            cand,
            f" at the new commit {(cand.source.commit or '?')[:12]} (was {(src.commit or '?')[:12]})",
        )


def entry_of(cand: Candidate) -> Entry:
    """The registry entry of a validated candidate."""
    req = cand.request
    task = (
        cand.kind == "task"
    )  # a job waits idle: auto_start means nothing for it (as in iocmng 2.7.9)
    return Entry(
        name=req.name,
        kind=cand.kind,
        source=cand.source,
        parameters=req.parameters,
        plugin_dir=str(cand.plugin_dir),
        owned_dir=str(cand.owned_dir) if cand.owned_dir else None,
        deps_dir=str(cand.deps_dir) if cand.deps_dir else None,
        records=cand.records,
        class_name=cand.class_name,
        autostart_order=req.autostart_order,
        auto_start=req.auto_start or not task,
        auto_start_on_boot=req.auto_start_on_boot or not task,
    )


def delete_files(data_dir: Path, entry: Entry) -> None:
    """Delete only what we own (a plugin's clone and requirements), and only inside the data directory."""
    root = data_dir.resolve()
    for d in (entry.owned_dir, entry.deps_dir):
        if not d:
            continue
        path = Path(d).resolve()
        if path.is_relative_to(root / "repos") or path.is_relative_to(root / "deps"):
            shutil.rmtree(path, ignore_errors=True)
        else:
            log.error("refusing to delete %s: outside the data directory", path)
