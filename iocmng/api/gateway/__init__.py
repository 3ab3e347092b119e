"""The REST PV gateway: any CA or PVA PV over HTTP (:mod:`.pvs`), and the reference
iocmng's PV routes (:mod:`.reference`), both served by one :class:`~.pvs.Gateway`."""

from __future__ import annotations

from aiohttp import web

from ..protocol import ServiceAPI
from .pvs import GATEWAY, Gateway, pv_routes
from .reference import ref_routes


def install(app: web.Application, service: ServiceAPI) -> None:
    """Add the gateway's routes and state to the REST app."""
    gateway = Gateway(service.settings, service.prefix, service.runtime)
    app[GATEWAY] = gateway

    async def cleanup(app: web.Application) -> None:
        await gateway.close()

    app.on_cleanup.append(cleanup)
    app.add_routes(ref_routes)  # before {pv}: /pvs/provider and /pvs/monitors are not PV names
    app.add_routes(pv_routes)
