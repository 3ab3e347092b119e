"""Links: a plugin's wired PVs, connected to external PVs over CA (aioca) or PVA (p4p).

Every link I/O is asynchronous on the service loop: monitors push values
through callbacks, polled links are read by one task per plugin with bounded
timeouts, and writes are tasks of their own. A PV that never connects costs a
pending search, never a delayed cycle. The subscriptions of a plugin belong
to its :class:`LinkSet` and end with it (no shared keys between plugins).

``link: NAME`` uses the plugin's default protocol (parameter ``pva``, else
IOCMNG_LINK_PROTOCOL); ``ca://NAME`` and ``pva://NAME`` choose explicitly.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.models import LINK_RE, PVSpec
from ..epics.values import is_pva_enum, plain_value, pva_value

log = logging.getLogger("iocmng.links")

ValueHandler = Callable[[str, Any, Any], None]  # (name, value, old)
ConnectionHandler = Callable[[str, bool], None]  # (name, connected)


def link_protocol(params: dict[str, Any], default: str) -> str:
    """The protocol of a plugin's bare links: its ``pva`` parameter if set, else the service's default."""
    pva = params.get("pva")
    return default if pva is None else ("pva" if pva else "ca")


def parse_link(link: str, default_protocol: str) -> tuple[str, str]:
    """``(protocol, pv)`` of a link string."""
    m = LINK_RE.match(link)
    if m is None:
        raise ValueError(f"not a link: {link!r}")
    return (m.group(1) or default_protocol), m.group(2)


class PvaBatch:
    """PVA monitors delivered in batches, as aioca delivers CA ones.

    p4p's asyncio ``Context.monitor`` wakes one task per subscription for
    every update (10 000 task switches a second for 1000 links at 10 Hz).
    Here a pvxs thread only marks a subscription ready; one loop callback
    then drains the FIFOs of every ready subscription and calls plain
    functions: one wake-up of the loop per burst of updates.
    """

    def __init__(self, context: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.context = context
        self.loop = loop
        self._ready: collections.deque[list[Any]] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def subscribe(self, pv: str, callback: Callable[[Any], None]) -> _PvaSubscription:
        from p4p.client.raw import Context as RawContext

        entry: list[Any] = [None, callback]

        def notify() -> None:  # a pvxs thread: the subscription's FIFO is not empty
            with self._lock:
                self._ready.append(entry)
                if self._scheduled:
                    return
                self._scheduled = True
            self.loop.call_soon_threadsafe(self._drain)

        entry[0] = RawContext.monitor(self.context, pv, notify, None)
        return _PvaSubscription(entry)

    def _drain(self) -> None:
        with self._lock:
            entries = list(self._ready)
            self._ready.clear()
            self._scheduled = False
        for entry in entries:
            while entry[0] is not None:
                value = entry[0].pop()
                if value is None:
                    break
                entry[1](value)


class _PvaSubscription:
    def __init__(self, entry: list[Any]) -> None:
        self._entry = entry

    def close(self) -> None:
        sub, self._entry[0] = self._entry[0], None
        if sub is not None:
            sub.close()


def pva_batch(context: Any) -> PvaBatch:
    """The batcher of a p4p asyncio context (one per context, made on first use on its loop)."""
    batch = getattr(context, "_iocmng_batch", None)
    if batch is None:
        batch = PvaBatch(context, asyncio.get_running_loop())
        context._iocmng_batch = batch
    return batch


@dataclass
class Link:
    name: str  # the plugin's PV name
    spec: PVSpec
    protocol: str  # "ca" or "pva"
    pv: str  # the external PV
    direction: str  # "input" or "output"
    connected: bool = False
    value: Any = None
    buffer: collections.deque[Any] | None = None
    last_poll: float = field(default=-1e18)
    sub: Any = None
    enum: bool = False  # a PVA NTEnum: written as value.index

    @property
    def polled(self) -> bool:
        return self.spec.effective_link_mode == "poll"


class LinkSet:
    """The links of one plugin."""

    def __init__(
        self,
        owner: str,
        wired: dict[str, tuple[PVSpec, str]],
        default_protocol: str,
        *,
        interval: float,
        timeout: float,
        on_value: ValueHandler,
        on_connection: ConnectionHandler,
        pva_context: Callable[[], Any],
    ) -> None:
        self.owner = owner
        self.links: dict[str, Link] = {}
        for name, (spec, direction) in wired.items():
            assert spec.link is not None
            protocol, pv = parse_link(spec.link, default_protocol)
            link = Link(name, spec, protocol, pv, direction, value=spec.value)
            if spec.buffer_size:
                link.buffer = collections.deque(maxlen=spec.buffer_size)
            self.links[name] = link
        self.interval = interval
        self.timeout = timeout
        self._on_value = on_value
        self._on_connection = on_connection
        self._pva_context = pva_context
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    # -- life -----------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe monitored links and start polling the others (returns at once)."""
        for link in self.links.values():
            if link.polled:
                continue
            if link.protocol == "ca":
                self._ca_monitor(link)
            else:
                self._pva_monitor(link)
        if any(lk.polled for lk in self.links.values()):
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_loop(), name=f"links:{self.owner}"
            )

    async def close(self) -> None:
        self.closed = True
        for link in self.links.values():
            if link.sub is not None:
                try:
                    link.sub.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    log.debug("closing the subscription of %s failed", link.pv, exc_info=True)
                link.sub = None
        tasks = [t for t in (self._poller, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- values -------------------------------------------------------------------------------
    def _update(self, link: Link, value: Any) -> None:
        if self.closed:
            return
        if not link.connected:
            link.connected = True
            self._on_connection(link.name, True)
        old, link.value = link.value, value
        if link.buffer is not None:
            link.buffer.append(value)
        self._on_value(link.name, value, old)

    def _lost(self, link: Link) -> None:
        if link.connected and not self.closed:
            link.connected = False
            self._on_connection(link.name, False)

    def _ca_monitor(self, link: Link) -> None:
        import aioca

        def callback(value: Any) -> None:
            # aioca closes a subscription whose callback raises: never raise here
            try:
                if not getattr(value, "ok", True):
                    self._lost(link)
                else:
                    self._update(link, plain_value(value))
            except Exception:  # noqa: BLE001
                log.exception("link %s of %s: update failed", link.pv, self.owner)

        link.sub = aioca.camonitor(link.pv, callback, notify_disconnect=True)

    def _pva_monitor(self, link: Link) -> None:
        known = [False]  # the value's type is learnt once per connection

        def callback(value: Any) -> None:
            try:
                if isinstance(value, Exception):  # Disconnected (or the end of the subscription)
                    known[0] = False
                    self._lost(link)
                    return
                if not known[0]:
                    known[0], link.enum = True, is_pva_enum(value)
                self._update(link, pva_value(value, link.enum))
            except Exception:  # noqa: BLE001
                log.exception("link %s of %s: update failed", link.pv, self.owner)

        link.sub = pva_batch(self._pva_context()).subscribe(link.pv, callback)

    async def read(self, link: Link) -> Any:
        async with asyncio.timeout(self.timeout):
            if link.protocol == "ca":
                import aioca

                return plain_value(await aioca.caget(link.pv, timeout=None))
            value = await self._pva_context().get(link.pv)
            link.enum = is_pva_enum(value)
            return pva_value(value, link.enum)

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        polled = [lk for lk in self.links.values() if lk.polled]
        while True:
            now = loop.time()
            due = [
                lk
                for lk in polled
                if now - lk.last_poll >= (lk.spec.poll_rate or self.interval) - 1e-3
            ]
            for lk in due:
                lk.last_poll = now
            results = await asyncio.gather(*(self.read(lk) for lk in due), return_exceptions=True)
            for lk, result in zip(due, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    self._lost(lk)
                else:
                    self._update(lk, result)
            wake = min(lk.last_poll + (lk.spec.poll_rate or self.interval) for lk in polled)
            await asyncio.sleep(max(wake - loop.time(), 0.01))

    # -- writes ---------------------------------------------------------------------------------
    async def put(self, name: str, value: Any, timeout: float | None = None) -> None:
        """Write ``value`` to the external PV of wired PV ``name``, bounded by ``timeout``
        (default: the links' timeout)."""
        link = self.links.get(name)
        if link is None:
            raise KeyError(
                f"{name!r} is not a wired PV of {self.owner} (wired: {', '.join(self.links) or 'none'})"
            )
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            if link.protocol == "ca":
                import aioca

                await aioca.caput(link.pv, value, wait=True, timeout=None)
            else:
                ctx = self._pva_context()
                if not link.connected:  # learn the type first (an enum is written by index)
                    link.enum = is_pva_enum(await ctx.get(link.pv))
                await ctx.put(
                    link.pv, {"value.index": int(value)} if link.enum else value, wait=True
                )

    def put_soon(self, name: str, value: Any, timeout: float | None = None) -> asyncio.Task[None]:
        """Start a write in a task of its own; failures are logged, never raised into a cycle."""
        task = asyncio.get_running_loop().create_task(
            self.put(name, value, timeout), name=f"link_put:{self.owner}:{name}"
        )
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            exc = None if t.cancelled() else t.exception()
            if exc is not None:
                log.warning(
                    "%s: writing %r to %s failed: %r", self.owner, value, self.links[name].pv, exc
                )

        task.add_done_callback(done)
        return task

    # -- views ----------------------------------------------------------------------------------
    def names(self, direction: str) -> list[str]:
        return [n for n, lk in self.links.items() if lk.direction == direction]

    def disconnected(self) -> list[str]:
        return [n for n, lk in self.links.items() if not lk.connected]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": n,
                "pv": lk.pv,
                "protocol": lk.protocol,
                "direction": lk.direction,
                "mode": lk.spec.effective_link_mode,
                "connected": lk.connected,
            }
            for n, lk in self.links.items()
        ]
