"""The REST PV gateway: read, write and monitor any CA or PVA PV over HTTP.

* ``GET /api/v1/pvs/{pv}`` reads (``?provider=ca|pva``, ``?timeout=``);
* ``PUT /api/v1/pvs/{pv}`` writes ``{value, provider?, timeout?}`` (the
  token when IOCMNG_API_TOKEN is set; the name must match
  IOCMNG_PV_WRITE_PATTERN, else 403);
* ``GET /api/v1/pvs/{pv}/monitor`` streams updates as Server-Sent Events.

The reference iocmng's routes are accepted too (:mod:`iocmng.api.gateway.reference`);
:func:`iocmng.api.gateway.install` adds both to the app. See docs/rest.md, "PV gateway".
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
from collections.abc import Callable
from typing import Any, Literal, get_args

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from iocmng.epics.pvclient import CAClient, PVAClient, PVForbidden, PVNotFound
from iocmng.errors import BadRequest, Conflict

from ...service.events import put_drop_oldest
from ..http import reply, service, sse_frame, stream_sse
from ..problems import json_body

log = logging.getLogger("iocmng.api.pvs")
pv_routes = web.RouteTableDef()
#: Printable ASCII without space, "/", "{" and "}" (EPICS names are ASCII; the path cannot hold "/").
PV_NAME_RE = re.compile(r"^[!-.0-z|~]{1,200}$")
#: The PV access protocols the gateway speaks (``provider`` in requests).
Provider = Literal["ca", "pva"]
PROVIDERS: tuple[str, ...] = get_args(Provider)
#: Updates held for a slow monitor client (it loses the oldest beyond that).
QUEUE_SIZE = 100


class PutPV(BaseModel):
    """Body of ``PUT /api/v1/pvs/{pv}``."""

    # A plugin's own PV over ``PUT /api/v1/{coll}/{name}/pvs/{pv}`` takes iocmng.api.ui.PutPluginPV:
    # another model, so another schema name in the OpenAPI document.

    model_config = ConfigDict(extra="forbid")

    value: Any = Field(
        ..., description="Value to write: number, string, list (arrays), enum index or choice"
    )
    provider: Provider | None = Field(None, description="ca or pva (default IOCMNG_PV_PROVIDER)")
    timeout: float | None = Field(None, gt=0, description="Seconds (at most IOCMNG_PV_MAX_TIMEOUT)")


class Gateway:
    """The clients, the server-side monitors of the reference routes, and the limits."""

    def __init__(self, settings: Any, prefix: str, runtime: Any = None) -> None:
        self.runtime = runtime  # this service's plugins: which of its own records are writable
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

    def own_record(self, record: str) -> tuple[str, bool, list[str]] | None:
        """(plugin, writable, its writable PVs) if ``record`` is one of this service's, else None."""
        for h in list(getattr(self.runtime, "handles", {}).values()):
            recs = h.records
            if recs is not None and record.startswith(recs.prefix + ":"):
                short = record[len(recs.prefix) + 1 :]
                if short in recs.records:
                    return h.name, short in recs.writable, sorted(recs.writable)
        return None

    def check_write(self, name: str) -> None:
        """IOCMNG_PV_WRITE_PATTERN, then: a record's value only (a field such as .DISP or .SCAN
        only if a pattern names fields), and of this service's records only the writable ones."""
        record, dot, fld = name.partition(".")
        if (
            dot
            and fld.upper() != "VAL"
            and not any("." in p and fnmatch.fnmatchcase(name, p) for p in self.write_patterns)
        ):
            raise PVForbidden(
                f"writing the field {fld!r} of {record!r} is refused: the gateway writes record values "
                f"(VAL); to allow a field, name it in IOCMNG_PV_WRITE_PATTERN (e.g. '{record}.{fld}')",
                pv=name,
                setting="IOCMNG_PV_WRITE_PATTERN",
            )
        own = self.own_record(record)
        if own is not None and not own[1]:
            plugin, _, writable = own
            raise PVForbidden(
                f"{record} is read-only: an output of plugin {plugin!r} or a PV iocmng manages; its writable "
                f"PVs: {', '.join(writable) or '(none)'}",
                pv=name,
            )
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


def _query_provider(request: web.Request) -> str | None:
    provider = request.query.get("provider")
    if provider is not None and provider not in PROVIDERS:
        raise BadRequest(f"provider: {provider[:20]!r} is not one of ca, pva", field="provider")
    return provider


@pv_routes.get("/api/v1/pvs/{pv}")
async def read_pv(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    name = pv_name(request.match_info["pv"])
    client = gw.client(_query_provider(request))
    timeout = gw.timeout(_query_float(request, "timeout"))
    return reply(await client.read(name, timeout))


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
    return reply({"ok": True, "name": name, "provider": client.provider, "value": written})


async def first_value(
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


def _pusher(queue: asyncio.Queue[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def push(event: dict[str, Any]) -> None:
        put_drop_oldest(queue, event)  # a slow client loses the oldest update, never memory

    return push


def _frame(event: dict[str, Any]) -> bytes:
    """``event: value|disconnected``; ``data`` is the PV document (its ``type`` is the PV's)."""
    return sse_frame("value" if event.get("connected", True) else "disconnected", event)


@pv_routes.get("/api/v1/pvs/{pv}/monitor")
async def monitor_pv(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``event: value`` per update, ``event: disconnected`` when the server goes away."""
    gw = request.app[GATEWAY]
    svc = service(request)
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
        close, first = await first_value(client, name, timeout, _pusher(queue), queue)
        try:
            # ends when the service stops or reloads (its event bus closes)
            return await stream_sse(
                request, _frame(first), queue.get, _frame, ended=lambda: svc.events.closed
            )
        finally:
            close()
    finally:
        gw.streams -= 1
