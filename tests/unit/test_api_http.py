"""The shared HTTP helpers of iocmng.api.http, over a real aiohttp server where it matters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from iocmng.api import http
from iocmng.service.events import put_drop_oldest

TOKEN = "s3cret-token"


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, dict[str, Any]]]:
    """A real server: ``/auth`` says whether the bearer token matched, ``/sse`` streams a queue."""
    state: dict[str, Any] = {"queue": asyncio.Queue(), "ended": False, "done": asyncio.Event()}

    async def auth(request: web.Request) -> web.Response:
        return http.reply({"ok": http.bearer_ok(request, TOKEN)})

    async def sse(request: web.Request) -> web.StreamResponse:
        try:
            return await http.stream_sse(
                request,
                b": hello\n\n",
                state["queue"].get,
                lambda item: http.sse_frame("value", item),
                ended=lambda: state["ended"],
            )
        finally:
            state["done"].set()

    app = web.Application()
    app.router.add_get("/auth", auth)
    app.router.add_get("/sse", sse)
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv, state
    finally:
        await srv.close()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # the scheme is case-insensitive
        (f"  BEARER   {TOKEN}  ", True),
        (f"Basic {TOKEN}", False),
        (TOKEN, False),
        (f"Bearer {TOKEN}x", False),
        ("Bearer", False),
        (None, False),
    ],
)
async def test_bearer_ok(
    server: tuple[TestServer, dict[str, Any]], header: str | None, ok: bool
) -> None:
    srv, _ = server
    headers = {"Authorization": header} if header is not None else {}
    async with aiohttp.ClientSession() as s, s.get(srv.make_url("/auth"), headers=headers) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        assert await r.json() == {"ok": ok}


def test_put_drop_oldest() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue(2)
    assert [put_drop_oldest(queue, i) for i in range(4)] == [False, False, True, True]
    assert [queue.get_nowait(), queue.get_nowait()] == [2, 3]


def test_sse_frame() -> None:
    event = {"type": "enable", "plugin": "x", "enabled": False, "when": PurePosixPath("/x")}
    assert http.sse_frame("enable", event) == (
        b'event: enable\ndata: {"type": "enable", "plugin": "x", "enabled": false, "when": "/x"}\n\n'
    )


def test_reply() -> None:
    resp = http.reply(
        {"path": PurePosixPath("/data/x")}, status=201
    )  # what JSON does not know: its str
    assert resp.status == 201 and resp.content_type == "application/json"
    assert json.loads(resp.text or "") == {"path": "/data/x"}


async def test_stream_sse_frames_keepalive_and_end(
    server: tuple[TestServer, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, state = server
    monkeypatch.setattr(http, "SSE_KEEPALIVE", 0.5)
    async with aiohttp.ClientSession() as s, s.get(srv.make_url("/sse")) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        assert r.headers["Cache-Control"] == "no-cache" and r.headers["X-Accel-Buffering"] == "no"
        assert await r.content.readuntil(b"\n\n") == b": hello\n\n"
        state["queue"].put_nowait({"n": 1})
        assert await r.content.readuntil(b"\n\n") == b'event: value\ndata: {"n": 1}\n\n'
        # idle: a keep-alive comment within the (shortened) interval plus the 1 s poll
        async with asyncio.timeout(5):
            assert await r.content.readuntil(b"\n\n") == b": keep-alive\n\n"
        state["ended"] = True
        async with asyncio.timeout(5):
            rest = await r.content.read()  # the stream ends at the next poll (EOF)
        assert rest.replace(b": keep-alive\n\n", b"") == b""
    await asyncio.wait_for(state["done"].wait(), 5)


async def test_stream_sse_notices_a_client_gone(server: tuple[TestServer, dict[str, Any]]) -> None:
    srv, state = server
    async with aiohttp.ClientSession() as s:
        r = await s.get(srv.make_url("/sse"))
        assert await r.content.readuntil(b"\n\n") == b": hello\n\n"
        r.close()  # the client goes away while the stream is idle
    await asyncio.wait_for(state["done"].wait(), 5)  # released within a poll, not at a keep-alive
