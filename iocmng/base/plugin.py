"""What every plugin gets on ``self``: name, parameters, logger and PV access.

The runtime attaches a *context* (its handle on the plugin's records and state)
before ``initialize()`` runs. Every method here is safe to call from the event
loop and from the worker thread that runs sync plugin methods.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Protocol

from ..channelfinder import ChannelFinderHelpers


class PluginContext(Protocol):
    """What the runtime provides behind a plugin (see iocmng.handle.PluginHandle)."""

    pv_prefix: str

    def set_pv(self, name: str, value: Any) -> None: ...
    def get_pv(self, name: str) -> Any: ...
    def set_status(self, status: str) -> None: ...
    def set_message(self, message: str) -> None: ...
    def get_device(self, name: str) -> Any: ...
    def list_devices(self) -> list[str]: ...
    @property
    def cycle_count(self) -> int: ...


class _Detached:
    """Context of a plugin not (yet) attached to a runtime: keeps values in a dict."""

    pv_prefix = ""
    cycle_count = 0

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def set_pv(self, name: str, value: Any) -> None:
        self.values[name] = value

    def get_pv(self, name: str) -> Any:
        return self.values.get(name)

    def set_status(self, status: str) -> None:
        self.values["STATUS"] = status

    def set_message(self, message: str) -> None:
        self.values["MESSAGE"] = message

    def get_device(self, name: str) -> Any:
        return None

    def list_devices(self) -> list[str]:
        return []


class PluginBase(ChannelFinderHelpers):
    """Common base of :class:`~iocmng.TaskBase` and :class:`~iocmng.JobBase`
    (ChannelFinder helpers ``cf_search``, ``cf_discover_devices``, ``cf_create_device``:
    :mod:`iocmng.channelfinder`)."""

    #: "task" or "job"; set by the subclasses.
    kind: ClassVar[str] = ""

    def __init__(self, name: str = "", parameters: dict[str, Any] | None = None, **_: Any) -> None:
        #: The plugin's name as registered (lower case).
        self.name = name or type(self).__name__.lower()
        #: config.yaml ``parameters`` deep-merged with REST/CLI overrides.
        self.parameters: dict[str, Any] = dict(parameters or {})
        #: Logger named ``iocmng.plugin.<name>``.
        self.logger = logging.getLogger(f"iocmng.plugin.{self.name}")
        self._ctx: PluginContext = _Detached()

    # -- attached by the runtime -------------------------------------------------
    def _attach(self, ctx: PluginContext) -> None:
        self._ctx = ctx

    @property
    def pv_prefix(self) -> str:
        """``<prefix>:<NAME>``: the prefix of this plugin's PVs."""
        return self._ctx.pv_prefix

    @property
    def mode(self) -> str:
        """``continuous`` or ``triggered`` for tasks, ``job`` for jobs."""
        return str(self.parameters.get("mode", "continuous")) if self.kind == "task" else "job"

    @property
    def cycle_count(self) -> int:
        """Completed cycles (tasks) or runs (jobs)."""
        return self._ctx.cycle_count

    # -- PV access -----------------------------------------------------------------
    def set_pv(self, name: str, value: Any) -> None:
        """Write one of this plugin's PVs (declared input or output) by its short name."""
        self._ctx.set_pv(name, value)

    def get_pv(self, name: str) -> Any:
        """Read one of this plugin's PVs by its short name."""
        return self._ctx.get_pv(name)

    def set_status(self, status: str) -> None:
        """Set the STATUS PV to one of its states (e.g. ``"RUN"``, ``"ERROR"``)."""
        self._ctx.set_status(status)

    def set_message(self, message: str) -> None:
        """Set the MESSAGE PV (truncated to fit a string record)."""
        self._ctx.set_message(message)

    def get_device(self, name: str) -> Any:
        """An ophyd device built from the beamline configuration, or ``None``."""
        return self._ctx.get_device(name)

    def list_devices(self) -> list[str]:
        """Names of the ophyd devices available (empty without the ``ophyd`` extra)."""
        return self._ctx.list_devices()

    # -- optional hook ----------------------------------------------------------------
    def on_input(self, name: str, value: Any) -> Any:
        """Called when an operator writes input PV ``name``; may be ``async def``."""
        return None
