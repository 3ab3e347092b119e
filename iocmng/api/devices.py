"""``GET /api/v1/devices``: the ophyd devices of SPEC §9 and their states."""

from __future__ import annotations

from aiohttp import web

from .keys import SERVICE
from .routes import reply

routes = web.RouteTableDef()


@routes.get("/api/v1/devices")
async def list_devices(request: web.Request) -> web.Response:
    """Every configured device with its IOC, group, type, PV prefix and state
    (``pending``, ``ok``, ``disconnected``, ``failed`` with a reason, ``disabled``)."""
    return reply(request.app[SERVICE].devices.listing())
