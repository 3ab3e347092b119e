"""The HTTP helpers every route module shares, each in one place.

* :func:`reply`: a JSON answer;
* :func:`service`: the service generation the app serves (typed, :class:`ServiceAPI`);
* :data:`COLLECTION`, :func:`path_name`, :func:`collection_kind`: the
  ``/api/v1/{tasks|jobs|plugins}/{name}`` path parameters;
* :func:`stream_sse`, :func:`sse_frame`: a Server-Sent Events stream (the
  event stream and the PV monitors), with keep-alives and the end of a
  client noticed within a second;
* :func:`bearer_ok`: the one check of ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from ..errors import BadRequest
from .keys import SERVICE
from .models import check_name
from .protocol import ServiceAPI

T = TypeVar("T")

#: The collections of plugins, and the kind each one holds (None: both).
KINDS: dict[str, str | None] = {"tasks": "task", "jobs": "job", "plugins": None}
COLLECTION = "/api/v1/{collection:tasks|jobs|plugins}"
#: Seconds between SSE keep-alive comments on an idle stream (proxies drop silent connections).
SSE_KEEPALIVE = 15.0
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def reply(data: Any, status: int = 200) -> web.Response:
    """``data`` as a JSON answer (anything JSON does not know is written as its ``str``)."""
    return web.Response(
        status=status, text=json.dumps(data, default=str), content_type="application/json"
    )


def service(request: web.Request) -> ServiceAPI:
    return request.app[SERVICE]


def path_name(request: web.Request) -> str:
    """The ``{name}`` path parameter, or 400 saying what a valid name looks like."""
    name = request.match_info["name"]
    try:
        return check_name(name)
    except ValueError as exc:
        raise BadRequest(f"name: {exc}", field="name") from None


def collection_kind(request: web.Request) -> str | None:
    return KINDS[request.match_info["collection"]]


def bearer_ok(request: web.Request, token: str) -> bool:
    """Whether the request says ``Authorization: Bearer <token>`` (the scheme in any case,
    RFC 9110 section 11.1). The comparison takes the same time whatever the given token."""
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        given = ""
    return hmac.compare_digest(given.strip().encode(), token.encode())


def sse_frame(kind: str, data: dict[str, Any]) -> bytes:
    """One SSE frame: ``event: <kind>`` and the JSON document as ``data``."""
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()


def _never() -> bool:
    return False


async def stream_sse(
    request: web.Request,
    opening: bytes,
    receive: Callable[[], Awaitable[T]],
    frame: Callable[[T], bytes],
    *,
    ended: Callable[[], bool] = _never,
) -> web.StreamResponse:
    """Answer with an SSE stream: ``opening``, then ``frame(item)`` for each item ``receive()``
    gives, until it raises StopAsyncIteration, ``ended()`` is true or the client goes away.

    ``receive`` is awaited under a one-second timeout, so it must survive being
    cancelled (a queue's ``get``, an iterator's ``__anext__``; not an async generator).
    """
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    try:
        await resp.write(opening)
        last_write = loop.time()
        while not ended():
            try:
                item = await asyncio.wait_for(receive(), 1.0)
            except TimeoutError:
                # aiohttp does not cancel a handler whose client went away:
                # notice it here, so an idle stream releases what it holds
                # within a second instead of at the next keep-alive.
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                if loop.time() - last_write >= SSE_KEEPALIVE:
                    await resp.write(b": keep-alive\n\n")
                    last_write = loop.time()
                continue
            except StopAsyncIteration:
                break
            await resp.write(frame(item))
            last_write = loop.time()
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away: nothing to report
    return resp
