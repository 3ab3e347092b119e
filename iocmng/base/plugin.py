"""What every plugin gets on ``self``: name, parameters, logger and PV access.

The runtime attaches a *context* (its handle on the plugin's records and state)
before ``initialize()`` runs. Every method here is safe to call from the event
loop and from the worker thread that runs sync plugin methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
    def link_put(self, name: str, value: Any) -> Any: ...
    def link_values(self) -> dict[str, Any]: ...
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

    def link_put(self, name: str, value: Any) -> Any:
        raise KeyError(f"{name!r} is not a wired PV (the plugin is not running)")

    def link_values(self) -> dict[str, Any]:
        return {}


class PluginBase(ChannelFinderHelpers):
    """Common base of :class:`~iocmng.TaskBase` and :class:`~iocmng.JobBase`
    (ChannelFinder helpers ``cf_search``, ``cf_discover_devices``, ``cf_create_device``:
    :mod:`iocmng.channelfinder`)."""

    #: "task" or "job"; set by the subclasses.
    kind: ClassVar[str] = ""
    #: Extra functions for this plugin's rule and transform expressions
    #: (name -> callable); they may not replace a library function.
    expression_functions: ClassVar[dict[str, Callable[..., Any]]] = {}

    def __init__(self, name: str = "", parameters: dict[str, Any] | None = None, **_: Any) -> None:
        #: The plugin's name as registered (``^[A-Za-z0-9_-]{1,128}$``).
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

    # -- links (wired PVs) ----------------------------------------------------------------
    def link_put(self, name: str, value: Any) -> Any:
        """Write ``value`` to the external PV of wired PV ``name`` (bounded by parameter ``timeout``).

        From sync code (a worker thread) it waits and raises if the write fails;
        from ``async def`` code it returns a task to ``await`` (a failure not
        awaited is logged). Raises KeyError if ``name`` is not wired.
        """
        return self._ctx.link_put(name, value)

    @property
    def link_values(self) -> dict[str, Any]:
        """The latest value of every wired PV, by name."""
        return self._ctx.link_values()

    # -- optional hooks: override one of them ----------------------------------------------
    def on_input(self, name: str, value: Any) -> Any:
        """Called when an operator writes input PV ``name``; may be ``async def``."""
        return None

    def on_input_changed(self, name: str, value: Any, old: Any) -> Any:
        """Called when an input changes: an operator's write, or a wired input with
        ``trigger: true`` (iocmng 2.7.9's hook). May be ``async def``. A plugin
        overriding this one does not get :meth:`on_input` calls."""
        return None
