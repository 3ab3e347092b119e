"""What happened: the event stream (SSE) and each plugin's recent log records.

Events (state changes, errors, ENABLE, job results, adds, removals, reloads)
come from :meth:`iocmng.runtime.Runtime.emit` and the service. Each SSE
client gets a bounded queue: a slow client loses its oldest events (and is
told how many) rather than growing memory or slowing the loop.

Every record logged under ``iocmng.plugin.<name>`` (a plugin's
``self.logger``, and the runtime's messages about it) is kept in a bounded
per-plugin buffer served by ``GET /api/v1/plugins/{name}/logs``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

PLUGIN_LOGGER = "iocmng.plugin"
_END: dict[str, Any] = {"type": "end"}
QUEUE_SIZE = 1000


class EventBus:
    """Fan-out of events to SSE subscribers, each with a bounded queue."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.published = 0
        self.closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """End every subscription (shutdown/reload): each stream sees its end."""
        self.closed = True
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(_END)

    def publish(self, event: dict[str, Any]) -> None:
        self.published += 1
        for queue in self._subscribers:
            if queue.full():  # drop the oldest: a slow client must not hold memory
                queue.get_nowait()
                queue.dropped = getattr(queue, "dropped", 0) + 1  # type: ignore[attr-defined]
            queue.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        if self.closed:
            return
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            while True:
                event = await queue.get()
                if event is _END:
                    return
                dropped = getattr(queue, "dropped", 0)
                if dropped:
                    queue.dropped = 0  # type: ignore[attr-defined]
                    yield {"type": "dropped", "time": time.time(), "count": dropped}
                yield event
        finally:
            self._subscribers.discard(queue)


def sse_frame(event: dict[str, Any]) -> bytes:
    return f"event: {event.get('type', 'message')}\ndata: {json.dumps(event, default=str)}\n\n".encode()


class PluginLogs(logging.Handler):
    """Keeps the last ``size`` records of each plugin logger (thread-safe)."""

    def __init__(self, size: int = 500) -> None:
        super().__init__(level=logging.DEBUG)
        self.size = size
        self._buffers: dict[str, collections.deque[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name[len(PLUGIN_LOGGER) + 1:].split(".", 1)[0]
        if not name:
            return
        try:
            message = record.getMessage()
        except Exception:  # a plugin's bad format string must not break logging
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            message += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        item = {"time": record.created, "level": record.levelname, "logger": record.name, "message": message}
        with self._lock:
            buf = self._buffers.get(name)
            if buf is None:
                buf = self._buffers[name] = collections.deque(maxlen=self.size)
            buf.append(item)

    def records(self, name: str, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
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
