"""The service: the parts of one generation, put together.

:class:`Service` holds the parts (settings, registry, runtime and its IOC
bridge, validation pipeline, events, autosave, metrics) and three roles
over them, each in its own module:

- :class:`~iocmng.service.reads.Reads`: plugin info, listings, health;
- :class:`~iocmng.service.mutations.Mutations`: add, remove, restart;
- :class:`~iocmng.service.lifecycle.Lifecycle`: boot, serve, reload, stop.

Its constructor only assembles: :meth:`Service.from_settings` reads the
service's files and environment first. The process entry point, which
hands the REST app to the lifecycle, is :mod:`iocmng.server`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..config.bootlist import read_boot_list
from ..config.settings import Settings, StartupPlugin, read_service_config
from ..errors import SettingsError
from .lifecycle import Front, Lifecycle
from .metrics import make_registry
from .mutations import Mutations
from .parts import Parts, Start
from .reads import Reads
from .registry import Entry
from .reload import LISTEN_FD_ENV
from .supervisor import FRESH_START_ENV, SAFE_MODE_ENV
from .validation import Request


def examples_dir() -> Path:
    """plugins_examples/ of a source checkout, or of the installation prefix (container)."""
    for candidate in (
        Path(__file__).resolve().parents[2] / "plugins_examples",
        Path(sys.prefix) / "plugins_examples",
    ):
        if candidate.is_dir():
            return candidate
    raise SettingsError(
        "--demo: no plugins_examples directory next to the package or under sys.prefix"
    )


class Service(Parts):
    """One generation of the iocmng service: its parts and the three roles over them."""

    @classmethod
    def from_settings(cls, settings: Settings, *, demo: bool = False) -> Service:
        """Read what a start brings (service config file, boot list, the supervisor's
        variables, which it consumes) and assemble the service."""
        service_config = read_service_config(settings.config)
        # A reload is not a start: the startup/demo list is applied at a real
        # start only, so a demo plugin the user removed stays removed.
        # Under --supervise the socket is inherited at every start of the child:
        # the supervisor says which starts are real ones (iocmng/service/supervisor.py).
        fresh = os.environ.pop(FRESH_START_ENV, None) == "1"
        fresh_start = fresh or LISTEN_FD_ENV not in os.environ
        safe_mode = os.environ.pop(SAFE_MODE_ENV, None) == "1"
        # The boot list is read at a real start only (a bad file stops the start, naming the variable).
        boot_list, boot_errors = read_boot_list(settings.plugins_config if fresh_start else None)
        wanted = list(service_config.plugins) + list(boot_list)
        if demo and fresh_start:
            for d in sorted(
                p
                for p in examples_dir().iterdir()
                if p.is_dir() and not p.name.startswith((".", "_"))
            ):
                wanted.append(StartupPlugin(name=d.name, local_path=str(d)))
        start = Start(
            service_config=service_config,
            fresh_start=fresh_start,
            safe_mode=safe_mode,
            startup_plugins=wanted,
            boot_errors=boot_errors,
        )
        return cls(settings, start)

    def __init__(self, settings: Settings, start: Start) -> None:
        super().__init__(settings, start)
        self.reads = Reads(self.registry, self.runtime, self.prefix, self.served)
        self.mutations = Mutations(
            settings=settings,
            registry=self.registry,
            runtime=self.runtime,
            pipeline=self.pipeline,
            reads=self.reads,
            autosave=self.autosave,
            logs=self.logs,
            changed=lambda: self.lifecycle.changed(),
        )
        self.lifecycle = Lifecycle(self, self.mutations)
        self.metrics = make_registry(self)

    # -- what the REST app reads ---------------------------------------------------------------
    @property
    def generation(self) -> int:
        """The generation this process serves."""
        return self.served.generation

    @property
    def started_at(self) -> float:
        return self.served.started_at

    @property
    def boot_errors(self) -> list[str]:
        return self.served.boot_errors

    @property
    def reload_pending(self) -> bool:
        return self.reads.reload_pending

    @property
    def watchdog(self) -> Any:
        return self.lifecycle.watchdog

    def info(self, name: str) -> dict[str, Any]:
        return self.reads.info(name)

    def get_kind(self, name: str, kind: str | None) -> Entry:
        return self.reads.get_kind(name, kind)

    def list(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self.reads.list(kind)

    async def list_json(self, kind: str | None = None) -> bytes:
        return await self.reads.list_json(kind)

    def health(self) -> dict[str, Any]:
        return {
            **self.reads.health(),
            "apply": self.settings.apply,
            "pending_changes": self.reads.pending_changes(),
            "reload": self.lifecycle.reload_status(),
        }

    def apply(self) -> dict[str, Any]:
        """Reload now for the pending changes (IOCMNG_APPLY=manual keeps them until this)."""
        return self.lifecycle.apply()

    # -- what the REST app changes -------------------------------------------------------------
    async def add(self, req: Request) -> dict[str, Any]:
        return await self.mutations.add(req)

    async def remove(self, name: str, kind: str | None = None) -> dict[str, Any]:
        return await self.mutations.remove(name, kind)

    async def restart(
        self, name: str, parameters: dict[str, Any] | None = None, pat: str | None = None
    ) -> dict[str, Any]:
        return await self.mutations.restart(name, parameters, pat)

    # -- the generation ------------------------------------------------------------------------
    async def run(self, front: Front) -> bool:
        """Boot, serve through ``front`` until a stop or a reload; True for a reload."""
        return await self.lifecycle.run(front)

    def request_stop(self) -> None:
        self.lifecycle.request_stop()
