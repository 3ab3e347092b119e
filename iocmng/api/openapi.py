"""The OpenAPI 3.1 document, generated from the same pydantic models the routes use.

aiohttp-pydantic would require rewriting the routes as class-based views and
its pydantic v2 support lags; the document here is small, so it is built
directly from ``model_json_schema()`` of the request models.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .. import __version__
from .models import NAME_RE, AddPlugin, Restart, RunJob

PROBLEM = {"content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def _json(schema: dict[str, Any] | None = None, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {}}}}


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "Bad request (not JSON, bad query or path parameter)", 401: "Unauthorized", 403: "Forbidden",
             404: "Not found", 409: "Conflict", 413: "Too large",
             415: "A body that is not application/json",
             503: "The service reloaded while the add was validating: nothing added, send it again",
             422: "A body field is wrong, or the plugin failed validation", 507: "Data directory full or read-only"}
    return {str(c): {"description": names[c], **PROBLEM} for c in codes}


def _body(model: str, required: bool = True) -> dict[str, Any]:
    return {"required": required,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}


@cache
def document() -> dict[str, Any]:
    name_param = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": NAME_RE.pattern}}
    info = {"$ref": "#/components/schemas/PluginInfo"}
    paths: dict[str, Any] = {
        "/api/v1/health": {"get": {"operationId": "health", "responses": {"200": _json({"type": "object"})}}},
        "/api/v1/openapi.json": {"get": {"operationId": "openapi", "responses": {"200": _json({"type": "object"})}}},
        "/api/v1/events": {"get": {"operationId": "events", "responses": {
            "200": {"description": "Server-Sent Events", "content": {"text/event-stream": {"schema": {"type": "string"}}}}}}},
        "/metrics": {"get": {"operationId": "metrics", "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    }
    for coll in ("tasks", "jobs", "plugins"):
        paths[f"/api/v1/{coll}"] = {
            "get": {"operationId": f"list_{coll}", "parameters": [
                {"name": "type", "in": "query", "required": False, "schema": {"enum": ["task", "job"]}}],
                "responses": {"200": _json({"$ref": "#/components/schemas/PluginList"}), **_errors(400)}},
            "post": {"operationId": f"add_{coll}", "requestBody": _body("AddPlugin"),
                     "responses": {"201": _json({"type": "object"}, "Validated and committed"),
                                   **_errors(400, 401, 409, 413, 415, 422, 503, 507)}},
        }
        paths[f"/api/v1/{coll}/{{name}}"] = {
            "parameters": [name_param],
            "get": {"operationId": f"get_{coll}", "responses": {"200": _json(info), **_errors(400, 404)}},
            "delete": {"operationId": f"delete_{coll}", "responses": {"200": _json({"type": "object"}),
                                                                        **_errors(400, 401, 404, 507)}},
        }
        paths[f"/api/v1/{coll}/{{name}}/logs"] = {
            "parameters": [name_param],
            "get": {"operationId": f"logs_{coll}", "parameters": [
                {"name": "since", "in": "query", "required": False, "schema": {"type": "number"}},
                {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0, "maximum": 10000}}],
                "responses": {"200": _json({"type": "object"}), **_errors(400, 404)}},
        }
        paths[f"/api/v1/{coll}/{{name}}/startup"] = {
            "parameters": [name_param],
            "get": {"operationId": f"startup_{coll}", "responses": {"200": _json({"type": "object"}),
                                                                     **_errors(400, 404)}},
        }
        paths[f"/api/v1/{coll}/{{name}}/restart"] = {
            "parameters": [name_param],
            "post": {"operationId": f"restart_{coll}", "requestBody": _body("Restart", False),
                     "responses": {"200": _json({"type": "object"}), **_errors(400, 401, 404, 409, 413, 415, 422, 507)}},
        }
    for coll in ("jobs", "plugins"):  # /plugins/{name}/run: iocmng 2.7.9's (400 for a task)
        paths[f"/api/v1/{coll}/{{name}}/run"] = {
            "parameters": [name_param],
            "post": {"operationId": f"run_{coll[:-1]}", "requestBody": _body("RunJob", False),
                     "responses": {"200": _json({"$ref": "#/components/schemas/JobRun"}),
                                   **_errors(400, 401, 404, 409, 413, 415, 422)}},
        }
    paths["/api/v1/tasks/{name}/trigger"] = {
        "parameters": [name_param],
        "post": {"operationId": "trigger_task", "responses": {"200": _json({"type": "object"}),
                                                              **_errors(400, 401, 404, 409)}},
    }
    paths["/api/v1/devices"] = {
        "get": {"operationId": "list_devices", "responses": {"200": _json({"$ref": "#/components/schemas/Devices"})}},
    }
    schemas: dict[str, Any] = {}
    for model in (AddPlugin, RunJob, Restart):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Problem"] = {"type": "object", "required": ["title", "status", "detail", "ok", "message"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "ok": {"const": False}, "message": {"type": "string"}}}
    schemas["PluginList"] = {"type": "object", "required": ["plugins", "count"], "properties": {
        "plugins": {"type": "array", "items": info}, "count": {"type": "integer", "minimum": 0}}}
    schemas["PluginInfo"] = {"type": "object", "required": ["name", "kind", "state"], "properties": {
        "name": {"type": "string"}, "kind": {"enum": ["task", "job"]},
        "state": {"enum": ["pending", "starting", "running", "paused", "idle", "failed", "stopped"]},
        "mode": {"type": ["string", "null"]}, "source": {"type": "object"}, "parameters": {"type": "object"},
        "pvs": {"type": "array", "items": {"type": "string"}}, "cycle_count": {"type": "integer"},
        "error_count": {"type": "integer"}, "last_error": {"type": ["string", "null"]},
        # iocmng 2.7.9's fields (iocmng/service/views.py)
        "status": {"enum": ["loaded", "running", "error", "stopped", "available", "invalid"]},
        "running": {"type": "boolean"}, "plugin_type": {"enum": ["task", "job"]},
        "class_name": {"type": ["string", "null"]}, "git_url": {"type": "string"},
        "branch": {"type": ["string", "null"]}, "path": {"type": "string"}, "pv_prefix": {"type": "string"},
        "plugin_prefix": {"type": "string"}, "start_parameters": {"type": "object"},
        "auto_start": {"type": "boolean"}, "auto_start_on_boot": {"type": "boolean"},
        "autostart_order": {"type": ["integer", "null"]},
        "pv_definitions": {"type": "object", "properties": {"inputs": {"type": "object"}, "outputs": {"type": "object"}}},
        "base_control_pvs": {"type": "array", "items": {"type": "string"}},
        "built_pvs": {"type": "array", "items": {"type": "string"}},
        "validation": {"type": "object", "properties": {"ok": {"type": "boolean"}, "errors": {
            "type": "array", "items": {"type": "string"}}}}}}
    schemas["JobRun"] = {"type": "object", "required": ["success", "data", "message", "ok", "result"], "properties": {
        "success": {"type": "boolean"}, "data": {"type": "object"}, "message": {"type": "string"},
        "ok": {"type": "boolean"}, "result": {"type": "object"},
        "job": {"type": "string"}, "started_at": {"type": "number"}, "duration_s": {"type": "number"}}}
    schemas["Devices"] = {"type": "object", "required": ["enabled", "devices"], "properties": {
        "enabled": {"type": "boolean"}, "reason": {"type": ["string", "null"]}, "config": {"type": ["string", "null"]},
        "control_layer": {"type": ["string", "null"]}, "error": {"type": ["string", "null"]},
        "devices": {"type": "array", "items": {"type": "object", "required": ["name", "state"], "properties": {
            "name": {"type": "string"}, "ioc": {"type": "string"}, "group": {"type": "string"},
            "type": {"type": "string"}, "prefix": {"type": "string"},
            "state": {"enum": ["pending", "ok", "disconnected", "failed", "disabled"]},
            "reason": {"type": ["string", "null"]}, "class": {"type": ["string", "null"]}}}}}}
    from .ui import openapi_parts  # PV values over REST and the Phoebus screens

    ui_paths, ui_schemas = openapi_parts(name_param, _json, _errors, _body)
    paths.update(ui_paths)
    schemas.update(ui_schemas)
    from .gateway.pvs import openapi_parts as pv_parts  # the REST PV gateway

    pv_paths, pv_schemas = pv_parts(_json)
    paths.update(pv_paths)
    schemas.update(pv_schemas)
    return {"openapi": "3.1.0", "info": {"title": "iocmng", "version": __version__},
            "paths": paths, "components": {"schemas": schemas}}
