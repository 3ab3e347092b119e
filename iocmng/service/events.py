"""What happened: the event stream (SSE) and each plugin's recent log records.

Events (state changes, errors, ENABLE, job results, adds, removals, reloads)
come from :meth:`iocmng.runtime.runtime.Runtime.emit` and the service. Each SSE
client gets a bounded queue: a slow client loses its oldest events (and is
told how many) rather than growing memory or slowing the loop.

Every record logged under ``iocmng.plugin.<name>`` (a plugin's
``self.logger``, and the runtime's messages about it) is kept in a bounded
per-plugin buffer served by ``GET /api/v1/plugins/{name}/logs``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Any, TypeVar

T = TypeVar("T")

PLUGIN_LOGGER = "iocmng.plugin"
_END: dict[str, Any] = {"type": "end"}
QUEUE_SIZE = 1000


def put_drop_oldest(queue: asyncio.Queue[T], item: T) -> bool:
    """Put ``item``; if the queue is full, drop its oldest item first (returns True then).
    A slow consumer loses old items, never memory, and never slows the producer.
    The one bounded queue of the service: SSE events here, PV monitors in the gateway."""
    dropped = queue.full()
    if dropped:
        queue.get_nowait()
    queue.put_nowait(item)
    return dropped


class EventBus:
    """Fan-out of events to SSE subscribers, each with a bounded queue."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """End every subscription (shutdown/reload): each stream sees its end."""
        self.closed = True
        for queue in self._subscribers:
            put_drop_oldest(queue, _END)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self._subscribers:
            if put_drop_oldest(queue, event):  # a slow client must not hold memory
                queue.dropped = getattr(queue, "dropped", 0) + 1  # type: ignore[attr-defined]

    def subscribe(self) -> Subscription:
        """Register a subscriber now: every event published after this call is
        delivered (so a client told "subscribed" misses nothing). Close it with
        ``aclose()`` even if it was never iterated."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        if self.closed:
            queue.put_nowait(_END)
        else:
            self._subscribers.add(queue)
        return Subscription(self, queue)


class Subscription:
    """One SSE client's view of the bus: an async iterator of events."""

    def __init__(self, bus: EventBus, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._bus = bus
        self._queue = queue
        self._held: dict[str, Any] | None = None  # an event held back behind a "dropped" notice
        self._done = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._held is not None:
            event, self._held = self._held, None
            return event
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is _END:
            await self.aclose()
            raise StopAsyncIteration
        dropped = getattr(self._queue, "dropped", 0)
        if dropped:
            self._queue.dropped = 0  # type: ignore[attr-defined]
            self._held = event
            return {"type": "dropped", "time": time.time(), "count": dropped}
        return event

    async def aclose(self) -> None:
        self._done = True
        self._bus._subscribers.discard(self._queue)


class PluginLogs(logging.Handler):
    """Keeps the last ``size`` records of each plugin logger (thread-safe)."""

    def __init__(self, size: int = 500) -> None:
        super().__init__(level=logging.DEBUG)
        self.size = size
        self._buffers: dict[str, collections.deque[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name[len(PLUGIN_LOGGER) + 1 :].split(".", 1)[0]
        if not name:
            return
        try:
            message = record.getMessage()
        except Exception:  # a plugin's bad format string must not break logging
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        item = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        with self._lock:
            buf = self._buffers.get(name)
            if buf is None:
                buf = self._buffers[name] = collections.deque(maxlen=self.size)
            buf.append(item)

    def records(
        self, name: str, since: float | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._buffers.get(name, ()))
        if since is not None:
            items = [r for r in items if r["time"] > since]
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return items

    def forget(self, name: str) -> None:
        with self._lock:
            self._buffers.pop(name, None)

    def install(self) -> None:
        logger = logging.getLogger(PLUGIN_LOGGER)
        logger.addHandler(self)
        # Plugins log at DEBUG too: keep those in the buffer even when the
        # service logs at INFO (the handler, not the logger, filters output).
        if logger.level == logging.NOTSET or logger.level > logging.DEBUG:
            logger.setLevel(logging.DEBUG)
            for h in logging.getLogger().handlers:
                if h.level == logging.NOTSET:
                    h.setLevel(logging.getLogger().level)

    def uninstall(self) -> None:
        logging.getLogger(PLUGIN_LOGGER).removeHandler(self)
