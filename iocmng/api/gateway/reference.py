"""The reference iocmng's PV routes, kept so existing scripts work (docs/rest.md, "Reference routes").

``POST /pvs/get``, ``/pvs/put``, ``/pvs/monitor``, ``DELETE /pvs/monitor/{key}``,
``GET /pvs/monitors``, ``GET /pvs/provider`` with the reference's field names,
served by the same :class:`~iocmng.api.gateway.pvs.Gateway`. Errors are problem+json
that also carry the reference's ``ok: false``, ``pv_name`` and ``error``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from iocmng.errors import Conflict, IocmngError, NotFound

from ..http import reply
from ..problems import json_body
from .pvs import GATEWAY, Provider, first_value

log = logging.getLogger("iocmng.api.pvs")
ref_routes = web.RouteTableDef()
#: A body's PV name: printable ASCII without spaces ("/" allowed, unlike the URL path's).
BODY_PV_NAME_RE = re.compile(r"^[!-~]{1,200}$")


class RefGet(BaseModel):
    """Body of the reference's ``POST /api/v1/pvs/get``."""

    pv_name: str = Field(
        ..., pattern=BODY_PV_NAME_RE.pattern, max_length=200, description="Full PV name"
    )
    timeout: float | None = Field(
        None, gt=0, description="Seconds (default IOCMNG_PV_TIMEOUT, at most IOCMNG_PV_MAX_TIMEOUT)"
    )
    provider: Provider | None = Field(None, description="ca or pva (default IOCMNG_PV_PROVIDER)")


class RefPut(RefGet):
    """Body of the reference's ``POST /api/v1/pvs/put``."""

    value: Any = Field(..., description="Value to write")


class RefMonitor(BaseModel):
    """Body of the reference's ``POST /api/v1/pvs/monitor``."""

    pv_name: str = Field(
        ..., pattern=BODY_PV_NAME_RE.pattern, max_length=200, description="Full PV name"
    )
    name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Key of the subscription (defaults to pv_name)",
    )
    provider: Provider | None = Field(None, description="ca or pva (default IOCMNG_PV_PROVIDER)")
    timeout: float | None = Field(
        None, gt=0, description="Seconds to wait for the first value (default IOCMNG_PV_TIMEOUT)"
    )


@ref_routes.get("/api/v1/pvs/provider")
async def ref_provider(request: web.Request) -> web.Response:
    return reply({"provider": request.app[GATEWAY].default_provider})


@ref_routes.get("/api/v1/pvs/monitors")
async def ref_monitors(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    mons = {k: m["pv_name"] for k, m in gw.monitors.items()}
    details = {
        k: {
            "pv_name": m["pv_name"],
            "provider": m["provider"],
            "last": m["last"],
            "updates": m["updates"],
        }
        for k, m in gw.monitors.items()
    }
    return reply(
        {"monitors": mons, "count": len(mons), "details": details, "limit": gw.max_monitors}
    )


# -- the reference's routes -------------------------------------------------------------------
def _ref_error(exc: IocmngError, pv: str) -> IocmngError:
    exc.extra.setdefault("ok", False)
    exc.extra.setdefault("pv_name", pv)
    exc.extra.setdefault("error", exc.detail)
    return exc


@ref_routes.post("/api/v1/pvs/get")
async def ref_get(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body: RefGet = await json_body(request, RefGet)
    try:
        name = body.pv_name
        result = await gw.client(body.provider).read(name, gw.timeout(body.timeout))
    except IocmngError as exc:
        raise _ref_error(exc, body.pv_name) from None
    return reply(
        {"ok": True, "pv_name": name, "value": result["value"], "error": None, "pv": result}
    )


@ref_routes.post("/api/v1/pvs/put")
async def ref_put(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body: RefPut = await json_body(request, RefPut)
    try:
        name = body.pv_name
        client = gw.client(body.provider)
        timeout = gw.timeout(body.timeout)
        gw.check_write(name)
        written = await client.write(name, body.value, timeout)
    except IocmngError as exc:
        raise _ref_error(exc, body.pv_name) from None
    log.info("gateway write %s (%s) = %r", name, client.provider, written)
    return reply({"ok": True, "pv_name": name, "error": None})


@ref_routes.post("/api/v1/pvs/monitor")
async def ref_monitor_start(request: web.Request) -> web.Response:
    """A server-side monitor under a key: its last value shows in ``GET /pvs/monitors``."""
    gw = request.app[GATEWAY]
    body: RefMonitor = await json_body(request, RefMonitor)
    name = body.pv_name
    key = body.name or name
    client = gw.client(body.provider)
    timeout = gw.timeout(body.timeout)
    if key not in gw.monitors and len(gw.monitors) >= gw.max_monitors:
        raise Conflict(
            f"{len(gw.monitors)} monitors are active, the limit (IOCMNG_PV_MAX_MONITORS); "
            "stop one with DELETE /api/v1/pvs/monitor/{key}",
            ok=False,
        )
    entry: dict[str, Any] = {
        "pv_name": name,
        "provider": client.provider,
        "last": None,
        "updates": 0,
    }
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(1)

    def push(event: dict[str, Any]) -> None:
        entry["last"] = event
        entry["updates"] += 1
        if queue.empty():
            queue.put_nowait(event)

    try:
        close, _ = await first_value(client, name, timeout, push, queue)
    except IocmngError as exc:
        raise _ref_error(exc, name) from None
    entry["close"] = close
    old = gw.monitors.pop(key, None)
    if old is not None:
        old["close"]()
    if len(gw.monitors) >= gw.max_monitors:  # filled while this one connected
        close()
        raise Conflict(
            f"{len(gw.monitors)} monitors are active, the limit (IOCMNG_PV_MAX_MONITORS)", ok=False
        )
    gw.monitors[key] = entry
    return reply({"ok": True, "key": key, "message": f"Monitoring {name}", "started": time.time()})


@ref_routes.delete("/api/v1/pvs/monitor/{key}")
async def ref_monitor_stop(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key = request.match_info["key"]
    entry = gw.monitors.pop(key, None)
    if entry is None:
        raise NotFound(f"No active monitor with key {key!r}", ok=False, key=key)
    entry["close"]()
    return reply({"ok": True, "key": key, "message": f"Stopped monitoring {key}"})
