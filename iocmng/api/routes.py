"""The REST routes of SPEC §6 (all under ``/api/v1``)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import BadRequest
from ..validation import Request
from .models import AddPlugin, Restart, RunJob, check_name
from .problems import json_body

routes = web.RouteTableDef()
KINDS = {"tasks": "task", "jobs": "job", "plugins": None}


def service(request: web.Request) -> Any:
    return request.app["service"]


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
    return reply(service(request).list(collection_kind(request)))


@routes.post(COLLECTION)
async def add_plugin(request: web.Request) -> web.Response:
    body: AddPlugin = await json_body(request, AddPlugin)
    kind = collection_kind(request)
    req = Request(name=body.name, git_url=body.git_url, local_path=body.local_path, pat=body.pat, branch=body.branch,
                  path=body.path, parameters=body.parameters, expect_kind=kind)
    if body.git_url:
        from ..sources import check_git_url

        req.git_url = check_git_url(body.git_url, body.pat)
    from ..sources import check_subpath

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
    return reply(await svc.restart(name, body.parameters))


@routes.post("/api/v1/jobs/{name}/run")
async def run_job(request: web.Request) -> web.Response:
    name = path_name(request)
    svc = service(request)
    svc.get_kind(name, "job")
    body: RunJob = await json_body(request, RunJob, optional=True)
    if name not in svc.runtime.handles:
        from ..errors import Conflict

        raise Conflict(f"job {name!r} is waiting for the reload to generation {svc.registry.state.generation}")
    return reply(await svc.runtime.run_job(name, body.parameters, body.timeout))


@routes.post("/api/v1/tasks/{name}/trigger")
async def trigger_task(request: web.Request) -> web.Response:
    name = path_name(request)
    svc = service(request)
    svc.get_kind(name, "task")
    return reply(await svc.runtime.trigger(name))


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    from .openapi import document

    return reply(document())
