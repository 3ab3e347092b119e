"""What a plugin's handle and wiring use of the runtime, handed to them when they are built.

:class:`~iocmng.runtime.runtime.Runtime` owns one :class:`RuntimeServices` and
gives it to every :class:`~iocmng.runtime.handle.PluginHandle` and
:class:`~iocmng.runtime.wiring.Wiring` it builds: they reach the loop, the
event publisher, the devices and the PVA client through it, never through the
runtime itself, so the modules import one way only
(services <- handle <- wiring <- runtime).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


class DeviceSource(Protocol):
    """The service's ophyd devices as a plugin sees them (``get_device``, ``list_devices``)."""

    def get(self, name: str, /) -> Any: ...
    def __iter__(self) -> Iterator[str]: ...


def plugin_logger(name: str) -> logging.Logger:
    """The logger of plugin ``name`` (``iocmng.plugin.<name>``), also the plugin's ``self.logger``."""
    return logging.getLogger(f"iocmng.plugin.{name}")


def _no_devices() -> dict[str, Any]:
    return {}


def _no_events(kind: str, **data: Any) -> None:
    return None


def _no_pva() -> Any:
    raise RuntimeError("no PVA client context in this runtime")


@dataclass
class RuntimeServices:
    """The runtime's services of a plugin's handle and wiring (one object, shared by all plugins)."""

    #: Publish an event: ``emit(kind, **data)`` (the service's SSE stream listens).
    emit: Callable[..., None] = _no_events
    #: The process's PVA client context, created on first use (PVA links).
    pva_context: Callable[[], Any] = _no_pva
    #: The ophyd devices of the beamline configuration (``get``, iteration; a dict will do).
    devices: DeviceSource = field(default_factory=_no_devices)
    #: The service loop; set when the runtime starts (plugins' sync code reaches it from threads).
    loop: asyncio.AbstractEventLoop | None = None
    #: Service-wide ChannelFinder settings (a plugin parameter overrides them).
    channelfinder_url: str | None = None
    channelfinder_timeout: float | None = None

    @staticmethod
    def plugin_logger(name: str) -> logging.Logger:
        return plugin_logger(name)

    @property
    def beamline_config_path(self) -> Any:
        """The values.yaml the devices come from (``None``: none, or devices given as a dict)."""
        return getattr(self.devices, "config", None)
