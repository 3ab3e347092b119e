"""What every plugin gets on ``self``: name, parameters, logger and PV access.

The runtime attaches a *context* (its handle on the plugin's records and state)
before ``initialize()`` runs. Every method here is safe to call from the event
loop and from the worker thread that runs sync plugin methods.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..epics.channelfinder import ChannelFinderHelpers


class PluginContext(Protocol):
    """What the runtime provides behind a plugin (see iocmng.runtime.handle.PluginHandle).

    The 2.7.9 members and the ChannelFinder helpers also read, when the context
    has them (``getattr`` with a default: a detached plugin has none), ``records``,
    ``config``, ``wiring`` (its ``buffers``), ``state``, ``task``, ``enabled``,
    ``beamline_config_path``, ``loop``, ``channelfinder_url`` and ``channelfinder_timeout``.
    """

    @property
    def pv_prefix(self) -> str: ...
    def set_pv(self, name: str, value: Any) -> None: ...
    def get_pv(self, name: str) -> Any: ...
    def set_status(self, status: str) -> None: ...
    def set_message(self, message: str) -> None: ...
    def get_device(self, name: str) -> Any: ...
    def list_devices(self) -> list[str]: ...
    def link_put(self, name: str, value: Any, timeout: float | None = None) -> Any: ...
    def link_values(self) -> dict[str, Any]: ...
    @property
    def cycle_count(self) -> int: ...


def attach_context(plugin: PluginBase, ctx: PluginContext) -> None:
    """Put ``ctx`` (the runtime's handle) behind ``plugin``'s ``self.set_pv`` & co.; the runtime
    calls this before ``initialize()``."""
    plugin._attach(ctx)


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

    def link_put(self, name: str, value: Any, timeout: float | None = None) -> Any:
        raise KeyError(f"{name!r} is not a wired PV (the plugin is not running)")

    def link_values(self) -> dict[str, Any]:
        return {}


class compat_member:  # noqa: N801 - used as a decorator, like property
    """A computed, read-only attribute of iocmng 2.7.9's API that a plugin may still
    assign: a non-data descriptor, so ``self.x = ...`` makes ``x`` the plugin's own
    attribute (as it was before this name existed here) instead of raising."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else self.fn(obj)


class _PV:
    """One entry of :attr:`PluginBase.pvs`: what 2.7.9's record objects offered
    plugin code (``get``, ``set``, ``name``), through the plugin's own methods."""

    __slots__ = ("_plugin", "short")

    def __init__(self, plugin: PluginBase, short: str) -> None:
        self._plugin = plugin
        self.short = short

    @property
    def name(self) -> str:
        """The full PV name, as softioc records' ``name``."""
        return f"{self._plugin.pv_prefix}:{self.short}"

    def get(self) -> Any:
        return self._plugin.get_pv(self.short)

    def set(self, value: Any) -> None:
        if self.short == "MESSAGE":
            self._plugin.set_message(str(value))
        elif self.short == "STATUS" and isinstance(value, str):
            self._plugin.set_status(value)
        else:
            self._plugin.set_pv(self.short, value)

    def __repr__(self) -> str:
        return f"<PV {self.name}>"


class _PVs(Mapping[str, _PV]):
    """The read-only ``self.pvs`` mapping (short name -> :class:`_PV`)."""

    def __init__(self, plugin: PluginBase, names: list[str]) -> None:
        self._plugin = plugin
        self._names = names

    def __getitem__(self, short: str) -> _PV:
        if short not in self._names:
            raise KeyError(short)
        return _PV(self._plugin, short)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _Observer:
    """The three optional callbacks of :func:`observed`."""

    __slots__ = ("before", "after", "failed")

    def __init__(
        self,
        before: Callable[[], None] | None,
        after: Callable[[Any], None] | None,
        failed: Callable[[BaseException], None] | None,
    ) -> None:
        self.before, self.after, self.failed = before, after, failed

    def started(self) -> None:
        if self.before is not None:
            self.before()

    def raised(self, exc: BaseException) -> None:
        if self.failed is not None:
            self.failed(exc)

    def returned(self, result: Any) -> Any:
        if self.after is not None:
            self.after(result)
        return result


def observed(
    fn: Callable[[], Any],
    before: Callable[[], None] | None = None,
    after: Callable[[Any], None] | None = None,
    failed: Callable[[BaseException], None] | None = None,
) -> Callable[[], Any]:
    """``fn`` (a plugin's bound method, ``def`` or ``async def``) with the same call, result and
    exceptions, telling ``before()`` it starts, ``after(result)`` it returned, ``failed(exc)`` it raised.
    An ``async def`` stays a coroutine function (the runtime runs those on the loop)."""
    seen = _Observer(before, after, failed)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def observed_async() -> Any:
            seen.started()
            try:
                result = await fn()
            except BaseException as exc:
                seen.raised(exc)
                raise
            return seen.returned(result)

        return observed_async

    @functools.wraps(fn)
    def observed_sync() -> Any:
        seen.started()
        try:
            result = fn()
        except BaseException as exc:
            seen.raised(exc)
            raise
        return seen.returned(result)

    return observed_sync


def _read_beamline_config(ctx: Any, logger: logging.Logger) -> dict[str, Any]:
    """The values.yaml the service's devices come from, else ``IOCMNG_BEAMLINE_CONFIG``'s."""
    path = getattr(ctx, "beamline_config_path", None) or os.environ.get("IOCMNG_BEAMLINE_CONFIG")
    if not path:
        return {}
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        logger.warning("beamline_config: cannot read %s: %s", path, exc)
        return {}
    return values if isinstance(values, dict) else {}


class PluginBase(ChannelFinderHelpers):
    """Common base of :class:`~iocmng.TaskBase` and :class:`~iocmng.JobBase`
    (ChannelFinder helpers ``cf_search``, ``cf_discover_devices``, ``cf_create_device``:
    :mod:`iocmng.epics.channelfinder`)."""

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
    # (parameter names as in iocmng 2.7.9, so that its plugins' keyword calls work)
    def set_pv(self, pv_name: str, value: Any) -> None:
        """Write one of this plugin's PVs (declared input or output) by its short name."""
        self._ctx.set_pv(pv_name, value)

    def get_pv(self, pv_name: str) -> Any:
        """Read one of this plugin's PVs by its short name."""
        return self._ctx.get_pv(pv_name)

    def set_status(self, status: str) -> None:
        """Set the STATUS PV to one of its states (e.g. ``"RUN"``, ``"ERROR"``)."""
        self._ctx.set_status(status)

    def set_message(self, message: str) -> None:
        """Set the MESSAGE PV (truncated to fit a string record)."""
        self._ctx.set_message(message)

    def get_device(self, device_name: str) -> Any:
        """An ophyd device built from the beamline configuration, or ``None``."""
        return self._ctx.get_device(device_name)

    def list_devices(self) -> list[str]:
        """Names of the ophyd devices available (empty without the ``ophyd`` extra)."""
        return self._ctx.list_devices()

    # -- links (wired PVs) ----------------------------------------------------------------
    def link_put(self, key: str, value: Any, timeout: float | None = None) -> Any:
        """Write ``value`` to the external PV of wired PV ``key``, bounded by ``timeout`` seconds
        (default: the plugin's parameter ``timeout``; iocmng 2.7.9's signature).

        From sync code (a worker thread) it waits and raises if the write fails;
        from ``async def`` code it returns a task to ``await`` (a failure not
        awaited is logged). Raises KeyError if ``key`` is not wired, ValueError
        for a ``timeout`` that is not a positive number.
        """
        return self._ctx.link_put(key, value, timeout)

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

    # -- optional hooks: state carried across a reload --------------------------------------
    def save_state(self) -> dict[str, Any] | None:
        """Called when the plugin stops for a reload (its cycles have ended, before
        :meth:`cleanup`); return a JSON-serializable dict to get it back in the next
        generation, or None. May be ``async def``. Not called on a plain stop of the
        service unless IOCMNG_KEEP_STATE=true."""
        return None

    def restore_state(
        self, state: dict[str, Any], old_commit: str | None, new_commit: str | None
    ) -> Any:
        """Called in the next generation after :meth:`initialize` and before the first
        cycle, with what :meth:`save_state` returned, and the source commit of the code
        that saved it and of the code running now (None for a source without one): refuse
        a state from other code by returning early. May be ``async def``. If it raises,
        the error is logged and the plugin goes on without the state."""
        return None

    # -- iocmng 2.7.9's author members (thin aliases; see docs/plugins.md) ---------------------
    def _has_pv(self, name: str) -> bool:
        records = getattr(self._ctx, "records", None)
        return records is None or name in records.records

    def _unknown_pv(self, name: str) -> None:
        warned: set[str] = self.__dict__.setdefault("_iocmng_unknown_pvs", set())
        if name not in warned:
            warned.add(name)
            self.logger.warning(
                "%r is not a PV of this plugin: ignored (as iocmng 2.7.9 did)", name
            )

    def set_output(self, pv_name: str, value: Any) -> None:
        """iocmng 2.7.9's alias of :meth:`set_pv` (a wired output also writes its external PV).

        As in 2.7.9, a name that is not a PV of this plugin is ignored (logged
        once), not an error; iocmng's managed PVs (STATUS, ENABLE, RUN,
        CYCLE_COUNT) still raise KeyError, as with set_pv."""
        if self._has_pv(pv_name):
            self.set_pv(pv_name, value)
        else:
            self._unknown_pv(pv_name)

    def set_input(self, pv_name: str, value: Any) -> None:
        """iocmng 2.7.9's alias of :meth:`set_pv` (here: the plugin's own write to
        an input is not taken for an operator's, so it calls no input hook).
        An unknown name is ignored (logged once), as in 2.7.9."""
        self.set_output(pv_name, value)

    def get_output(self, pv_name: str) -> Any:
        """iocmng 2.7.9's alias of :meth:`get_pv`; ``None`` for a name that is not a PV
        of this plugin (2.7.9's answer; get_pv raises KeyError)."""
        return self.get_pv(pv_name) if self._has_pv(pv_name) else None

    def get_input(self, pv_name: str) -> Any:
        """iocmng 2.7.9's alias of :meth:`get_pv`; ``None`` for an unknown name, as in 2.7.9."""
        return self.get_output(pv_name)

    @compat_member
    def pvs(self) -> Mapping[str, Any]:
        """iocmng 2.7.9's ``self.pvs`` (short name -> record), read-only.

        2.7.9 handed out its softioc record objects; here each value is a small
        proxy with ``get()``, ``set(value)`` and ``name`` (the full PV name) that
        goes through :meth:`get_pv`/:meth:`set_pv`, so that the runtime's
        bookkeeping (wired outputs, an input's echo, MESSAGE) stays right.
        ``set`` on ``MESSAGE`` is :meth:`set_message`, on ``STATUS`` with a state
        name :meth:`set_status`; the other managed PVs (ENABLE, RUN,
        CYCLE_COUNT, a STATUS index) raise KeyError. Record fields (alarms,
        ``.set(v, process=False)``) are not reachable. Empty while not running.
        Assigning ``self.pvs`` makes it the plugin's own attribute.
        """
        records = getattr(self._ctx, "records", None)
        return _PVs(self, list(records.records) if records is not None else [])

    @compat_member
    def pv_definitions(self) -> dict[str, dict[str, dict[str, Any]]]:
        """iocmng 2.7.9's ``self.pv_definitions``: ``{"inputs": {name: fields}, "outputs": {...}}``
        from config.yaml (``pvs:`` and ``arguments:`` merged), each PV's fields as
        given (``mode`` is read as ``link_mode``; unset fields left out, where
        2.7.9 filled in defaults such as ``unit``, ``prec``). A copy: editing it
        changes nothing. Empty without a config.yaml."""
        config = getattr(self._ctx, "config", None)
        if config is None:
            return {"inputs": {}, "outputs": {}}
        return {
            side: {
                n: s.model_dump(exclude_none=True, exclude_defaults=True) | {"type": s.type}
                for n, s in getattr(config.pvs, side).items()
            }
            for side in ("inputs", "outputs")
        }

    @compat_member
    def beamline_config(self) -> dict[str, Any]:
        """iocmng 2.7.9's ``self.beamline_config``: the epik8s values.yaml of
        ``IOCMNG_BEAMLINE_CONFIG`` as a dict (``{}`` when it is not set or not
        readable; a read error is logged). Read once per plugin instance, on
        first use; this plugin's own copy (2.7.9 shared one dict between plugins)."""
        cached = self.__dict__.get("_iocmng_beamline_config")
        if cached is None:
            cached = self.__dict__["_iocmng_beamline_config"] = _read_beamline_config(
                self._ctx, self.logger
            )
        return cached

    @compat_member
    def _link_buffers(self) -> dict[str, Any]:
        """iocmng 2.7.9's ``self._link_buffers`` (HOWTO): the ring buffer (a deque)
        of each input or output with ``buffer_size``, by name. Read the deques,
        do not append to them. Empty without buffers."""
        wiring = getattr(self._ctx, "wiring", None)
        return dict(wiring.buffers) if wiring is not None else {}

    def get_datetime(self) -> str:
        """iocmng 2.7.9's helper: local time as ``YYYY-mm-dd HH:MM:SS.mmm``."""
        return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

    def get_timems(self) -> int:
        """iocmng 2.7.9's helper: the Unix time in milliseconds."""
        return int(time.time() * 1000)

    def create_device(
        self, prefix: str, devgroup: str, devtype: str, name: str | None = None, cache: bool = True
    ) -> Any:
        """iocmng 2.7.9's ``create_device``: an ophyd device of infn_ophyd_hal's
        factory for ``prefix`` (``devgroup``/``devtype`` as in ChannelFinder,
        ``name`` defaults to the last segment of the prefix); ``None`` without
        the ``ophyd`` extra or for an unknown group/type (logged), as in 2.7.9.

        The same machinery as :meth:`cf_create_device` (its cache when
        ``cache``); in ``async def`` code it returns an awaitable. What differs
        from 2.7.9: a device built here is not added to :meth:`get_device`'s
        devices (those come from the beamline configuration only).
        """
        from ..epics.channelfinder import create_device as build_device

        desc = {
            "name": name or prefix.rsplit(":", 1)[-1],
            "prefix": prefix,
            "devgroup": devgroup,
            "devtype": devtype,
        }

        def build() -> Any:  # in a thread without a loop: cf_create_device answers at once
            try:
                return self.cf_create_device(desc) if cache else build_device(desc)
            except ValueError as exc:
                self.logger.warning("create_device: %s", exc)
                return None

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return build()
        return asyncio.to_thread(build)
