"""Typed application keys of the REST app (aiohttp ``AppKey``)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .protocol import ServiceAPI

#: The service generation this app serves (what the handlers use of it: :class:`ServiceAPI`).
SERVICE = web.AppKey[ServiceAPI]("service")
API_TOKEN = web.AppKey[str | None]("api_token")
READ_AUTH = web.AppKey("read_auth", bool)
MAX_BODY = web.AppKey("max_body", int)
#: IOCMNG_CORS_ORIGINS as a tuple (empty: no CORS; ("*",): any origin).
CORS_ORIGINS = web.AppKey("cors_origins", tuple)
#: Host header names accepted (empty: any); IP literals always are (iocmng.api.cors.host_policy).
ALLOWED_HOSTS = web.AppKey("allowed_hosts", tuple)
#: Set while no request is being handled (the reload waits for it).
IDLE = web.AppKey("idle", asyncio.Event)
ACTIVE = web.AppKey("active", list)
