"""What the REST API uses of the service: :class:`ServiceAPI`, the type behind the app key.

:mod:`iocmng.server` builds the app with the service generation
(:class:`iocmng.service.service.Service`, which satisfies this protocol:
mypy checks the call). This protocol lists exactly the attributes and
methods the handlers use, so what the API needs of the service is written
in one place; the service's own types are named for the type checker only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..config.settings import Settings
    from ..epics.devices import Devices
    from ..runtime.runtime import Runtime
    from ..service.events import EventBus, PluginLogs
    from ..service.registry import Entry, Registry
    from ..service.validation import Request


class ServiceAPI(Protocol):
    """The service generation a REST app serves, as its handlers see it."""

    # Read-only to the API: properties, so a plain attribute or a property of the service fits.
    @property
    def settings(self) -> Settings: ...

    @property
    def prefix(self) -> str:
        """The PV prefix of this IOC (``IOCMNG_PREFIX`` or config.yaml's)."""
        ...

    @property
    def generation(self) -> int:
        """The generation this process serves (the registry's may be ahead: a reload is pending)."""
        ...

    @property
    def registry(self) -> Registry: ...

    @property
    def runtime(self) -> Runtime: ...

    @property
    def events(self) -> EventBus: ...

    @property
    def logs(self) -> PluginLogs: ...

    @property
    def metrics(self) -> CollectorRegistry: ...

    @property
    def devices(self) -> Devices: ...

    @property
    def reload_pending(self) -> bool:
        """The registry has moved to a generation this process does not serve yet."""
        ...

    def health(self) -> dict[str, Any]: ...

    def apply(self) -> dict[str, Any]:
        """Reload now for the pending changes; ``reload_pending`` False if there were none."""
        ...

    async def list_json(self, kind: str | None = None) -> bytes: ...

    def info(self, name: str) -> dict[str, Any]: ...

    def get_kind(self, name: str, kind: str | None) -> Entry:
        """The registry entry of ``name``; NotFound unless it is of ``kind`` (None: any)."""
        ...

    async def add(self, req: Request) -> dict[str, Any]: ...

    async def remove(self, name: str, kind: str | None = None) -> dict[str, Any]: ...

    async def restart(
        self, name: str, parameters: dict[str, Any] | None = None, pat: str | None = None
    ) -> dict[str, Any]: ...
