"""The OpenAPI 3.1 document, built from the same pydantic models the routes parse, and its routes.

aiohttp-pydantic would require rewriting the routes as class-based views and
its pydantic v2 support lags; the document here is small, so it is built
directly from ``model_json_schema()`` of the request models. This module
imports the route modules for their models and constants; none of them
imports this one.

Each schema has one name: :class:`Components` refuses a second model (or a
different schema) under a name already taken, and a request body is named
by its model class, so a route cannot advertise another route's body.
Enumerations whose values exist in code (plugin states, kinds, PV roles and
types, providers) are read from there.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any, get_args

from aiohttp import web
from pydantic import BaseModel

from .._version import __version__
from ..config.models import PVType
from ..epics.devices import DeviceState
from ..runtime.handle import State
from ..service.views import LEGACY_STATUS, legacy_status
from .gateway.pvs import PROVIDERS, PV_NAME_RE, PutPV
from .gateway.reference import RefGet, RefMonitor, RefPut
from .http import KINDS, reply
from .models import NAME_RE, AddPlugin, Restart, RunJob
from .ui import BOB, ROLES, PutPluginPV

routes = web.RouteTableDef()
REF = "#/components/schemas/{model}"
PROBLEM = {
    "content": {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}
}
#: Plugin kinds (``task``, ``job``), as the collections hold them.
PLUGIN_KINDS = [kind for kind in KINDS.values() if kind is not None]
#: What each status code means on the plugin routes...
ERRORS = {
    400: "Bad request (not JSON, bad query or path parameter)",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Too large",
    415: "A body that is not application/json",
    503: "The service is reloading: an add still validating, or a run while the reload waits "
    "for the work in progress; nothing was done, send it again",
    422: "A body field is wrong, or the plugin failed validation",
    507: "Data directory full or read-only",
}
#: ... and on the PV gateway's.
GATEWAY_ERRORS = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Write refused by IOCMNG_PV_WRITE_PATTERN",
    404: "No server answered for the PV (or no such monitor)",
    409: "Too many monitors",
    413: "Too large",
    415: "A body that is not application/json",
    422: "A body field is wrong (unknown key, wrong type)",
    502: "The PV's server answered with an error",
    504: "The PV is connected but did not answer in time",
}


class SchemaNameClash(ValueError):
    """Two different schemas were given the same name in the document."""


class Components:
    """``components.schemas`` of the document: one schema per name, one model per name."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}
        self.models: dict[str, type[BaseModel]] = {}

    def add(self, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Name ``schema``; the ``$ref`` to it."""
        if name in self.schemas and self.schemas[name] != schema:
            raise SchemaNameClash(
                f"two different schemas are named {name!r} in the OpenAPI document"
            )
        self.schemas[name] = schema
        return {"$ref": REF.format(model=name)}

    def model(self, model: type[BaseModel]) -> dict[str, Any]:
        """The ``$ref`` to ``model``'s schema, named after the class."""
        name = model.__name__
        owner = self.models.setdefault(name, model)
        if owner is not model:
            raise SchemaNameClash(
                f"{owner.__module__}.{owner.__qualname__} and {model.__module__}."
                f"{model.__qualname__} would both be the schema {name!r}"
            )
        schema = model.model_json_schema(ref_template=REF)
        for sub, sub_schema in schema.pop("$defs", {}).items():
            self.add(sub, sub_schema)
        return self.add(name, schema)

    def body(self, model: type[BaseModel], required: bool = True) -> dict[str, Any]:
        return {
            "required": required,
            "content": {"application/json": {"schema": self.model(model)}},
        }


def _json(schema: dict[str, Any] | None = None, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {}}}}


def _errors(*codes: int, names: dict[int, str] = ERRORS) -> dict[str, Any]:
    return {str(c): {"description": names[c], **PROBLEM} for c in codes}


def _gateway_errors(*codes: int) -> dict[str, Any]:
    return _errors(*codes, names=GATEWAY_ERRORS)


NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": NAME_RE.pattern},
}


def _plugin_paths(c: Components) -> dict[str, Any]:
    """The plugin routes (:mod:`.routes`, :mod:`.startup`, :mod:`.devices`) and the service's own."""
    info = c.add("PluginInfo", _plugin_info())
    paths: dict[str, Any] = {
        "/api/v1/health": {
            "get": {"operationId": "health", "responses": {"200": _json({"type": "object"})}}
        },
        "/api/v1/apply": {
            "post": {
                "operationId": "apply",
                "description": "Reload now for the pending changes (IOCMNG_APPLY=manual holds "
                "them until this); GET /api/v1/health lists them",
                "responses": {
                    "200": _json({"type": "object", "description": "Nothing was pending"}),
                    "202": _json({"type": "object", "description": "The reload is under way"}),
                    **_errors(401, 403, 507),
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {"operationId": "openapi", "responses": {"200": _json({"type": "object"})}}
        },
        "/api/v1/events": {
            "get": {
                "operationId": "events",
                "responses": {
                    "200": {
                        "description": "Server-Sent Events",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    plugin_list = c.add(
        "PluginList",
        {
            "type": "object",
            "required": ["plugins", "count"],
            "properties": {
                "plugins": {"type": "array", "items": info},
                "count": {"type": "integer", "minimum": 0},
            },
        },
    )
    for coll in KINDS:
        paths[f"/api/v1/{coll}"] = {
            "get": {
                "operationId": f"list_{coll}",
                "parameters": [
                    {
                        "name": "type",
                        "in": "query",
                        "required": False,
                        "schema": {"enum": PLUGIN_KINDS},
                    }
                ],
                "responses": {"200": _json(plugin_list), **_errors(400)},
            },
            "post": {
                "operationId": f"add_{coll}",
                "requestBody": c.body(AddPlugin),
                "responses": {
                    "201": _json({"type": "object"}, "Validated and committed"),
                    **_errors(400, 401, 409, 413, 415, 422, 503, 507),
                },
            },
        }
        paths[f"/api/v1/{coll}/{{name}}"] = {
            "parameters": [NAME_PARAM],
            "get": {
                "operationId": f"get_{coll}",
                "responses": {"200": _json(info), **_errors(400, 404)},
            },
            "delete": {
                "operationId": f"delete_{coll}",
                "responses": {"200": _json({"type": "object"}), **_errors(400, 401, 404, 507)},
            },
        }
        paths[f"/api/v1/{coll}/{{name}}/logs"] = {
            "parameters": [NAME_PARAM],
            "get": {
                "operationId": f"logs_{coll}",
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10000},
                    },
                ],
                "responses": {"200": _json({"type": "object"}), **_errors(400, 404)},
            },
        }
        paths[f"/api/v1/{coll}/{{name}}/startup"] = {
            "parameters": [NAME_PARAM],
            "get": {
                "operationId": f"startup_{coll}",
                "responses": {"200": _json({"type": "object"}), **_errors(400, 404)},
            },
        }
        paths[f"/api/v1/{coll}/{{name}}/restart"] = {
            "parameters": [NAME_PARAM],
            "post": {
                "operationId": f"restart_{coll}",
                "requestBody": c.body(Restart, False),
                "responses": {
                    "200": _json({"type": "object"}),
                    **_errors(400, 401, 404, 409, 413, 415, 422, 507),
                },
            },
        }
    job_run = c.add(
        "JobRun",
        {
            "type": "object",
            "required": ["success", "data", "message", "ok", "result"],
            "properties": {
                "success": {"type": "boolean"},
                "data": {"type": "object"},
                "message": {"type": "string"},
                "ok": {"type": "boolean"},
                "result": {"type": "object"},
                "job": {"type": "string"},
                "started_at": {"type": "number"},
                "duration_s": {"type": "number"},
            },
        },
    )
    for coll in ("jobs", "plugins"):  # /plugins/{name}/run: iocmng 2.7.9's (400 for a task)
        paths[f"/api/v1/{coll}/{{name}}/run"] = {
            "parameters": [NAME_PARAM],
            "post": {
                "operationId": f"run_{coll[:-1]}",
                "requestBody": c.body(RunJob, False),
                "responses": {"200": _json(job_run), **_errors(400, 401, 404, 409, 413, 415, 422)},
            },
        }
    paths["/api/v1/tasks/{name}/trigger"] = {
        "parameters": [NAME_PARAM],
        "post": {
            "operationId": "trigger_task",
            "responses": {"200": _json({"type": "object"}), **_errors(400, 401, 404, 409)},
        },
    }
    devices = c.add(
        "Devices",
        {
            "type": "object",
            "required": ["enabled", "devices"],
            "properties": {
                "enabled": {"type": "boolean"},
                "reason": {"type": ["string", "null"]},
                "config": {"type": ["string", "null"]},
                "control_layer": {"type": ["string", "null"]},
                "error": {"type": ["string", "null"]},
                "devices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "state"],
                        "properties": {
                            "name": {"type": "string"},
                            "ioc": {"type": "string"},
                            "group": {"type": "string"},
                            "type": {"type": "string"},
                            "prefix": {"type": "string"},
                            "state": {"enum": [s.value for s in DeviceState]},
                            "reason": {"type": ["string", "null"]},
                            "class": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
    )
    paths["/api/v1/devices"] = {
        "get": {"operationId": "list_devices", "responses": {"200": _json(devices)}},
    }
    return paths


def _plugin_info() -> dict[str, Any]:
    # iocmng 2.7.9's ``status``, as iocmng.service.views maps our states to it
    statuses = list(dict.fromkeys([*LEGACY_STATUS.values(), legacy_status("")]))
    return {
        "type": "object",
        "required": ["name", "kind", "state"],
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": PLUGIN_KINDS},
            "state": {"enum": [s.value for s in State]},
            "mode": {"type": ["string", "null"]},
            "source": {"type": "object"},
            "parameters": {"type": "object"},
            "pvs": {"type": "array", "items": {"type": "string"}},
            "cycle_count": {"type": "integer"},
            "error_count": {"type": "integer"},
            "last_error": {"type": ["string", "null"]},
            "first_started_at": {
                "type": ["number", "null"],
                "description": "unix time of the plugin's first start (carried across reloads)",
            },
            "uptime_s": {"type": ["number", "null"], "description": "seconds since then"},
            # iocmng 2.7.9's fields (iocmng/service/views.py)
            "status": {"enum": statuses},
            "running": {"type": "boolean"},
            "plugin_type": {"enum": PLUGIN_KINDS},
            "class_name": {"type": ["string", "null"]},
            "git_url": {"type": "string"},
            "branch": {"type": ["string", "null"]},
            "path": {"type": "string"},
            "pv_prefix": {"type": "string"},
            "plugin_prefix": {"type": "string"},
            "start_parameters": {"type": "object"},
            "auto_start": {"type": "boolean"},
            "auto_start_on_boot": {"type": "boolean"},
            "autostart_order": {"type": ["integer", "null"]},
            "pv_definitions": {
                "type": "object",
                "properties": {"inputs": {"type": "object"}, "outputs": {"type": "object"}},
            },
            "base_control_pvs": {"type": "array", "items": {"type": "string"}},
            "built_pvs": {"type": "array", "items": {"type": "string"}},
            "validation": {
                "type": "object",
                "properties": {
                    "ok": {"type": "boolean"},
                    "errors": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    }


def _ui_paths(c: Components) -> dict[str, Any]:
    """A plugin's PVs over REST and the Phoebus screens (:mod:`.ui`)."""
    bob = {
        "description": "Phoebus Display Builder screen",
        "content": {BOB: {"schema": {"type": "string"}}},
    }
    pv_param = {
        "name": "pv",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "short PV name (SETPOINT, ENABLE...)",
    }
    row = {
        "type": "object",
        "required": ["name", "pv", "role", "type", "record", "writable", "value"],
        "properties": {
            "name": {"type": "string"},
            "pv": {"type": "string"},
            "role": {"enum": list(ROLES)},
            "type": {"enum": [*get_args(PVType), "enum"]},
            "record": {"type": "string"},
            "writable": {"type": "boolean"},
            "value": {},
            "text": {"type": "string"},
        },
    }
    table = c.add(
        "PVTable",
        {
            "type": "object",
            "required": ["plugin", "pvs", "live"],
            "properties": {
                "plugin": {"type": "string"},
                "kind": {"enum": PLUGIN_KINDS},
                "mode": {"type": "string"},
                "pv_prefix": {"type": "string"},
                "live": {"type": "boolean"},
                "pvs": {"type": "array", "items": row},
            },
        },
    )
    paths: dict[str, Any] = {
        "/api/v1/display.bob": {
            "get": {"operationId": "overview_display", "responses": {"200": bob}}
        }
    }
    for coll in KINDS:
        paths[f"/api/v1/{coll}/{{name}}/pvs"] = {
            "parameters": [NAME_PARAM],
            "get": {
                "operationId": f"pvs_{coll}",
                "responses": {"200": _json(table), **_errors(400, 404, 409)},
            },
        }
        paths[f"/api/v1/{coll}/{{name}}/pvs/{{pv}}"] = {
            "parameters": [NAME_PARAM, pv_param],
            "put": {
                "operationId": f"put_pv_{coll}",
                "requestBody": c.body(PutPluginPV),
                "responses": {
                    "200": _json({"type": "object"}),
                    **_errors(400, 401, 404, 409, 413, 415, 422),
                },
            },
        }
        paths[f"/api/v1/{coll}/{{name}}/display.bob"] = {
            "parameters": [NAME_PARAM],
            "get": {
                "operationId": f"display_{coll}",
                "responses": {"200": bob, **_errors(400, 404, 409)},
            },
        }
    return paths


def _gateway_paths(c: Components) -> dict[str, Any]:
    """The REST PV gateway (:mod:`.gateway`), its own routes and the reference iocmng's."""
    errors = _gateway_errors
    name = {
        "name": "pv",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": PV_NAME_RE.pattern, "maxLength": 200},
    }
    query = [
        {"name": "provider", "in": "query", "required": False, "schema": {"enum": list(PROVIDERS)}},
        {
            "name": "timeout",
            "in": "query",
            "required": False,
            "schema": {"type": "number", "exclusiveMinimum": 0},
        },
    ]
    value = c.add(
        "PVValue",
        {
            "type": "object",
            "required": ["name", "provider", "value"],
            "properties": {
                "name": {"type": "string"},
                "provider": {"enum": list(PROVIDERS)},
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
        },
    )
    answer = _json({"type": "object"})
    return {
        "/api/v1/pvs/{pv}": {
            "parameters": [name],
            "get": {
                "operationId": "read_pv",
                "parameters": query,
                "responses": {"200": _json(value), **errors(400, 403, 404, 502, 504)},
            },
            "put": {
                "operationId": "write_pv",
                "requestBody": c.body(PutPV),
                "responses": {"200": answer, **errors(400, 401, 403, 404, 413, 415, 422, 502, 504)},
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
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["provider"],
                            "properties": {"provider": {"enum": list(PROVIDERS)}},
                        }
                    )
                },
            }
        },
        "/api/v1/pvs/monitors": {
            "get": {"operationId": "pv_monitors", "responses": {"200": answer}}
        },
        "/api/v1/pvs/get": {
            "post": {
                "operationId": "ref_pv_get",
                "requestBody": c.body(RefGet),
                "responses": {"200": answer, **errors(400, 401, 403, 404, 413, 415, 422, 502, 504)},
            }
        },
        "/api/v1/pvs/put": {
            "post": {
                "operationId": "ref_pv_put",
                "requestBody": c.body(RefPut),
                "responses": {"200": answer, **errors(400, 401, 403, 404, 413, 415, 422, 502, 504)},
            }
        },
        "/api/v1/pvs/monitor": {
            "post": {
                "operationId": "ref_pv_monitor",
                "requestBody": c.body(RefMonitor),
                "responses": {"200": answer, **errors(400, 401, 404, 409, 413, 415, 422)},
            }
        },
        "/api/v1/pvs/monitor/{key}": {
            "parameters": [
                {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "delete": {
                "operationId": "ref_pv_unmonitor",
                "responses": {"200": answer, **errors(401, 404)},
            },
        },
    }


def build() -> tuple[dict[str, Any], Components]:
    """The document and its components (the models each schema name stands for)."""
    c = Components()
    c.add(
        "Problem",
        {
            "type": "object",
            "required": ["title", "status", "detail", "ok", "message"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "ok": {"const": False},
                "message": {"type": "string"},
            },
        },
    )
    paths = {**_plugin_paths(c), **_ui_paths(c), **_gateway_paths(c)}
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "iocmng", "version": __version__},
        "paths": paths,
        "components": {"schemas": c.schemas},
    }
    return doc, c


@cache
def document() -> dict[str, Any]:
    return build()[0]


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return reply(document())


@routes.get("/api/v1/docs")
async def api_page(request: web.Request) -> web.Response:
    """The interactive API page (self-contained: works on an air-gapped network)."""
    html = files("iocmng.api").joinpath("docs.html").read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html")
