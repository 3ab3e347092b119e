"""The generated Phoebus screens, checked structurally against a real server.

One server with the demo plugins (a continuous task with every PV type, a
triggered task, a job...) serves ``GET .../display.bob`` for each plugin and
``GET /api/v1/display.bob``. Each file must be well-formed XML, use only
widget types and properties of Phoebus's Display Builder, name only PVs of
that plugin, and every PV it names must answer a Channel Access get.
The overview's buttons must open URLs that serve those screens.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from aioca import caget

from .conftest import Server, ServerFactory, call

pytestmark = pytest.mark.timeout(120)

# Properties of the Display Builder model (org.csstudio.display.builder.model:
# Widget, VisibleWidget, PVWidget and each widget class), for the widgets we emit.
COMMON = {
    "name",
    "x",
    "y",
    "width",
    "height",
    "tooltip",
    "actions",
    "visible",
    "rules",
    "scripts",
    "class",
}
PV = {"pv_name", "border_alarm_sensitive", "alarm_border"}
WIDGET_PROPERTIES = {
    "label": COMMON
    | {
        "text",
        "font",
        "foreground_color",
        "background_color",
        "transparent",
        "horizontal_alignment",
        "vertical_alignment",
        "rotation_step",
        "wrap_words",
        "auto_size",
    },
    "textupdate": COMMON
    | PV
    | {
        "font",
        "foreground_color",
        "background_color",
        "transparent",
        "format",
        "precision",
        "show_units",
        "horizontal_alignment",
        "vertical_alignment",
        "wrap_words",
        "rotation_step",
    },
    "textentry": COMMON
    | PV
    | {
        "font",
        "foreground_color",
        "background_color",
        "format",
        "precision",
        "show_units",
        "wrap_words",
        "multi_line",
        "horizontal_alignment",
        "enabled",
    },
    "led": COMMON
    | PV
    | {
        "bit",
        "off_label",
        "off_color",
        "on_label",
        "on_color",
        "font",
        "foreground_color",
        "line_color",
        "square",
        "labels_from_pv",
    },
    "multi_state_led": COMMON
    | PV
    | {
        "states",
        "fallback_label",
        "fallback_color",
        "font",
        "foreground_color",
        "line_color",
        "square",
    },
    "bool_button": COMMON
    | PV
    | {
        "bit",
        "off_label",
        "off_color",
        "on_label",
        "on_color",
        "show_led",
        "font",
        "foreground_color",
        "background_color",
        "labels_from_pv",
        "enabled",
        "mode",
        "confirm_dialog",
    },
    "action_button": COMMON
    | PV
    | {
        "text",
        "font",
        "foreground_color",
        "background_color",
        "transparent",
        "rotation_step",
        "enabled",
        "confirm_dialog",
    },
}
WIDGET_VERSIONS = {"textentry": "3.0.0", "action_button": "3.0.0"}
DISPLAY_PROPERTIES = {"name", "width", "height", "macros", "background_color", "widget"}
ACTIONS = {
    "write_pv": {"pv_name", "value", "description"},
    "open_display": {"file", "target", "description", "macros"},
}


@pytest.fixture(scope="module")
def server(module_server_factory: ServerFactory) -> Server:
    """One --demo server for the module."""
    return module_server_factory(demo=True)


def check_structure(raw: bytes) -> tuple[list[str], list[ET.Element]]:
    """Well-formed, known widgets and properties; return the PV names and actions."""
    root = ET.fromstring(raw)  # raises on malformed XML
    assert root.tag == "display" and root.get("version") == "2.0.0"
    assert {c.tag for c in root} <= DISPLAY_PROPERTIES, {c.tag for c in root} - DISPLAY_PROPERTIES
    assert int(root.findtext("width")) > 0 and int(root.findtext("height")) > 0
    pvs, actions = [], []
    for w in root.iter("widget"):
        kind = w.get("type")
        assert kind in WIDGET_PROPERTIES, f"unknown widget type {kind}"
        assert w.get("version") == WIDGET_VERSIONS.get(kind, "2.0.0"), (kind, w.get("version"))
        props = {c.tag for c in w}
        assert props <= WIDGET_PROPERTIES[kind], (
            f"{kind}: unknown properties {props - WIDGET_PROPERTIES[kind]}"
        )
        for key in ("x", "y", "width", "height"):
            assert int(w.findtext(key)) >= 0, (kind, key)
        if w.find("pv_name") is not None:
            pvs.append(w.findtext("pv_name"))
        if kind == "multi_state_led":
            states = w.findall("states/state")
            assert states and all(
                s.findtext("value") is not None and s.find("color/color") is not None
                for s in states
            )
        for a in w.findall("actions/action"):
            assert a.get("type") in ACTIONS, a.get("type")
            assert {c.tag for c in a} <= ACTIONS[a.get("type")]
            actions.append(a)
            if a.get("type") == "write_pv":
                pvs.append(a.findtext("pv_name"))
    return pvs, actions


async def test_plugin_screens(server: Server) -> None:
    plugins = call("GET", f"{server.url}/plugins").body["plugins"]
    assert {"sync_monitor", "triggered_scan", "diagnostics_job"} <= {p["name"] for p in plugins}
    for p in plugins:
        if p["state"] == "failed":
            continue
        coll = p["kind"] + "s"
        r = call("GET", f"{server.url}/{coll}/{p['name']}/display.bob")
        status, ctype, raw = r.status, r.content_type, r.content
        assert status == 200 and ctype == "application/xml", raw[:300]
        assert call("GET", f"{server.url}/plugins/{p['name']}/display.bob").content == raw
        pvs, actions = check_structure(raw)
        # every PV of the plugin is on its screen, and only those
        assert set(pvs) == set(p["pvs"]), (p["name"], set(pvs) ^ set(p["pvs"]))
        for pv in set(pvs):
            await caget(pv, timeout=10)  # served by the IOC
        root = ET.fromstring(raw)
        kinds = {
            w.findtext("pv_name"): w.get("type")
            for w in root.iter("widget")
            if w.find("pv_name") is not None
        }
        assert any(w.get("type") == "multi_state_led" for w in root.iter("widget"))
        if p["kind"] == "task":
            assert kinds[server.pv(p["name"], "ENABLE")] == "bool_button"
        if p.get("mode") == "triggered":
            assert [a.findtext("pv_name") for a in actions] == [server.pv(p["name"], "RUN")]
    # an input has an editable entry with its limits and units shown; a bool output an LED
    root = ET.fromstring(call("GET", f"{server.url}/tasks/sync_monitor/display.bob").content)
    widgets = {w.findtext("name"): w for w in root.iter("widget")}
    assert widgets["SETPOINT"].get("type") == "textentry"
    assert widgets["SETPOINT"].findtext("precision") == "2"
    assert "label [0 … 100] %" in widgets
    assert (
        widgets["ALARM"].get("type") == "led" and widgets["ALARM"].findtext("on_label") == "ALARM"
    )
    assert widgets["READING"].get("type") == "textupdate"


async def test_overview(server: Server) -> None:
    r = call("GET", f"{server.url}/display.bob")
    status, ctype, raw = r.status, r.content_type, r.content
    assert status == 200 and ctype == "application/xml"
    pvs, actions = check_structure(raw)
    plugins = {p["name"]: p for p in call("GET", f"{server.url}/plugins").body["plugins"]}
    opened = {a.findtext("file") for a in actions if a.get("type") == "open_display"}
    live = {n for n, p in plugins.items() if p["state"] != "failed"}
    assert opened == {f"{server.url}/plugins/{n}/display.bob" for n in live}
    for url in opened:
        assert call("GET", url).status == 200
    for pv in set(pvs):
        await caget(pv, timeout=10)


def test_unknown_plugin_is_a_404_problem(server: Server) -> None:
    for path in ("/plugins/nope/display.bob", "/jobs/sync_monitor/display.bob", "/tasks/nope/pvs"):
        r = call("GET", server.url + path)
        status, ctype, raw = r.status, r.content_type, r.content
        body: dict[str, Any] = json.loads(raw)
        assert (status, ctype) == (404, "application/problem+json"), (path, raw)
        assert "no " in body["detail"], body


def test_cli_screen(server: Server, tmp_path: Path) -> None:
    from iocmng.cli import main

    out = tmp_path / "scan.bob"
    base = f"http://127.0.0.1:{server.http_port}"
    assert main(["screen", "triggered_scan", "-o", str(out), "--server", base]) == 0
    check_structure(out.read_bytes())
    assert (
        out.read_bytes() == call("GET", f"{server.url}/plugins/triggered_scan/display.bob").content
    )
    assert main(["screen", "nope", "-o", str(tmp_path / "x.bob"), "--server", base]) == 1
    assert not (tmp_path / "x.bob").exists()
