"""Blocking get/put/monitor of any PV, over CA or PVA, from any thread.

The implementation behind iocmng 2.7.9's ``iocmng.core.pv_client`` (whose
docstring, :mod:`iocmng.core.pv_client`, is the user's reference): the
asynchronous clients of :mod:`iocmng.epics.pvclient` (aioca, p4p) run on a
private event loop in a thread of this module, started at the first call.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from ..errors import BadRequest, IocmngError, PVForbidden, PVNotFound, PVServerError, PVTimeout
from .pvclient import CAClient, PVAClient
from .values import is_pva_enum, plain_value, pva_value

__all__ = [
    "active_monitors",
    "close",
    "get",
    "get_async",
    "get_provider",
    "init",
    "monitor",
    "put",
    "put_async",
    "unmonitor",
    "unmonitor_all",
]

log = logging.getLogger("iocmng.pv_client")

#: Seconds a caller waits beyond an operation's own timeout (the clients bound it already).
GRACE = 2.0

# iocmng's errors as the builtin exceptions 2.7.9's callers catch.
_BUILTIN_ERRORS: tuple[tuple[type[IocmngError], type[Exception]], ...] = (
    (PVNotFound, TimeoutError),
    (PVTimeout, TimeoutError),
    (BadRequest, ValueError),
    (PVForbidden, PermissionError),
    (PVServerError, RuntimeError),
)


class _CA(CAClient):
    """The CA client, whose descriptions also carry ``raw``: the value as links deliver it."""

    def _describe(
        self, name: str, value: Any, kind: str, count: int, choices: list[str] | None
    ) -> dict[str, Any]:
        out = super()._describe(name, value, kind, count, choices)
        # "raw" keeps NaN and inf, which "value" (JSON-ready, for the gateway) turns to None
        out["raw"] = plain_value(value)
        return out


class _PVA(PVAClient):
    """The PVA client, whose descriptions also carry ``raw``: the value as links deliver it."""

    def describe(self, name: str, value: Any) -> dict[str, Any]:
        out = super().describe(name, value)
        out["raw"] = pva_value(value, is_pva_enum(value))
        return out


class _Engine:
    """The private loop (and its thread) where the clients run, and the thread of monitor callbacks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pva = _PVA()
        self.clients: dict[str, CAClient | PVAClient] = {"ca": _CA(), "pva": self.pva}
        self.callbacks = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="iocmng-pv-callbacks"
        )
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="iocmng-pv-client", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def wait(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        future = self.submit(coro)
        try:
            return future.result(timeout + GRACE)
        except TimeoutError:
            if future.done():  # the operation's own TimeoutError
                raise
            future.cancel()
            raise TimeoutError(f"pv_client: no result within {timeout + GRACE:g} s") from None

    def dispatch(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a user callback in the callback thread; its exception is logged."""

        def call() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("pv_client: monitor callback %r failed", fn)

        with contextlib.suppress(RuntimeError):  # closing: late updates are dropped
            self.callbacks.submit(call)

    def close(self) -> None:
        async def shutdown() -> None:
            self.pva.close()
            _purge_ca_channels(self.loop)

        try:
            self.submit(shutdown()).result(5.0)
        except Exception:  # noqa: BLE001 - best effort: the loop stops anyway
            log.exception("pv_client: closing the clients failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)
        if not self.thread.is_alive():
            self.loop.close()
        # a callback calling close() cannot wait for itself
        in_callback = threading.current_thread().name.startswith("iocmng-pv-callbacks")
        self.callbacks.shutdown(wait=not in_callback)


def _purge_ca_channels(loop: asyncio.AbstractEventLoop) -> None:
    """Close the CA channels aioca opened for ``loop`` only (other loops keep theirs).

    aioca would otherwise deliver their events to a closed loop. Private aioca
    state, as :func:`iocmng.epics.pvclient._forget_channel` uses it.
    """
    if "aioca" not in sys.modules:
        return
    with contextlib.suppress(Exception):
        from aioca import _catools

        cache = _catools._Context._channel_caches.pop(loop, None)
        if cache is not None:
            cache.purge()


class _Monitor:
    """One subscription: its callbacks, and the closer of the client's subscription (on the loop)."""

    def __init__(
        self,
        engine: _Engine,
        pv: str,
        callback: Callable[[Any], None],
        conn_callback: Callable[[bool], None] | None,
    ) -> None:
        self.engine = engine
        self.pv = pv
        self.callback = callback
        self.conn_callback = conn_callback
        self.connected: bool | None = None
        self.closer: Callable[[], None] | None = None
        self.stopped = False

    async def start(self, client: CAClient | PVAClient) -> None:
        if not self.stopped:
            self.closer = client.subscribe(self.pv, self.push)

    def push(self, update: dict[str, Any]) -> None:  # on the loop
        if self.stopped:
            return
        # p4p also reports "not connected" before the first connection: not a loss
        if update.get("connected") is False:
            if self.connected and self.conn_callback is not None:
                self.engine.dispatch(self.conn_callback, False)
            self.connected = False
            return
        if not self.connected and self.conn_callback is not None:
            self.engine.dispatch(self.conn_callback, True)
        self.connected = True
        self.engine.dispatch(self.callback, update["raw"])

    async def stop(self) -> None:
        self.stopped = True
        if self.closer is not None:
            self.closer()
            self.closer = None


_lock = threading.Lock()
_provider: str | None = None
_engine: _Engine | None = None
_subscriptions: dict[str, _Monitor] = {}


def _get_engine() -> _Engine:
    global _engine
    with _lock:
        if _engine is None:
            _engine = _Engine()
            atexit.register(close)
        return _engine


def _on_loop_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _refuse_on_loop(what: str) -> None:
    if _on_loop_thread():
        raise RuntimeError(
            f"pv_client.{what}() blocks, and this thread runs an event loop (an async def method?): "
            f"it would stall the loop, every plugin and the IOC. Use `await pv_client.{what}_async(...)` "
            f"here, or call {what}() from a def method (a worker thread)."
        )


@contextlib.contextmanager
def _builtin_errors() -> Iterator[None]:
    try:
        yield
    except IocmngError as exc:
        for ours, builtin in _BUILTIN_ERRORS:
            if isinstance(exc, ours):
                raise builtin(exc.detail) from exc
        raise


def _run(engine: _Engine, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on the private loop and wait for it (a short step: no timeout of its own)."""
    if not _on_loop_thread():
        return engine.wait(coro, 5.0)
    # A loop thread must not wait: the step runs on its own, a failure is logged.
    engine.submit(coro).add_done_callback(_log_failure)
    return None


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error(
            "pv_client: a monitor could not be started or stopped", exc_info=future.exception()
        )


# -- 2.7.9's functions ---------------------------------------------------------------------
def init(pva: bool = True) -> None:
    """Choose the protocol of the calls that follow: PV Access (``pva=True``) or Channel Access.

    Monitors already started keep theirs.
    """
    global _provider
    _provider = "pva" if pva else "ca"
    log.info("pv_client: protocol %s", _provider)


def get_provider() -> str:
    """``"pva"`` or ``"ca"``: :func:`init`'s choice, else the service's default for links."""
    global _provider
    if _provider is None:
        from ..config.settings import load_settings

        _provider = load_settings().default_link_protocol
    return _provider


def get(pv_name: str, timeout: float = 5.0) -> Any:
    """The current value of ``pv_name`` (blocking; not on an event loop thread, see :func:`get_async`)."""
    _refuse_on_loop("get")
    engine = _get_engine()
    with _builtin_errors():
        return engine.wait(engine.clients[get_provider()].read(pv_name, timeout), timeout)["raw"]


def put(pv_name: str, value: Any, timeout: float = 5.0) -> None:
    """Write ``value`` to ``pv_name`` and wait for completion (not on an event loop thread, see :func:`put_async`)."""
    _refuse_on_loop("put")
    engine = _get_engine()
    with _builtin_errors():
        engine.wait(engine.clients[get_provider()].write(pv_name, value, timeout), timeout)


async def get_async(pv_name: str, timeout: float = 5.0) -> Any:
    """:func:`get` for ``async def`` code: await it on any event loop."""
    engine = _get_engine()
    future = engine.submit(engine.clients[get_provider()].read(pv_name, timeout))
    with _builtin_errors():
        async with asyncio.timeout(timeout + GRACE):
            return (await asyncio.wrap_future(future))["raw"]


async def put_async(pv_name: str, value: Any, timeout: float = 5.0) -> None:
    """:func:`put` for ``async def`` code: await it on any event loop."""
    engine = _get_engine()
    future = engine.submit(engine.clients[get_provider()].write(pv_name, value, timeout))
    with _builtin_errors():
        async with asyncio.timeout(timeout + GRACE):
            await asyncio.wrap_future(future)


def monitor(
    pv_name: str,
    callback: Callable[[Any], None],
    name: str | None = None,
    conn_callback: Callable[[bool], None] | None = None,
) -> str:
    """Call ``callback(value)`` on each update of ``pv_name``; return the key for :func:`unmonitor`.

    The key is ``name``, else ``pv_name``; a monitor already under that key is
    replaced. ``conn_callback(connected)`` is told of connects and disconnects.
    """
    key = name or pv_name
    engine = _get_engine()
    mon = _Monitor(engine, pv_name, callback, conn_callback)
    with _lock:
        old = _subscriptions.pop(key, None)
        _subscriptions[key] = mon
    if old is not None:
        _run(old.engine, old.stop())
    _run(engine, mon.start(engine.clients[get_provider()]))
    return key


def unmonitor(key: str) -> bool:
    """Stop the monitor under ``key``; ``False`` if there is none."""
    with _lock:
        mon = _subscriptions.pop(key, None)
    if mon is None:
        return False
    _run(mon.engine, mon.stop())
    return True


def unmonitor_all() -> int:
    """Stop every monitor; return how many there were."""
    with _lock:
        monitors = list(_subscriptions.values())
        _subscriptions.clear()
    for mon in monitors:
        _run(mon.engine, mon.stop())
    return len(monitors)


def active_monitors() -> dict[str, str]:
    """``{key: PV name}`` of the running monitors."""
    with _lock:
        return {key: mon.pv for key, mon in _subscriptions.items()}


def close() -> None:
    """Stop every monitor, the clients and this module's threads (the next call starts them again)."""
    global _engine
    unmonitor_all()
    with _lock:
        engine, _engine = _engine, None
    if engine is not None:
        engine.close()
        atexit.unregister(close)
        log.info("pv_client: closed")
