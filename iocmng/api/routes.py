"""The REST routes of SPEC §6 (all under ``/api/v1``)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from aiohttp import web

from ..errors import BadRequest, Conflict
from ..service.validation import Request
from .keys import SERVICE
from .models import AddPlugin, Restart, RunJob, check_name
from .problems import json_body

routes = web.RouteTableDef()
KINDS = {"tasks": "task", "jobs": "job", "plugins": None}
#: Seconds between SSE keep-alive comments on an idle stream (proxies drop silent connections).
SSE_KEEPALIVE = 15.0


def service(request: web.Request) -> Any:
    return request.app[SERVICE]


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, default=str), content_type="application/json")


def path_name(request: web.Request) -> str:
    name = request.match_info["name"]
    try:
        return check_name(name)
    except ValueError as exc:
        raise BadRequest(f"name: {exc}", field="name") from None


def collection_kind(request: web.Request) -> str | None:
    return KINDS[request.match_info["collection"]]


COLLECTION = "/api/v1/{collection:tasks|jobs|plugins}"


@routes.get("/api/v1/health")
async def health(request: web.Request) -> web.Response:
    return reply(service(request).health())


@routes.get(COLLECTION)
async def list_plugins(request: web.Request) -> web.Response:
    """``{"plugins": [...], "count": N}``; ``?type=task|job`` filters (as iocmng 2.7.9)."""
    kind = collection_kind(request)
    wanted = request.query.get("type")
    if wanted:
        if wanted not in ("task", "job"):
            raise BadRequest(f"type: {wanted[:20]!r} is not one of task, job", field="type")
        if kind is not None and kind != wanted:
            return reply({"plugins": [], "count": 0})
        kind = wanted
    body = await service(request).list_json(kind)
    return web.Response(body=body, content_type="application/json")


@routes.post(COLLECTION)
async def add_plugin(request: web.Request) -> web.Response:
    body: AddPlugin = await json_body(request, AddPlugin)
    kind = collection_kind(request)
    req = Request(name=body.name, git_url=body.git_url, local_path=body.local_path, pat=body.pat, branch=body.branch,
                  path=body.path, parameters=body.parameters, expect_kind=kind, auto_start=body.auto_start,
                  auto_start_on_boot=body.auto_start_on_boot, autostart_order=body.autostart_order)
    if body.git_url:
        from ..service.sources import check_git_url

        req.git_url = check_git_url(body.git_url, body.pat)
    from ..service.sources import check_subpath

    check_subpath(body.path)
    return reply(await service(request).add(req), status=201)


@routes.get(COLLECTION + "/{name}")
async def get_plugin(request: web.Request) -> web.Response:
    name = path_name(request)
    svc = service(request)
    svc.get_kind(name, collection_kind(request))
    return reply(svc.info(name))


@routes.delete(COLLECTION + "/{name}")
async def delete_plugin(request: web.Request) -> web.Response:
    return reply(await service(request).remove(path_name(request), collection_kind(request)))


@routes.post(COLLECTION + "/{name}/restart")
async def restart_plugin(request: web.Request) -> web.Response:
    name = path_name(request)
    svc = service(request)
    svc.get_kind(name, collection_kind(request))
    body: Restart = await json_body(request, Restart, optional=True)
    entry = svc.get_kind(name, None)
    if body.pat:
        from ..service.sources import check_git_url

        if entry.source.type != "git":
            from ..errors import InvalidRequest

            raise InvalidRequest(f"pat: {name!r} comes from a local directory; there is nothing to fetch", field="pat")
        check_git_url(entry.source.url or "", body.pat)  # a token goes over https only
    return reply(await svc.restart(name, body.parameters, body.pat))


@routes.post("/api/v1/{collection:jobs|plugins}/{name}/run")
async def run_job(request: web.Request) -> web.Response:
    """Run a job once. ``/plugins/{name}/run`` (iocmng 2.7.9) answers 400 for a task."""
    name = path_name(request)
    svc = service(request)
    if collection_kind(request) is None:
        if svc.get_kind(name, None).kind != "job":
            raise BadRequest(f"{name!r} is a task, not a job; a triggered task runs with "
                             f"POST /api/v1/tasks/{name}/trigger", field="name")
    else:
        svc.get_kind(name, "job")
    body: RunJob = await json_body(request, RunJob, optional=True)
    if name not in svc.runtime.handles:
        raise Conflict(f"job {name!r} is waiting for the reload to generation {svc.registry.state.generation}")
    out = await svc.runtime.run_job(name, body.parameters, body.timeout)
    # iocmng 2.7.9's answer is {ok: the job's success, result: the JobResult}; this
    # service's (the JobResult's success/data/message, job, timing) stays beside
    # it: `message` is the job's own, and `job` names the plugin (decision 0011).
    result = {k: out[k] for k in ("success", "data", "message")}
    # 2.7.9's JobResult also said when it finished (local ISO 8601, as its datetime.now().isoformat())
    result["timestamp"] = datetime.fromtimestamp(out["started_at"] + out["duration_s"]).isoformat()
    return reply({**out, "ok": out["success"], "result": result})


@routes.post("/api/v1/tasks/{name}/trigger")
async def trigger_task(request: web.Request) -> web.Response:
    name = path_name(request)
    svc = service(request)
    svc.get_kind(name, "task")
    out = await svc.runtime.trigger(name)
    # ok follows the cycle, as a job run's follows the job (docs/decisions/0011)
    message = f"task {name!r} ran one cycle" if out["success"] else f"task {name!r}: the cycle failed: {out['error']}"
    return reply({"ok": out["success"], "message": message, **out})


@routes.get(COLLECTION + "/{name}/logs")
async def plugin_logs(request: web.Request) -> web.Response:
    """Recent log records of one plugin (``since``: unix time, ``limit``: count)."""
    name = path_name(request)
    svc = service(request)
    svc.get_kind(name, collection_kind(request))
    since = _number(request, "since", float)
    limit = _number(request, "limit", int)
    if limit is not None and not 0 <= limit <= 10000:
        raise BadRequest("limit: must be between 0 and 10000", field="limit")
    return reply({"plugin": name, "records": svc.logs.records(name, since, limit)})


def _number(request: web.Request, key: str, kind: type) -> Any:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise BadRequest(f"{key}: {raw!r} is not a {'number' if kind is float else 'whole number'}", field=key) from None
    if kind is float and value != value:  # NaN
        raise BadRequest(f"{key}: must be a number", field=key)
    return value


@routes.get("/api/v1/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: state changes, errors, job results, reloads."""
    from ..service.events import sse_frame

    svc = service(request)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    # Subscribed before the first byte is sent: a client that has read the
    # opening comment misses no event published after it.
    stream = svc.events.subscribe()
    try:
        await resp.write(f": iocmng generation {svc.generation}\n\n".encode())
        last_write = loop.time()
        while True:
            try:
                event = await asyncio.wait_for(anext(stream), 1.0)
            except TimeoutError:
                # aiohttp does not cancel a handler whose client went away:
                # notice it here, so an idle stream releases its subscription
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
            await resp.write(sse_frame(event))
            last_write = loop.time()
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away: nothing to report
    finally:
        await stream.aclose()
    return resp


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    from ..service.metrics import CONTENT_TYPE, render

    body = render(service(request).metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/api/v1/docs")
async def api_page(request: web.Request) -> web.Response:
    """The interactive API page (self-contained: works on an air-gapped network)."""
    from importlib.resources import files

    html = files("iocmng.api").joinpath("docs.html").read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html")


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    from .openapi import document

    return reply(document())
