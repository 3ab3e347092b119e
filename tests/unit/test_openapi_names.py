"""The OpenAPI document: one model per schema name, each route advertising the body its handler parses.

The models are found in the code (every pydantic model of ``iocmng.api`` and
the models their fields use), and each route's body model is read from its
handler (the model it passes to ``json_body``), so a new route or model is
covered without listing it here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap
import types
from typing import Any, get_args

import pytest
from aiohttp import web
from pydantic import BaseModel, ConfigDict

import iocmng
import iocmng.api
from iocmng.api import openapi
from iocmng.config.models import PVType
from iocmng.runtime.handle import State

REF = "#/components/schemas/"


def api_modules() -> list[types.ModuleType]:
    return [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(iocmng.api.__path__, "iocmng.api.")
    ]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def api_models() -> list[type[BaseModel]]:
    """Every pydantic model defined in iocmng.api, and every model their fields hold."""
    todo = [
        obj
        for mod in api_modules()
        for obj in vars(mod).values()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == mod.__name__
    ]
    seen: dict[int, type[BaseModel]] = {}
    while todo:
        model = todo.pop()
        if id(model) in seen:
            continue
        seen[id(model)] = model
        for field in model.model_fields.values():
            todo.extend(_models_in(field.annotation))
    return list(seen.values())


def _expand(path: str) -> list[str]:
    """An aiohttp path with a ``{var:a|b}`` choice as the document's paths (``a``, ``b``)."""
    m = re.search(r"\{\w+:([^}]+)\}", path)
    if m is None:
        return [path]
    return [
        q
        for alt in m.group(1).split("|")
        for q in _expand(path[: m.start()] + alt + path[m.end() :])
    ]


def _body_model(handler: Any) -> tuple[type[BaseModel], bool] | None:
    """The model the handler passes to ``json_body`` (and whether the body is optional), if any."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(handler)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "json_body":
            model = handler.__globals__[node.args[1].id]  # type: ignore[attr-defined]
            optional = any(k.arg == "optional" and ast.literal_eval(k.value) for k in node.keywords)
            return model, optional
    return None


def route_bodies() -> dict[tuple[str, str], tuple[type[BaseModel], bool]]:
    """(document path, method) -> (body model, optional) for every route that reads a JSON body."""
    out = {}
    for mod in api_modules():
        for table in vars(mod).values():
            if not isinstance(table, web.RouteTableDef):
                continue
            for route in table:
                assert isinstance(route, web.RouteDef)
                found = _body_model(route.handler)
                if found is not None:
                    for path in _expand(route.path):
                        out[(path, route.method.lower())] = found
    return out


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.document()


def test_no_two_models_share_a_schema_name() -> None:
    by_name: dict[str, list[str]] = {}
    for model in api_models():
        by_name.setdefault(model.__name__, []).append(f"{model.__module__}.{model.__qualname__}")
    assert len(by_name) > 5
    assert not {n: m for n, m in by_name.items() if len(m) > 1}, "models sharing a schema name"


def test_each_route_advertises_the_body_its_handler_parses(doc: dict[str, Any]) -> None:
    bodies = route_bodies()
    assert ("/api/v1/tasks/{name}/pvs/{pv}", "put") in bodies and (
        "/api/v1/pvs/{pv}",
        "put",
    ) in bodies
    advertised = {
        (path, method)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "requestBody" in op
    }
    assert advertised == set(bodies)
    for (path, method), (model, optional) in bodies.items():
        body = doc["paths"][path][method]["requestBody"]
        ref = body["content"]["application/json"]["schema"]["$ref"]
        assert ref == REF + model.__name__, (path, method)
        expected = model.model_json_schema(ref_template=REF + "{model}")
        expected.pop("$defs", None)
        assert doc["components"]["schemas"][model.__name__] == expected, (path, method, model)
        assert body["required"] is not optional, (path, method)


def test_the_two_pv_writes_have_their_own_bodies(doc: dict[str, Any]) -> None:
    from iocmng.api.gateway.pvs import PutPV
    from iocmng.api.ui import PutPluginPV

    def ref(path: str) -> str:
        return doc["paths"][path]["put"]["requestBody"]["content"]["application/json"]["schema"][
            "$ref"
        ]

    assert ref("/api/v1/pvs/{pv}") == REF + PutPV.__name__
    for coll in ("tasks", "jobs", "plugins"):
        assert ref(f"/api/v1/{coll}/{{name}}/pvs/{{pv}}") == REF + PutPluginPV.__name__
    schemas = doc["components"]["schemas"]
    assert "provider" in schemas[PutPV.__name__]["properties"]
    assert set(schemas[PutPluginPV.__name__]["properties"]) == {"value"}


def test_enumerations_come_from_the_code(doc: dict[str, Any]) -> None:
    from iocmng.api.ui import CONTROL_PVS, _role

    schemas = doc["components"]["schemas"]
    assert schemas["PluginInfo"]["properties"]["state"]["enum"] == [s.value for s in State]
    row = schemas["PVTable"]["properties"]["pvs"]["items"]["properties"]
    roles = {
        _role(short, writable)
        for short in (*CONTROL_PVS, "CONN_X", "SETPOINT")
        for writable in (True, False)
    }
    assert roles <= set(row["role"]["enum"])
    assert set(row["type"]["enum"]) == {*get_args(PVType), "enum"}


def test_components_refuse_a_second_model_under_a_name() -> None:
    class PutPV(BaseModel):  # the name of the gateway's body, another model
        model_config = ConfigDict(extra="forbid")
        value: int

    from iocmng.api.gateway.pvs import PutPV as GatewayPutPV

    c = openapi.Components()
    c.model(GatewayPutPV)
    assert c.model(GatewayPutPV) == {"$ref": REF + "PutPV"}  # the same model again is fine
    with pytest.raises(openapi.SchemaNameClash, match="PutPV"):
        c.model(PutPV)
    with pytest.raises(openapi.SchemaNameClash):
        c.add("PutPV", {"type": "object"})


def test_document_version(doc: dict[str, Any]) -> None:
    assert doc["info"]["version"] == iocmng.__version__
