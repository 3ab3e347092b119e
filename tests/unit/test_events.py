"""The event bus behind GET /api/v1/events and the per-plugin log buffers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from iocmng.service import events
from iocmng.service.events import EventBus, PluginLogs


async def test_subscribed_at_once_even_before_iterating() -> None:
    """subscribe() registers synchronously: an event published before the first
    ``anext`` is delivered (the SSE route sends its opening comment in between)."""
    bus = EventBus()
    sub = bus.subscribe()
    assert bus.subscribers == 1
    bus.publish({"type": "state", "plugin": "a"})
    assert (await anext(sub))["plugin"] == "a"
    await sub.aclose()
    assert bus.subscribers == 0


async def test_aclose_without_iterating_releases() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    await sub.aclose()
    assert bus.subscribers == 0
    with pytest.raises(StopAsyncIteration):
        await anext(sub)


async def test_close_ends_every_stream() -> None:
    bus = EventBus()
    subs = [bus.subscribe() for _ in range(3)]
    bus.publish({"type": "reload"})
    bus.close()
    for sub in subs:
        assert [e["type"] async for e in sub] == ["reload"]
    assert bus.subscribers == 0
    late = bus.subscribe()  # after close: ends at once
    assert [e async for e in late] == []
    assert bus.subscribers == 0


async def test_slow_client_loses_oldest_and_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "QUEUE_SIZE", 3)
    bus = EventBus()
    sub = bus.subscribe()
    for i in range(5):
        bus.publish({"type": "job", "n": i})
    got = [await asyncio.wait_for(anext(sub), 1) for _ in range(4)]
    assert got[0]["type"] == "dropped" and got[0]["count"] == 2
    assert [e["n"] for e in got[1:]] == [2, 3, 4]
    await sub.aclose()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """install() adjusts process-wide logger/handler levels: put them back."""
    plugin = logging.getLogger("iocmng.plugin")
    level = plugin.level
    handlers = {h: h.level for h in logging.getLogger().handlers}
    yield
    plugin.setLevel(level)
    for h, lvl in handlers.items():
        h.setLevel(lvl)


def test_plugin_logs_since_limit_forget(restore_logging: None) -> None:
    logs = PluginLogs(size=5)
    logs.install()
    try:
        logger = logging.getLogger("iocmng.plugin.demo")
        for i in range(8):
            logger.debug("line %d", i)
        logging.getLogger("iocmng.plugin.demo.sub").info("from a child logger")
        logging.getLogger("iocmng.plugin").info("not a plugin's")
    finally:
        logs.uninstall()
    records = logs.records("demo")
    assert len(records) == 5  # bounded: the newest kept
    assert [r["message"] for r in records[:4]] == ["line 4", "line 5", "line 6", "line 7"]
    assert records[4]["logger"] == "iocmng.plugin.demo.sub"
    assert logs.records("demo", limit=2) == records[-2:]
    assert logs.records("demo", limit=0) == []
    assert logs.records("demo", since=records[2]["time"]) == [
        r for r in records if r["time"] > records[2]["time"]
    ]
    assert logs.records("nosuch") == []
    logs.forget("demo")
    assert logs.records("demo") == []
