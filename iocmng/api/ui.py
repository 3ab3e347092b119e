"""Operator screens: the web dashboard, PV values over REST, Phoebus displays.

* ``/`` and ``/ui/plugins/{name}``: HTML rendered here, readable with no
  JavaScript (the plugin list, a plugin's PVs and log); ``/ui/static/``
  adds the live behaviour (``dashboard.js``: SSE, forms, PV writes) and the
  style. Hand-written, shipped in the package: no CDN, no build step.
* ``GET /api/v1/{coll}/{name}/pvs``: each PV of a plugin with its current
  value, read in-process from its records (no Channel Access round trip; any
  other PV is read through the REST PV gateway, :mod:`iocmng.api.gateway`).
  ``PUT .../pvs/{pv}`` writes an input or ENABLE through its record, exactly
  as a Channel Access put would (drive limits clamp, ``on_input`` runs).
* ``GET /api/v1/{coll}/{name}/display.bob`` and ``GET /api/v1/display.bob``:
  Phoebus screens (:mod:`iocmng.epics.displays`).

With ``IOCMNG_READ_AUTH`` the HTML pages are an empty shell (the browser
cannot send a bearer token when it navigates): the script fetches the data
with the token the operator typed.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from .._version import __version__
from ..config.models import coerce_value, load_config
from ..epics.displays import Screen, overview_screen, plugin_screen
from ..epics.plan import MAX_STRING, plan, status_labels
from ..errors import BadRequest, Conflict, IocmngError, NotFound
from .http import COLLECTION, bearer_ok, collection_kind, path_name, reply, service
from .keys import API_TOKEN, READ_AUTH
from .problems import json_body
from .protocol import ServiceAPI

ui_routes = web.RouteTableDef()
STATIC = files("iocmng.api").joinpath("static")
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
BOB = "application/xml"


#: What a row of ``GET .../pvs`` says a PV is for (:func:`_role`).
CONTROL_PVS = ("ENABLE", "RUN", "STATUS", "MESSAGE", "CYCLE_COUNT", "VERSION", "CLEAR", "RESET")
ROLES = (*(short.lower() for short in CONTROL_PVS), "links", "input", "output")


class PutPluginPV(BaseModel):
    """Body of ``PUT /api/v1/{coll}/{name}/pvs/{pv}`` (one of the plugin's own PVs)."""

    model_config = ConfigDict(extra="forbid")

    value: float | int | bool | str = Field(
        description="The new value (number, boolean or string by the PV's type)"
    )


# -- what a plugin's records are ---------------------------------------------------------------
async def screen_of(svc: ServiceAPI, name: str, kind: str | None) -> Screen:
    """The plugin's record plan: the live handle's, else (pending) planned from its files."""
    entry = svc.get_kind(name, kind)
    h = svc.runtime.handles.get(name)
    if h is not None and h.plan is not None and h.records is not None:
        return Screen.of(h.plan, str(h.state))
    if h is not None:  # loaded in this generation but failed before it had records
        raise Conflict(f"{name!r} failed to load and has no PVs in this generation: {h.last_error}")
    try:
        config = await asyncio.to_thread(load_config, Path(entry.plugin_dir))
        p = plan(svc.prefix, name, entry.kind, config, entry.parameters)
    except IocmngError as exc:
        raise Conflict(f"{name!r} cannot be planned: {exc.detail}") from None
    return Screen.of(p, "pending")


def _role(short: str, writable: bool) -> str:
    if short in CONTROL_PVS:
        return short.lower()
    if short.startswith("CONN_"):
        return "links"
    return "input" if writable else "output"


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


async def pv_table(svc: ServiceAPI, name: str, kind: str | None) -> dict[str, Any]:
    screen = await screen_of(svc, name, kind)
    h = svc.runtime.handles.get(name)
    records = h.records if h is not None else None
    rows = []
    for r in screen.records:
        s = r.spec
        row: dict[str, Any] = {
            "name": f"{screen.pv_prefix}:{r.short}",
            "pv": r.short,
            "role": _role(r.short, r.writable),
            "type": "enum" if r.short == "STATUS" else s.type,
            "record": r.record_type,
            "writable": r.writable and r.short != "RUN",
            "value": None,
        }
        if s.link is not None:
            row["link"] = s.link
        for key in ("unit", "prec", "low", "high", "znam", "onam", "description"):
            if getattr(s, key) is not None:
                row[key] = getattr(s, key)
        if records is not None and r.short in records:
            value = _finite(records.get(r.short))
            row["value"] = value
            if r.short == "STATUS":
                states = status_labels(screen.kind)
                row["text"] = (
                    states[value]
                    if isinstance(value, int) and 0 <= value < len(states)
                    else str(value)
                )
            elif s.type == "bool":
                row["text"] = (s.onam or "1") if value else (s.znam or "0")
        rows.append(row)
    return {
        "plugin": name,
        "kind": screen.kind,
        "mode": screen.mode,
        "pv_prefix": screen.pv_prefix,
        "live": records is not None and records.live,
        "time": time.time(),
        "pvs": rows,
    }


def parse_value(pv_type: str, value: Any, spec: Any) -> Any:
    """The JSON ``value`` as the PV's type, or BadRequest saying what fits."""
    if pv_type == "float":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise BadRequest(f"value: {value!r} is not a number", field="value")
        try:
            out = float(value)
        except ValueError:
            raise BadRequest(f"value: {value!r} is not a number", field="value") from None
        if not math.isfinite(out):
            raise BadRequest("value: must be a finite number", field="value")
        return out
    if pv_type == "int":
        if isinstance(value, bool):
            raise BadRequest(f"value: {value!r} is not a whole number", field="value")
        try:
            out = float(value) if isinstance(value, str) else value
            if (
                not isinstance(out, int | float)
                or not math.isfinite(out)
                or not float(out).is_integer()
            ):
                raise ValueError
        except ValueError:
            raise BadRequest(f"value: {value!r} is not a whole number", field="value") from None
        if not -(2**31) <= out < 2**31:
            raise BadRequest("value: out of the 32-bit range of a longout record", field="value")
        return int(out)
    if pv_type == "bool":
        labels = {(spec.znam or "").lower(): 0, (spec.onam or "").lower(): 1}
        if isinstance(value, str) and value.strip().lower() in labels and value.strip():
            return labels[value.strip().lower()]
        if isinstance(value, int | float) and value in (0, 1):
            return int(value)
        try:
            return coerce_value("bool", value) if isinstance(value, str) else _no_bool(value)
        except ValueError:
            raise BadRequest(
                f"value: {value!r} is not 0/1, true/false or a state label", field="value"
            ) from None
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text.encode("utf-8")) > MAX_STRING:
        raise BadRequest(
            f"value: {len(text.encode())} bytes; a string PV holds at most {MAX_STRING}",
            field="value",
        )
    return text


def _no_bool(value: Any) -> Any:
    raise ValueError(value)


# -- REST: PVs and displays ---------------------------------------------------------------------
@ui_routes.get(COLLECTION + "/{name}/pvs")
async def get_pvs(request: web.Request) -> web.Response:
    return reply(await pv_table(service(request), path_name(request), collection_kind(request)))


@ui_routes.put(COLLECTION + "/{name}/pvs/{pv}")
async def put_pv(request: web.Request) -> web.Response:
    svc = service(request)
    name, short = path_name(request), request.match_info["pv"]
    entry = svc.get_kind(name, collection_kind(request))
    body: PutPluginPV = await json_body(request, PutPluginPV)
    h = svc.runtime.handles.get(name)
    if h is None or h.records is None or h.plan is None or not h.records.live:
        raise Conflict(
            f"{name!r} has no live PVs now (it is waiting for the reload to generation "
            f"{svc.registry.state.generation}, or failed to load)"
        )
    if short not in h.records:
        raise NotFound(
            f"{name!r} has no PV {short!r}; its PVs: {', '.join(h.records.shorts())}", field="pv"
        )
    if short == "RUN":
        raise Conflict(f"RUN runs a cycle: use POST /api/v1/tasks/{name}/trigger", field="pv")
    inputs = h.config.pvs.inputs if h.config is not None else {}
    if short != "ENABLE" and short not in inputs:
        what = (
            "an output"
            if h.config is not None and short in h.config.pvs.outputs
            else "managed by iocmng"
        )
        raise Conflict(
            f"{short} is {what} and read-only; writable PVs: "
            f"{', '.join(['ENABLE'] * (entry.kind == 'task') + list(inputs))}",
            field="pv",
        )
    spec = inputs[short] if short in inputs else h.plan.spec(short).spec
    value = parse_value(spec.type, body.value, spec)
    # Through the record, as a CA put: DRVL/DRVH clamp, monitors fire, and
    # the record's on_update runs the plugin's on_input (or ENABLE's handler).
    h.records.set(short, value)
    readback = _finite(h.records.get(short))
    return reply(
        {
            "plugin": name,
            "pv": f"{h.records.prefix}:{short}",
            "value": readback,
            "requested": value,
            "clamped": readback != value,
        }
    )


@ui_routes.get(COLLECTION + "/{name}/display.bob")
async def plugin_display(request: web.Request) -> web.Response:
    screen = await screen_of(service(request), path_name(request), collection_kind(request))
    return _bob(plugin_screen(screen), f"{screen.name}.bob")


@ui_routes.get("/api/v1/display.bob")
async def overview_display(request: web.Request) -> web.Response:
    svc = service(request)
    screens = []
    for name in sorted(svc.registry.plugins):
        try:
            screens.append(await screen_of(svc, name, None))
        except IocmngError:
            continue  # a plugin with no PVs has no screen
    origin = f"{request.scheme}://{request.host}"
    links = {s.name: f"{origin}/api/v1/plugins/{s.name}/display.bob" for s in screens}
    return _bob(overview_screen(screens, svc.prefix, links), "iocmng.bob")


def _bob(body: bytes, filename: str) -> web.Response:
    return web.Response(
        body=body,
        headers={
            "Content-Type": f"{BOB}; charset=utf-8",
            "Content-Disposition": f'inline; filename="{filename}"',
        },
    )


# -- the dashboard ----------------------------------------------------------------------------------
@ui_routes.get("/ui/static/{file}")
async def static(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name not in STATIC_FILES:
        raise NotFound(f"no such file: {name}")
    return web.Response(
        body=STATIC.joinpath(name).read_bytes(),
        content_type=STATIC_FILES[name],
        headers={"Cache-Control": "no-cache"},
    )


@ui_routes.post("/ui/auth")
async def check_token(request: web.Request) -> web.Response:
    """A mutating request that changes nothing: the auth middleware checks the token."""
    return web.Response(status=204)


@ui_routes.get("/ui")
@ui_routes.get("/ui/")
async def ui_home(request: web.Request) -> web.Response:
    raise web.HTTPFound("/")


@ui_routes.get("/")
async def dashboard(request: web.Request) -> web.Response:
    svc = service(request)
    if _locked(request):
        return _page(request, "list", "", _locked_note())
    items = json.loads(await svc.list_json())["plugins"]
    rows = "".join(_plugin_row(svc, p) for p in items)
    empty = "" if items else '<tr class="empty"><td colspan="9">no plugins yet</td></tr>'
    body = f"""<section><h2>Plugins</h2>
<table id="plugins"><thead><tr><th>Name</th><th>Kind</th><th>Mode</th><th>State</th><th>Cycles</th>
<th>Errors</th><th>Last error</th><th>Source</th><th>Generation</th></tr></thead>
<tbody>{rows}{empty}</tbody></table>
<p class="links"><a href="/api/v1/display.bob">Phoebus overview (.bob)</a> · <a href="/api/v1/docs">API page</a>
· <a href="/metrics">metrics</a></p></section>
{ADD_FORM}"""
    return _page(request, "list", "", body)


@ui_routes.get("/ui/plugins/{name}")
async def plugin_page(request: web.Request) -> web.Response:
    svc = service(request)
    name = path_name(request)
    if _locked(request):
        return _page(request, "plugin", name, _locked_note())
    try:
        p = svc.info(name)
    except NotFound as exc:
        resp = _page(
            request, "missing", "", f'<p>{escape(exc.detail)}. <a href="/">All plugins</a></p>'
        )
        resp.set_status(404)
        return resp
    coll = p["kind"] + "s"
    try:
        table = await pv_table(svc, name, None)
        pv_rows = "".join(_pv_row(r) for r in table["pvs"])
    except IocmngError as exc:
        pv_rows = f'<tr><td colspan="5">{escape(exc.detail)}</td></tr>'
    logs = svc.logs.records(name, None, 50)
    log_text = "\n".join(_log_line(r) for r in logs) or "(no log records in this generation)"
    params = escape(json.dumps(p.get("parameters") or {}, indent=1, default=str))
    controls = ""
    if p["kind"] == "task":
        controls += (
            '<button class="js-only" id="enable-btn" type="button">Enable / disable</button> '
        )
        if p.get("mode") == "triggered":
            controls += '<button class="js-only" id="trigger-btn" type="button">Run once (trigger)</button> '
    job = ""
    if p["kind"] == "job":
        job = """<section class="js-only"><h2>Run the job</h2>
<form id="run-form"><label>Parameters (JSON, for this run only)
<textarea name="parameters" rows="3">{}</textarea></label>
<label>Timeout (s) <input name="timeout" type="number" min="0" step="any"></label>
<button type="submit">Run</button></form><pre id="job-result" class="result" hidden></pre></section>"""
    body = f"""<p><a href="/">← all plugins</a></p>
<section><h2 id="title">{escape(name)}</h2>
<dl id="info" class="info">{_info_items(svc, p)}</dl>
<p class="controls">{controls}<button class="js-only danger" id="remove-btn" type="button">Remove…</button>
<a href="/api/v1/{coll}/{escape(name)}/display.bob">Phoebus screen (.bob)</a></p>
<details><summary>Parameters</summary><pre>{params}</pre></details></section>
<section><h2>PVs</h2><table id="pvs"><thead><tr><th>PV</th><th>Role</th><th>Type</th><th>Value</th>
<th>Set</th></tr></thead><tbody>{pv_rows}</tbody></table></section>
{job}
<section><h2>Recent log</h2><pre id="log" class="log">{escape(log_text)}</pre></section>"""
    return _page(request, "plugin", name, body, coll)


def _locked(request: web.Request) -> bool:
    """Reads need the token and this request has none (a browser navigating)."""
    token = request.app[API_TOKEN]
    if not (request.app[READ_AUTH] and token):
        return False
    return not bearer_ok(request, token)


def _locked_note() -> str:
    return (
        '<p id="locked">This service requires the API token to read (IOCMNG_READ_AUTH). '
        "Enter it above; without JavaScript, use the REST API with the token.</p>"
    )


def _page(
    request: web.Request, page: str, name: str, main: str, coll: str = "plugins"
) -> web.Response:
    svc = service(request)
    auth = (
        "read"
        if request.app[READ_AUTH] and request.app[API_TOKEN]
        else "write"
        if request.app[API_TOKEN]
        else "none"
    )
    pending = svc.registry.state.generation if svc.reload_pending else ""
    manual = svc.settings.apply == "manual"
    title = f"{name} · iocmng" if name else "iocmng"
    html = f"""<!doctype html>
<html lang="en" class="no-js"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><link rel="stylesheet" href="/ui/static/dashboard.css"></head>
<body data-page="{page}" data-plugin="{escape(name)}" data-coll="{coll}" data-auth="{auth}"
 data-generation="{svc.generation}" data-pending="{pending}" data-apply="{"manual" if manual else "auto"}">
<header><h1><a href="/">iocmng</a></h1><span class="meta">{escape(svc.prefix)} · generation
<span id="generation">{svc.generation}</span> · v{escape(__version__)}</span>
<form id="token-form" class="js-only" hidden><input id="token" type="password" autocomplete="off"
 placeholder="API token" aria-label="API token"><button type="submit">Use token</button>
<button type="button" id="token-clear" hidden>Forget token</button><span id="token-state"></span></form>
<span id="live" class="js-only" title="live updates (SSE)">○</span></header>
<div id="banner" class="banner" role="status"{"" if pending and not manual else " hidden"}>Reload in progress: generation
<span id="pending-gen">{pending}</span> is starting; PVs reconnect in a few seconds.</div>
<div id="apply-banner" class="banner" role="status"{"" if pending and manual else " hidden"}>Changes are pending
for generation <span id="apply-gen">{pending}</span> (IOCMNG_APPLY=manual): <span id="apply-list"></span>
<button class="js-only" id="apply-btn" type="button">Apply now (reload)</button></div>
<div id="message" class="message" role="alert" hidden></div>
<main>{main}</main>
<script src="/ui/static/dashboard.js" defer></script>
</body></html>"""
    return web.Response(text=html, content_type="text/html")


def _source(src: dict[str, Any] | None) -> str:
    if not src:
        return ""
    where = escape(src.get("url") or src.get("local_path") or "?")
    if src.get("branch"):
        where += f' <span class="branch">@{escape(src["branch"])}</span>'
    if src.get("path"):
        where += f" :{escape(src['path'])}"
    if src.get("commit"):
        where += f' <code title="{escape(src["commit"])}">{escape(src["commit"][:8])}</code>'
    return where


def plugin_generation(svc: ServiceAPI, name: str) -> int:
    return svc.generation if name in svc.runtime.handles else svc.registry.state.generation


def _plugin_row(svc: ServiceAPI, p: dict[str, Any]) -> str:
    n = escape(p["name"])
    err = escape(p.get("last_error") or "")
    return (
        f'<tr data-name="{n}"><td><a href="/ui/plugins/{n}">{n}</a></td><td>{escape(p["kind"])}</td>'
        f'<td>{escape(p.get("mode") or "")}</td><td><span class="state s-{escape(p["state"])}">{escape(p["state"])}'
        f"</span></td><td>{p.get('cycle_count', 0)}</td><td>{p.get('error_count', 0)}</td>"
        f'<td class="error">{err}</td><td class="src">{_source(p.get("source"))}</td>'
        f"<td>{plugin_generation(svc, p['name'])}</td></tr>"
    )


def _info_items(svc: ServiceAPI, p: dict[str, Any]) -> str:
    items = [
        ("Kind", p["kind"]),
        ("Mode", p.get("mode")),
        ("State", p["state"]),
        ("Enabled", p.get("enabled")),
        ("Cycles", p.get("cycle_count")),
        ("Errors", p.get("error_count")),
        ("Last error", p.get("last_error")),
        ("PV prefix", p.get("pv_prefix")),
        ("Generation", plugin_generation(svc, p["name"])),
    ]
    out = "".join(
        f'<dt>{k}</dt><dd data-key="{k.lower().replace(" ", "_")}">{escape(_cell(v))}</dd>'
        for k, v in items
    )
    return out + f'<dt>Source</dt><dd data-key="source">{_source(p.get("source"))}</dd>'


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def _pv_row(r: dict[str, Any]) -> str:
    value = r.get("text", r["value"])
    unit = f" {escape(r['unit'])}" if r.get("unit") else ""
    return (
        f'<tr data-pv="{escape(r["pv"])}" data-type="{r["type"]}" data-writable="{str(r["writable"]).lower()}">'
        f"<td><code>{escape(r['name'])}</code></td><td>{r['role']}</td><td>{r['record']}</td>"
        f'<td class="value">{escape(_cell(value))}{unit}</td><td class="set"></td></tr>'
    )


def _log_line(rec: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(rec["time"]))
    return f"{stamp} {rec['level']:<7} {rec['message']}"


ADD_FORM = """<section class="js-only"><h2>Add a plugin</h2>
<form id="add-form" novalidate>
<div class="row"><label>Kind <select name="coll"><option value="plugins">either (detect)</option>
<option value="tasks">task</option><option value="jobs">job</option></select></label>
<label>Name <input name="name" required placeholder="my-monitor" autocomplete="off"></label>
<small class="field-error" data-for="name"></small></div>
<div class="row"><label>Git URL <input name="git_url" size="50" placeholder="https://…, http://… or file://…"></label>
<small class="field-error" data-for="git_url"></small></div>
<div class="row"><label>or local path (on the server) <input name="local_path" size="40"></label>
<small class="field-error" data-for="local_path"></small></div>
<div class="row"><label>Branch <input name="branch" placeholder="(the repository's HEAD)"></label>
<small class="field-error" data-for="branch"></small>
<label>Path in the repository <input name="path" placeholder="(the root)"></label>
<small class="field-error" data-for="path"></small></div>
<div class="row"><label>Access token for https (never stored) <input name="pat" type="password" autocomplete="off"></label>
<small class="field-error" data-for="pat"></small></div>
<div class="row"><label>Parameters (JSON) <textarea name="parameters" rows="3">{}</textarea></label>
<small class="field-error" data-for="parameters"></small></div>
<button type="submit">Add</button> <small class="field-error" data-for=""></small>
</form><ol id="steps" class="steps" hidden></ol></section>"""
