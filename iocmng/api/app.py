"""The aiohttp application factory."""

from __future__ import annotations

import asyncio

from aiohttp import web

from . import cors
from .devices import routes as device_routes
from .gateway import install as install_pv_gateway
from .keys import ACTIVE, ALLOWED_HOSTS, API_TOKEN, CORS_ORIGINS, IDLE, MAX_BODY, READ_AUTH, SERVICE
from .openapi import routes as openapi_routes
from .problems import Handler, auth, problems
from .protocol import ServiceAPI
from .routes import routes
from .startup import routes as startup_routes
from .ui import ui_routes


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    active = app[ACTIVE]
    active[0] += 1
    app[IDLE].clear()
    try:
        return await handler(request)
    finally:
        active[0] -= 1
        if active[0] == 0:
            app[IDLE].set()


def create_app(service: ServiceAPI) -> web.Application:
    """The REST app for one service generation (problem+json errors, auth, body limit)."""
    max_body = service.settings.max_body
    app = web.Application(
        middlewares=[count_requests, problems, cors.hosts, cors.preflight, cors.guard, auth],
        client_max_size=max_body,
    )
    app[IDLE] = asyncio.Event()
    app[IDLE].set()
    app[ACTIVE] = [0]
    app[SERVICE] = service
    app[API_TOKEN] = service.settings.api_token
    app[READ_AUTH] = service.settings.read_auth
    app[MAX_BODY] = max_body
    app[CORS_ORIGINS] = service.settings.cors_origin_list
    app[ALLOWED_HOSTS] = cors.host_policy(service.settings)

    async def connection_close(request: web.Request, response: web.StreamResponse) -> None:
        # While a reload is pending, ask clients to reconnect: their next
        # request then waits in the listening socket for the new generation
        # instead of racing the old one's shutdown on a kept-alive connection.
        if service.reload_pending:
            response.headers["Connection"] = "close"

    app.on_response_prepare.append(connection_close)
    app.on_response_prepare.append(cors.on_prepare)
    app.add_routes(routes)
    app.add_routes(openapi_routes)
    app.add_routes(ui_routes)
    app.add_routes(device_routes)
    install_pv_gateway(app, service)  # the REST PV gateway (iocmng.api.gateway)
    app.add_routes(startup_routes)
    return app
