"""The aiohttp application factory."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .problems import auth, problems
from .routes import routes


def create_app(service: Any) -> web.Application:
    """The REST app for one service generation (problem+json errors, auth, body limit)."""
    max_body = service.settings.max_body
    app = web.Application(middlewares=[problems, auth], client_max_size=max_body)
    app["service"] = service
    app["api_token"] = service.settings.api_token
    app["read_auth"] = service.settings.read_auth
    app["max_body"] = max_body

    async def connection_close(request: web.Request, response: web.StreamResponse) -> None:
        # While a reload is pending, ask clients to reconnect: their next
        # request then waits in the listening socket for the new generation
        # instead of racing the old one's shutdown on a kept-alive connection.
        if service.reload_pending:
            response.headers["Connection"] = "close"

    app.on_response_prepare.append(connection_close)
    app.add_routes(routes)
    return app
