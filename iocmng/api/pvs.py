"""The REST PV gateway: read, write and monitor any CA or PVA PV over HTTP.

* ``GET /api/v1/pvs/{pv}`` reads (``?provider=ca|pva``, ``?timeout=``);
* ``PUT /api/v1/pvs/{pv}`` writes ``{value, provider?, timeout?}`` (the
  token when IOCMNG_API_TOKEN is set; the name must match
  IOCMNG_PV_WRITE_PATTERN, else 403);
* ``GET /api/v1/pvs/{pv}/monitor`` streams updates as Server-Sent Events.

The reference iocmng's routes are accepted too (``POST /pvs/get``,
``/pvs/put``, ``/pvs/monitor``, ``DELETE /pvs/monitor/{key}``,
``GET /pvs/monitors``, ``GET /pvs/provider``) with its body field names; their
errors are problem+json that also carry the reference's ``ok``/``error``.
See docs/rest.md, "PV gateway".
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ..errors import BadRequest, Conflict, IocmngError, NotFound
from ..pvclient import CAClient, PVAClient, PVForbidden, PVNotFound
from .keys import SERVICE
from .problems import json_body

log = logging.getLogger("iocmng.api.pvs")
pv_routes = web.RouteTableDef()
#: Printable ASCII without space, "/", "{" and "}" (EPICS names are ASCII; the path cannot hold "/").
PV_NAME_RE = re.compile(r"^[!-.0-z|~]{1,200}$")
SSE_KEEPALIVE = 15.0
QUEUE_SIZE = 100


class PutPV(BaseModel):
    """Body of ``PUT /api/v1/pvs/{pv}``."""

    model_config = ConfigDict(extra="forbid")

    value: Any = Field(
        ..., description="Value to write: number, string, list (arrays), enum index or choice"
    )
    provider: Literal["ca", "pva"] | None = Field(
        None, description="ca or pva (default IOCMNG_PV_PROVIDER)"
    )
    timeout: float | None = Field(None, gt=0, description="Seconds (at most IOCMNG_PV_MAX_TIMEOUT)")


class RefGet(BaseModel):
    """Body of the reference's ``POST /api/v1/pvs/get``."""

    pv_name: str = Field(
        ..., pattern=PV_NAME_RE.pattern, max_length=200, description="Full PV name"
    )
    timeout: float | None = Field(
        None, gt=0, description="Seconds (default IOCMNG_PV_TIMEOUT, at most IOCMNG_PV_MAX_TIMEOUT)"
    )
    provider: Literal["ca", "pva"] | None = Field(
        None, description="ca or pva (default IOCMNG_PV_PROVIDER)"
    )


class RefPut(RefGet):
    """Body of the reference's ``POST /api/v1/pvs/put``."""

    value: Any = Field(..., description="Value to write")


class RefMonitor(BaseModel):
    """Body of the reference's ``POST /api/v1/pvs/monitor``."""

    pv_name: str = Field(
        ..., pattern=PV_NAME_RE.pattern, max_length=200, description="Full PV name"
    )
    name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Key of the subscription (defaults to pv_name)",
    )
    provider: Literal["ca", "pva"] | None = Field(
        None, description="ca or pva (default IOCMNG_PV_PROVIDER)"
    )
    timeout: float | None = Field(
        None, gt=0, description="Seconds to wait for the first value (default IOCMNG_PV_TIMEOUT)"
    )


class Gateway:
    """The clients, the server-side monitors of the reference routes, and the limits."""

    def __init__(self, settings: Any, prefix: str) -> None:
        self.default_provider: str = getattr(settings, "pv_provider", "ca")
        self.default_timeout: float = getattr(settings, "pv_timeout", 5.0)
        self.max_timeout: float = getattr(settings, "pv_max_timeout", 30.0)
        self.max_monitors: int = getattr(settings, "pv_max_monitors", 100)
        pattern = getattr(settings, "pv_write_pattern", None)
        self.write_patterns = (
            [p for p in re.split(r"[\s,]+", pattern) if p]
            if pattern is not None
            else [f"{prefix}:*"]
        )
        self.clients: dict[str, Any] = {"ca": CAClient(), "pva": PVAClient()}
        self.monitors: dict[str, dict[str, Any]] = {}
        self.streams = 0

    def client(self, provider: str | None) -> Any:
        provider = provider or self.default_provider
        if provider not in self.clients:
            raise BadRequest(f"provider: {provider!r} is not one of ca, pva", field="provider")
        return self.clients[provider]

    def timeout(self, value: float | None) -> float:
        if value is None:
            return min(self.default_timeout, self.max_timeout)
        if not value > 0 or value != value:
            raise BadRequest("timeout: must be a number of seconds above 0", field="timeout")
        if value > self.max_timeout:
            raise BadRequest(
                f"timeout: {value:g} s is above the maximum of {self.max_timeout:g} s "
                "(IOCMNG_PV_MAX_TIMEOUT)",
                field="timeout",
                maximum=self.max_timeout,
            )
        return value

    def check_write(self, name: str) -> None:
        if not any(fnmatch.fnmatchcase(name, p) for p in self.write_patterns):
            shown = " ".join(self.write_patterns) or "(none: writes disabled)"
            raise PVForbidden(
                f"writing {name!r} is not allowed: the name matches none of IOCMNG_PV_WRITE_PATTERN "
                f"({shown})",
                pv=name,
                setting="IOCMNG_PV_WRITE_PATTERN",
            )

    async def close(self) -> None:
        for mon in list(self.monitors.values()):
            mon["close"]()
        self.monitors.clear()
        self.clients["pva"].close()


GATEWAY = web.AppKey("pv_gateway", Gateway)


def install(app: web.Application, service: Any) -> None:
    """Add the gateway's routes and state to the REST app."""
    gateway = Gateway(service.settings, service.prefix)
    app[GATEWAY] = gateway

    async def cleanup(app: web.Application) -> None:
        await gateway.close()

    app.on_cleanup.append(cleanup)
    app.add_routes(pv_routes)


def pv_name(raw: str, field: str = "pv") -> str:
    if not PV_NAME_RE.match(raw):
        raise BadRequest(
            f"{field}: {raw[:60]!r} is not a PV name (1-200 printable ASCII characters, no spaces, '/', '{{' or '}}')",
            field=field,
        )
    return raw


def _query_float(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"{key}: {raw!r} is not a number", field=key) from None


def _reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, default=str), content_type="application/json"
    )


def _query_provider(request: web.Request) -> str | None:
    provider = request.query.get("provider")
    if provider is not None and provider not in ("ca", "pva"):
        raise BadRequest(f"provider: {provider[:20]!r} is not one of ca, pva", field="provider")
    return provider


@pv_routes.get("/api/v1/pvs/provider")
async def ref_provider(request: web.Request) -> web.Response:
    return _reply({"provider": request.app[GATEWAY].default_provider})


@pv_routes.get("/api/v1/pvs/monitors")
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
    return _reply(
        {"monitors": mons, "count": len(mons), "details": details, "limit": gw.max_monitors}
    )


@pv_routes.get("/api/v1/pvs/{pv}")
async def read_pv(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    name = pv_name(request.match_info["pv"])
    client = gw.client(_query_provider(request))
    timeout = gw.timeout(_query_float(request, "timeout"))
    return _reply(await client.read(name, timeout))


@pv_routes.put("/api/v1/pvs/{pv}")
async def write_pv(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    name = pv_name(request.match_info["pv"])
    body: PutPV = await json_body(request, PutPV)
    client = gw.client(body.provider)
    timeout = gw.timeout(body.timeout)
    gw.check_write(name)
    written = await client.write(name, body.value, timeout)
    log.info("gateway write %s (%s) = %r", name, client.provider, written)
    return _reply({"ok": True, "name": name, "provider": client.provider, "value": written})


async def _first_value(
    client: Any,
    name: str,
    timeout: float,
    push: Callable[[dict[str, Any]], None],
    queue: asyncio.Queue[dict[str, Any]],
) -> tuple[Callable[[], None], dict[str, Any]]:
    """Subscribe and wait for the first value (404 if none comes within ``timeout``)."""
    close = client.subscribe(name, push)
    try:
        async with asyncio.timeout(timeout):
            while True:
                first = await queue.get()
                if first.get("connected", True):
                    return close, first
    except TimeoutError:
        close()
        raise PVNotFound(
            f"no {client.provider.upper()} server sent a value of PV {name!r} within {timeout:g} s "
            "(unknown name, or its server is unreachable)",
            pv=name,
            provider=client.provider,
        ) from None
    except BaseException:
        close()
        raise


def sse_frame(kind: str, data: dict[str, Any]) -> bytes:
    """One SSE frame: ``event: value|disconnected``; ``data`` is the PV document (its ``type`` is the PV's)."""
    return f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n".encode()


def _pusher(queue: asyncio.Queue[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def push(event: dict[str, Any]) -> None:
        if queue.full():  # a slow client loses the oldest update, never memory
            queue.get_nowait()
        queue.put_nowait(event)

    return push


@pv_routes.get("/api/v1/pvs/{pv}/monitor")
async def monitor_pv(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``event: value`` per update, ``event: disconnected`` when the server goes away."""
    gw = request.app[GATEWAY]
    svc = request.app[SERVICE]
    name = pv_name(request.match_info["pv"])
    client = gw.client(_query_provider(request))
    timeout = gw.timeout(_query_float(request, "timeout"))
    if gw.streams >= gw.max_monitors:
        raise Conflict(
            f"{gw.streams} PV monitor streams are open, the limit (IOCMNG_PV_MAX_MONITORS)"
        )
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
    gw.streams += 1
    try:
        close, first = await _first_value(client, name, timeout, _pusher(queue), queue)
        try:
            return await _stream(request, svc, queue, first)
        finally:
            close()
    finally:
        gw.streams -= 1


async def _stream(
    request: web.Request, svc: Any, queue: asyncio.Queue[dict[str, Any]], first: dict[str, Any]
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    try:
        await resp.write(sse_frame("value", first))
        last_write = loop.time()
        while not svc.events.closed:  # the service is stopping or reloading: end the stream
            try:
                event = await asyncio.wait_for(queue.get(), 1.0)
            except TimeoutError:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                if loop.time() - last_write >= SSE_KEEPALIVE:
                    await resp.write(b": keep-alive\n\n")
                    last_write = loop.time()
                continue
            kind = "value" if event.get("connected", True) else "disconnected"
            await resp.write(sse_frame(kind, event))
            last_write = loop.time()
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    return resp


# -- the reference's routes -------------------------------------------------------------------
def _ref_error(exc: IocmngError, pv: str) -> IocmngError:
    exc.extra.setdefault("ok", False)
    exc.extra.setdefault("pv_name", pv)
    exc.extra.setdefault("error", exc.detail)
    return exc


@pv_routes.post("/api/v1/pvs/get")
async def ref_get(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body: RefGet = await json_body(request, RefGet)
    try:
        name = pv_name(body.pv_name, "pv_name")
        result = await gw.client(body.provider).read(name, gw.timeout(body.timeout))
    except IocmngError as exc:
        raise _ref_error(exc, body.pv_name) from None
    return _reply(
        {"ok": True, "pv_name": name, "value": result["value"], "error": None, "pv": result}
    )


@pv_routes.post("/api/v1/pvs/put")
async def ref_put(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body: RefPut = await json_body(request, RefPut)
    try:
        name = pv_name(body.pv_name, "pv_name")
        client = gw.client(body.provider)
        timeout = gw.timeout(body.timeout)
        gw.check_write(name)
        written = await client.write(name, body.value, timeout)
    except IocmngError as exc:
        raise _ref_error(exc, body.pv_name) from None
    log.info("gateway write %s (%s) = %r", name, client.provider, written)
    return _reply({"ok": True, "pv_name": name, "error": None})


@pv_routes.post("/api/v1/pvs/monitor")
async def ref_monitor_start(request: web.Request) -> web.Response:
    """A server-side monitor under a key: its last value shows in ``GET /pvs/monitors``."""
    gw = request.app[GATEWAY]
    body: RefMonitor = await json_body(request, RefMonitor)
    name = pv_name(body.pv_name, "pv_name")
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
        close, _ = await _first_value(client, name, timeout, push, queue)
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
    return _reply({"ok": True, "key": key, "message": f"Monitoring {name}", "started": time.time()})


@pv_routes.delete("/api/v1/pvs/monitor/{key}")
async def ref_monitor_stop(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    key = request.match_info["key"]
    entry = gw.monitors.pop(key, None)
    if entry is None:
        raise NotFound(f"No active monitor with key {key!r}", ok=False, key=key)
    entry["close"]()
    return _reply({"ok": True, "key": key, "message": f"Stopped monitoring {key}"})


# -- OpenAPI --------------------------------------------------------------------------------
def openapi_parts(json_: Callable[..., dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The gateway's paths and schemas for iocmng.api.openapi."""
    problem = {
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    }
    names = {
        400: "Bad request",
        401: "Unauthorized",
        403: "Write refused by IOCMNG_PV_WRITE_PATTERN",
        404: "No server answered for the PV (or no such monitor)",
        409: "Too many monitors",
        413: "Too large",
        504: "The PV is connected but did not answer in time",
    }

    def errors(*codes: int) -> dict[str, Any]:
        return {str(c): {"description": names[c], **problem} for c in codes}

    def body(model: str) -> dict[str, Any]:
        return {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
        }

    name = {
        "name": "pv",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": PV_NAME_RE.pattern, "maxLength": 200},
    }
    query = [
        {"name": "provider", "in": "query", "required": False, "schema": {"enum": ["ca", "pva"]}},
        {
            "name": "timeout",
            "in": "query",
            "required": False,
            "schema": {"type": "number", "exclusiveMinimum": 0},
        },
    ]
    value = {"$ref": "#/components/schemas/PVValue"}
    paths: dict[str, Any] = {
        "/api/v1/pvs/{pv}": {
            "parameters": [name],
            "get": {
                "operationId": "read_pv",
                "parameters": query,
                "responses": {"200": json_(value), **errors(400, 404, 504)},
            },
            "put": {
                "operationId": "write_pv",
                "requestBody": body("PutPV"),
                "responses": {
                    "200": json_({"type": "object"}),
                    **errors(400, 401, 403, 404, 413, 504),
                },
            },
        },
        "/api/v1/pvs/{pv}/monitor": {
            "parameters": [name],
            "get": {
                "operationId": "monitor_pv",
                "parameters": query,
                "responses": {
                    "200": {
                        "description": "Server-Sent Events (value, disconnected)",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **errors(400, 404, 409),
                },
            },
        },
        "/api/v1/pvs/provider": {
            "get": {
                "operationId": "pv_provider",
                "responses": {
                    "200": json_(
                        {
                            "type": "object",
                            "required": ["provider"],
                            "properties": {"provider": {"enum": ["ca", "pva"]}},
                        }
                    )
                },
            }
        },
        "/api/v1/pvs/monitors": {
            "get": {"operationId": "pv_monitors", "responses": {"200": json_({"type": "object"})}}
        },
        "/api/v1/pvs/get": {
            "post": {
                "operationId": "ref_pv_get",
                "requestBody": body("RefGet"),
                "responses": {"200": json_({"type": "object"}), **errors(400, 401, 404, 413, 504)},
            }
        },
        "/api/v1/pvs/put": {
            "post": {
                "operationId": "ref_pv_put",
                "requestBody": body("RefPut"),
                "responses": {
                    "200": json_({"type": "object"}),
                    **errors(400, 401, 403, 404, 413, 504),
                },
            }
        },
        "/api/v1/pvs/monitor": {
            "post": {
                "operationId": "ref_pv_monitor",
                "requestBody": body("RefMonitor"),
                "responses": {"200": json_({"type": "object"}), **errors(400, 401, 404, 409, 413)},
            }
        },
        "/api/v1/pvs/monitor/{key}": {
            "parameters": [
                {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "delete": {
                "operationId": "ref_pv_unmonitor",
                "responses": {"200": json_({"type": "object"}), **errors(401, 404)},
            },
        },
    }
    schemas: dict[str, Any] = {}
    for model in (PutPV, RefGet, RefPut, RefMonitor):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["PVValue"] = {
        "type": "object",
        "required": ["name", "provider", "value"],
        "properties": {
            "name": {"type": "string"},
            "provider": {"enum": ["ca", "pva"]},
            "type": {"type": "string"},
            "count": {"type": "integer"},
            "value": {},
            "choices": {"type": "array", "items": {"type": "string"}},
            "label": {"type": ["string", "null"]},
            "severity": {"type": "integer"},
            "severity_name": {"type": "string"},
            "status": {"type": "integer"},
            "message": {"type": "string"},
            "timestamp": {"type": "number"},
        },
    }
    return paths, schemas
