"""``GET /api/v1/{plugins|tasks|jobs}/{name}/startup``: how a plugin starts.

The resolved parameters (config.yaml defaults deep-merged with the
registered overrides), mode, source, ``auto_start`` / ``autostart_order``,
the PVs (default, inputs, outputs, full record names) and the plugin's
config sections as validated (PV definitions with any links or rules), and
iocmng 2.7.9's fields (``auto_start_on_boot``, ``arguments``,
``additional_input_pvs``... see :mod:`iocmng.service.views`).
For a plugin waiting for its reload, the same is computed from its files.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config.models import load_config
from ..epics.plan import DEFAULT_PV_NAMES, base_of, plan, plugin_prefix
from ..service.views import LEGACY_KEYS
from .http import COLLECTION, collection_kind, path_name, reply, service
from .protocol import ServiceAPI

routes = web.RouteTableDef()


def _links(svc: ServiceAPI, config: Any, params: dict[str, Any], h: Any) -> list[dict[str, Any]]:
    """Each wired PV: its external PV and mode, and (running plugins) whether it is connected."""
    if h is not None and h.wiring is not None:
        return h.wiring.links.describe()
    from ..declarative.links import link_protocol, parse_link

    out = []
    default = link_protocol(params, svc.runtime.link_protocol)
    for name, spec in config.wired().items():
        protocol, pv = parse_link(spec.link, default)
        out.append(
            {
                "name": name,
                "pv": pv,
                "protocol": protocol,
                "direction": "input" if name in config.pvs.inputs else "output",
                "mode": spec.effective_link_mode,
                "connected": None,
            }
        )
    return out


def _config_view(config: Any) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude_none=True) if config is not None else {}


def startup_info(svc: ServiceAPI, name: str, kind: str | None) -> dict[str, Any]:
    entry = svc.get_kind(name, kind)
    h = svc.runtime.handles.get(name)
    out: dict[str, Any] = {
        "name": name,
        "kind": entry.kind,
        "source": entry.source.model_dump(exclude_none=True),
        "auto_start": entry.auto_start,
        "autostart_order": entry.autostart_order,
        "overrides": entry.parameters,
        "pv_prefix": base_of(entry.records) or plugin_prefix(svc.prefix, name),
    }
    if h is not None and h.config is not None:
        config, params, mode = h.config, h.params, h.mode if h.kind == "task" else "job"
        records = h.records.names() if h.records is not None else entry.records
        out["state"] = str(h.state)
    else:  # pending (or failed to load): planned from its files, as it will start
        config = load_config(Path(entry.plugin_dir))
        p = plan(svc.prefix, name, entry.kind, config, entry.parameters)
        params, mode, records = p.parameters_dict(), p.mode, list(p.names)
        out["state"] = str(h.state) if h is not None else "pending"
    shorts = [r.rsplit(":", 1)[-1] for r in records]
    section = _config_view(config)
    pvs = section.get("pvs") or {}
    out.update(
        {
            "mode": mode if entry.kind == "task" else None,
            "parameters": params,
            "base_control_pvs": [s for s in shorts if s in DEFAULT_PV_NAMES],
            "input_pvs": sorted(pvs.get("inputs") or {}),
            "output_pvs": sorted(pvs.get("outputs") or {}),
            "records": records,
            "config": {k: v for k, v in section.items() if k != "parameters"},
            "links": _links(svc, config, params, h),
            "rules": [
                {
                    "id": rid,
                    "condition": r.condition,
                    "outputs": r.outputs,
                    "actuators": r.actuators,
                }
                for rid, r in zip(config.rule_ids(), config.rules, strict=True)
            ],
        }
    )
    return out


@routes.get(COLLECTION + "/{name}/startup")
async def plugin_startup(request: web.Request) -> web.Response:
    """How the plugin starts: resolved parameters, PV lists, mode, source."""
    svc = service(request)
    name = path_name(request)
    kind = collection_kind(request)
    svc.get_kind(name, kind)  # 404 before touching files
    out = await asyncio.to_thread(startup_info, svc, name, kind)
    info = svc.info(
        name
    )  # iocmng 2.7.9's fields, as the listing has them (on the loop: it uses caches)
    for key in LEGACY_KEYS:
        out.setdefault(key, info[key])
    return reply(out)
