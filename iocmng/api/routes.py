"""The plugin routes of the REST API (under ``/api/v1``): health, apply, list, add, get, remove,
restart, run, trigger, logs, the event stream and the metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from ..errors import BadRequest, Conflict
from ..service.validation import Request
from .http import COLLECTION, collection_kind, path_name, reply, service, sse_frame, stream_sse
from .models import AddPlugin, Restart, RunJob
from .problems import json_body

routes = web.RouteTableDef()


@routes.get("/api/v1/health")
async def health(request: web.Request) -> web.Response:
    return reply(service(request).health())


@routes.post("/api/v1/apply")
async def apply(request: web.Request) -> web.Response:
    """Reload now for the pending changes (IOCMNG_APPLY=manual holds them until this)."""
    out = service(request).apply()
    return reply(out, status=202 if out["reload_pending"] else 200)


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
    req = Request(
        name=body.name,
        git_url=body.git_url,
        local_path=body.local_path,
        pat=body.pat,
        branch=body.branch,
        path=body.path,
        parameters=body.parameters,
        expect_kind=kind,
        auto_start=body.auto_start,
        auto_start_on_boot=body.auto_start_on_boot,
        autostart_order=body.autostart_order,
    )
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

            raise InvalidRequest(
                f"pat: {name!r} comes from a local directory; there is nothing to fetch",
                field="pat",
            )
        check_git_url(entry.source.url or "", body.pat)  # a token goes over https only
    return reply(await svc.restart(name, body.parameters, body.pat))


@routes.post("/api/v1/{collection:jobs|plugins}/{name}/run")
async def run_job(request: web.Request) -> web.Response:
    """Run a job once. ``/plugins/{name}/run`` (iocmng 2.7.9) answers 400 for a task."""
    name = path_name(request)
    svc = service(request)
    if collection_kind(request) is None:
        if svc.get_kind(name, None).kind != "job":
            raise BadRequest(
                f"{name!r} is a task, not a job; a triggered task runs with "
                f"POST /api/v1/tasks/{name}/trigger",
                field="name",
            )
    else:
        svc.get_kind(name, "job")
    body: RunJob = await json_body(request, RunJob, optional=True)
    if name not in svc.runtime.handles:
        raise Conflict(
            f"job {name!r} is waiting for the reload to generation {svc.registry.state.generation}"
        )
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
    message = (
        f"task {name!r} ran one cycle"
        if out["success"]
        else f"task {name!r}: the cycle failed: {out['error']}"
    )
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
        raise BadRequest(
            f"{key}: {raw!r} is not a {'number' if kind is float else 'whole number'}", field=key
        ) from None
    if kind is float and value != value:  # NaN
        raise BadRequest(f"{key}: must be a number", field=key)
    return value


@routes.get("/api/v1/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: state changes, errors, job results, reloads."""
    svc = service(request)
    # Subscribed before the first byte is sent: a client that has read the
    # opening comment misses no event published after it.
    stream = svc.events.subscribe()
    try:
        return await stream_sse(
            request,
            f": iocmng generation {svc.generation}\n\n".encode(),
            stream.__anext__,
            lambda event: sse_frame(event.get("type", "message"), event),
        )
    finally:
        await stream.aclose()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    from ..service.metrics import CONTENT_TYPE, render

    body = render(service(request).metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
