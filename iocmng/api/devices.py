"""``GET /api/v1/devices``: the ophyd devices of the beamline's values.yaml (``IOCMNG_BEAMLINE_CONFIG``)
and their states."""

from __future__ import annotations

from aiohttp import web

from .http import reply, service

routes = web.RouteTableDef()


@routes.get("/api/v1/devices")
async def list_devices(request: web.Request) -> web.Response:
    """Every configured device with its IOC, group, type, PV prefix and state
    (``pending``, ``ok``, ``disconnected``, ``failed`` with a reason, ``disabled``),
    and iocmng 2.7.9's fields: ``available`` (every configured device name),
    ``created`` (the names of the devices built and connected) and their counts."""
    out = service(request).devices.listing()
    available = [d["name"] for d in out["devices"]]
    created = [d["name"] for d in out["devices"] if d["state"] == "ok"]
    out.update(
        available=available,
        available_count=len(available),
        created=created,
        created_count=len(created),
    )
    return reply(out)
