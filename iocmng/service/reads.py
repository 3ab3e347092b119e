"""Read views of the service: one plugin's info, the listings, health.

Built from the registry (what is committed) and the runtime (what runs in
this generation); nothing here changes either. A plugin committed but not
yet served (waiting for its reload) is shown ``pending``, computed from its
files as it will start.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..config.models import load_config
from ..epics.plan import base_of, plan, plugin_prefix
from ..errors import IocmngError, NotFound
from ..runtime.handle import PluginHandle
from ..runtime.runtime import Runtime
from .registry import Entry, Registry
from .views import legacy_fields, legacy_live

#: Seconds a built listing (GET /tasks, /jobs, /plugins) is shared by later requests.
LISTING_TTL = 0.2


@dataclass
class Served:
    """What this process serves: its generation number, since when, and what its start refused."""

    generation: int = 0
    started_at: float = field(default_factory=time.time)
    boot_errors: list[str] = field(default_factory=list)
    #: The registry's plugins as this generation serves them (set at boot).
    entries: dict[str, Entry] = field(default_factory=dict)
    #: Plugins restarted since, whose restart waits for the reload (new PVs, or none built here).
    restarts: set[str] = field(default_factory=set)


class Reads:
    """Answers to GET requests: plugin info, listings (shared while fresh), health."""

    def __init__(self, registry: Registry, runtime: Runtime, prefix: str, served: Served) -> None:
        self.registry = registry
        self.runtime = runtime
        self.prefix = prefix
        self.served = served
        self._static_cache: dict[
            str, tuple[Entry, PluginHandle | None, dict[str, Any], dict[str, Any]]
        ] = {}
        self._listings: dict[str | None, tuple[Any, asyncio.Task[bytes], float]] = {}

    @property
    def reload_pending(self) -> bool:
        """A change is committed that a later generation (after the reload) serves."""
        return self.registry.state.generation > self.served.generation

    def pending_changes(self) -> list[dict[str, Any]]:
        """The committed changes the next reload applies: adds, removes, and restarts that
        change a plugin's records or that this generation could not apply (a plugin with no
        records built here); a restart that keeps them is applied live."""
        served, wanted = self.served.entries, self.registry.plugins
        out: list[dict[str, Any]] = []
        for name in sorted(served.keys() | wanted.keys()):
            old, new = served.get(name), wanted.get(name)
            same = old is not None and new is not None and old.added_at == new.added_at
            if old is not None and not same:
                out.append({"change": "remove", "plugin": name, "kind": old.kind})
            if new is None:
                continue
            if old is None or not same:
                out.append({"change": "add", "plugin": name, "kind": new.kind})
            elif old.records != new.records or name in self.served.restarts:
                out.append({"change": "restart", "plugin": name, "kind": new.kind})
        return out

    def is_pending_add(self, name: str) -> bool:
        """``name`` is registered but not served yet (its add waits for the reload)."""
        new, old = self.registry.plugins.get(name), self.served.entries.get(name)
        return new is not None and (old is None or old.added_at != new.added_at)

    def get_kind(self, name: str, kind: str | None) -> Entry:
        entry = self.registry.plugins.get(name)
        if entry is None or (kind is not None and entry.kind != kind):
            what = kind or "plugin"
            raise NotFound(f"no {what} named {name!r}")
        return entry

    def info(self, name: str) -> dict[str, Any]:
        entry = self.registry.plugins.get(name)
        if entry is None:
            raise NotFound(f"no plugin named {name!r}")
        h = self.runtime.handles.get(name)
        if h is not None:
            out = h.info()
        else:  # committed, waiting for its reload
            out = {
                "name": name,
                "kind": entry.kind,
                "mode": None,
                "state": "pending",
                "parameters": entry.parameters,
                "pvs": entry.records,
                "cycle_count": 0,
                "error_count": 0,
                "overruns": 0,
                "last_error": None,
                "enabled": None,
                "first_started_at": None,
                "uptime_s": None,
            }
        static, planned_params = self._static_info(entry, h)
        out.update(static)
        out.update(legacy_live(out["state"], planned_params if h is None else out["parameters"]))
        return out

    def _static_info(
        self, entry: Entry, h: PluginHandle | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
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
                config, records = (
                    h.config,
                    (h.records.names() if h.records is not None else entry.records),
                )
                mode = h.mode if h.kind == "task" else None
            else:  # pending: planned from its files, as it will start
                try:
                    config = load_config(Path(entry.plugin_dir))
                    p = plan(self.prefix, entry.name, entry.kind, config, entry.parameters)
                    params, mode = p.parameters_dict(), (p.mode if entry.kind == "task" else None)
                except IocmngError:
                    pass  # files changed or gone: the plugin's own state says so when it loads
            base = base_of(records) or plugin_prefix(self.prefix, entry.name, config)
            class_name = entry.class_name or (
                h.cls.__name__ if h is not None and h.cls is not None else ""
            )
            static = {
                "source": entry.source.model_dump(exclude_none=True),
                "pv_prefix": base,
                **legacy_fields(entry, config, base, records, mode, class_name),
            }
            cached = self._static_cache[entry.name] = (entry, h, static, params)
        return cached[2], cached[3]

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            self.info(n)
            for n, e in sorted(self.registry.plugins.items())
            if kind is None or e.kind == kind
        ]

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
        if (
            cached is not None
            and cached[0] == key
            and (not cached[1].done() or loop.time() - cached[2] < LISTING_TTL)
        ):
            return await asyncio.shield(cached[1])
        building = loop.create_task(self._build_listing(kind), name="iocmng:listing")
        self._listings[kind] = (key, building, loop.time())
        return await asyncio.shield(building)

    async def _build_listing(self, kind: str | None, chunk: int = 25) -> bytes:
        """Build and encode in chunks, yielding to the loop between them, so a
        large listing never holds the plugins' cycles back for long."""
        names = [
            n for n, e in sorted(self.registry.plugins.items()) if kind is None or e.kind == kind
        ]
        parts: list[str] = []
        count = 0
        for i in range(0, len(names), chunk):
            if i:
                await asyncio.sleep(0)
            infos = [self.info(n) for n in names[i : i + chunk] if n in self.registry.plugins]
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
            "generation": self.served.generation,
            "pending_generation": self.registry.state.generation if self.reload_pending else None,
            "uptime_s": round(time.time() - self.served.started_at, 3),
            "prefix": self.prefix,
            "plugins": {"total": len(kinds), **states},
            "tasks_count": kinds.count("task"),
            "jobs_count": kinds.count("job"),
            "boot_errors": self.served.boot_errors,
        }
