"""Phoebus Display Builder screens (``.bob``) generated from a plugin's PV plan.

A screen is laid out on a fixed grid (label | widget | limits and units),
in four blocks: title, state (STATUS as a multi-state LED, MESSAGE,
CYCLE_COUNT), controls (ENABLE as a toggle, RUN as a button for triggered
tasks), then the plugin's inputs (editable text entries) and outputs (text
updates, LEDs for bools). The PV names are the real ones of the running
service, so the file opens in Phoebus (File → Open, or straight from the
service's URL) with nothing to edit.

Only widget types and properties of Phoebus's Display Builder model are
used (``label``, ``textupdate``, ``textentry``, ``led``, ``multi_state_led``,
``bool_button``, ``action_button``, ``group``), with their current XML
versions; tests/system/test_displays.py checks that list.

Pure: no EPICS, no HTTP; :mod:`iocmng.api.ui` feeds it from the service,
a :class:`Screen` per plugin built from its record plan (:meth:`Screen.of`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .plan import JobStatus, RecordPlan, RecordSpec, TaskStatus, status_enum

#: Widget XML versions of Phoebus's Display Builder (2.0.0 unless listed).
WIDGET_VERSIONS = {"textentry": "3.0.0", "action_button": "3.0.0"}

ROW = 30  # grid row height (px)
COL_LABEL, COL_WIDGET, COL_INFO = 10, 170, 360
W_LABEL, W_WIDGET, W_INFO = 150, 180, 220
WIDTH = COL_INFO + W_INFO + 20

# Colors of the STATUS states (Phoebus's named alarm colors where one fits).
_GREY = ("Off", 60, 100, 60)
# (TaskStatus.INIT == JobStatus.IDLE == 0 as ints: one table per enum.)
_STATE_COLORS: dict[type[TaskStatus] | type[JobStatus], dict[Any, tuple[str, int, int, int]]] = {
    TaskStatus: {
        TaskStatus.INIT: ("INIT", 0, 128, 255),
        TaskStatus.RUN: ("OK", 0, 255, 0),
        TaskStatus.PAUSED: ("MINOR", 255, 128, 0),
        TaskStatus.END: _GREY,
        TaskStatus.ERROR: ("MAJOR", 255, 0, 0),
    },
    JobStatus: {
        JobStatus.IDLE: _GREY,
        JobStatus.RUNNING: ("RUNNING", 0, 128, 255),
        JobStatus.SUCCESS: ("OK", 0, 255, 0),
        JobStatus.FAILED: ("MAJOR", 255, 0, 0),
    },
}


@dataclass(frozen=True)
class Screen:
    """What a plugin screen shows: the plugin and its planned records."""

    name: str
    kind: str  # task | job
    mode: str  # continuous | triggered | job
    pv_prefix: str  # <prefix>:<NAME>
    records: Sequence[RecordSpec]
    state: str = ""

    @classmethod
    def of(cls, plan: RecordPlan, state: str = "") -> Screen:
        """The screen of a plugin's record plan, in ``state`` (``pending``: not served yet)."""
        return cls(plan.name, plan.kind, plan.mode, plan.base, plan.records, state)


def _sub(parent: ET.Element, tag: str, text: object = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = str(text)
    return el


def _widget(
    parent: ET.Element,
    kind: str,
    name: str,
    x: int,
    y: int,
    width: int,
    height: int = 25,
    **props: object,
) -> ET.Element:
    w = _sub(parent, "widget", type=kind, version=WIDGET_VERSIONS.get(kind, "2.0.0"))
    _sub(w, "name", name)
    for key, value in props.items():
        if value is not None:
            _sub(w, key, str(value).lower() if isinstance(value, bool) else value)
    _sub(w, "x", x)
    _sub(w, "y", y)
    _sub(w, "width", width)
    _sub(w, "height", height)
    return w


def _color(parent: ET.Element, tag: str, color: tuple[str, int, int, int]) -> None:
    name, r, g, b = color
    _sub(_sub(parent, tag), "color", name=name, red=str(r), green=str(g), blue=str(b))


def _font(widget: ET.Element, size: float, bold: bool = True) -> None:
    _sub(
        _sub(widget, "font"),
        "font",
        family="Liberation Sans",
        style="BOLD" if bold else "REGULAR",
        size=f"{size:.1f}",
    )


def _label(
    parent: ET.Element,
    text: str,
    x: int,
    y: int,
    width: int = W_LABEL,
    height: int = 25,
    **props: object,
) -> ET.Element:
    return _widget(parent, "label", f"label {text}", x, y, width, height, text=text, **props)


def _status_led(parent: ET.Element, pv: str, kind: str, x: int, y: int, size: int = 20) -> None:
    w = _widget(parent, "multi_state_led", "STATUS led", x, y, size, size, pv_name=pv)
    st = _sub(w, "states")
    states = status_enum(kind)
    for state in states:
        s = _sub(st, "state")
        _sub(s, "value", int(state))
        _sub(s, "label", state.label)
        _color(s, "color", _STATE_COLORS[states].get(state, _GREY))
    _sub(w, "fallback_label", "?")
    _color(w, "fallback_color", ("Invalid", 255, 0, 255))


def _write_one_button(parent: ET.Element, pv: str, text: str, y: int) -> None:
    """An action button that writes 1 to ``pv`` (RUN, CLEAR, RESET), named by the PV's short name."""
    w = _widget(
        parent,
        "action_button",
        pv.rsplit(":", 1)[-1],
        COL_WIDGET,
        y,
        W_WIDGET,
        text=text,
        pv_name=pv,
    )
    action = _sub(_sub(w, "actions"), "action", type="write_pv")
    _sub(action, "pv_name", pv)
    _sub(action, "value", 1)
    _sub(action, "description", text)


def _limits(spec: RecordSpec) -> str:
    s = spec.spec
    parts = []
    if s.low is not None or s.high is not None:
        low = "" if s.low is None else f"{s.low:g}"
        high = "" if s.high is None else f"{s.high:g}"
        parts.append(f"[{low} … {high}]")
    if s.unit:
        parts.append(s.unit)
    if s.type == "bool" and (s.znam or s.onam):
        parts.append(f"0 {s.znam or 'off'} / 1 {s.onam or 'on'}")
    return " ".join(parts)


def _display(title: str, width: int, height: int) -> ET.Element:
    root = ET.Element("display", version="2.0.0")
    _sub(root, "name", title)
    _sub(root, "width", width)
    _sub(root, "height", height)
    return root


def _serialize(root: ET.Element) -> bytes:
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n"


def plugin_screen(screen: Screen) -> bytes:
    """The ``.bob`` screen of one plugin."""
    base = screen.pv_prefix
    by_short = {r.short: r for r in screen.records}
    inputs = [
        r
        for r in screen.records
        if r.writable and r.short not in ("ENABLE", "RUN", "CLEAR", "RESET")
    ]
    outputs = [
        r
        for r in screen.records
        if not r.writable and r.short not in ("STATUS", "MESSAGE", "CYCLE_COUNT")
    ]
    kind = screen.kind if screen.kind == "job" else f"{screen.mode} task"
    root = _display(f"iocmng {screen.name}", WIDTH, 0)
    y = 10
    title = _label(root, screen.name, COL_LABEL, y, WIDTH - 20, 30)
    _font(title, 18.0)
    y += 34
    _label(root, f"{kind} · {base}", COL_LABEL, y, WIDTH - 20, tooltip="PV prefix of this plugin")
    y += ROW + 6

    def row_label(text: str, tooltip: str | None = None) -> None:
        _label(root, text, COL_LABEL, y, tooltip=tooltip)

    def section(text: str) -> None:
        nonlocal y
        y += 6
        w = _label(root, text, COL_LABEL, y, WIDTH - 20)
        _font(w, 14.0)
        y += ROW

    section("State")
    row_label("STATUS")
    _status_led(root, f"{base}:STATUS", screen.kind, COL_WIDGET, y + 2)
    _widget(
        root,
        "textupdate",
        "STATUS text",
        COL_WIDGET + 30,
        y,
        W_WIDGET - 30,
        pv_name=f"{base}:STATUS",
    )
    y += ROW
    row_label("MESSAGE")
    _widget(
        root, "textupdate", "MESSAGE", COL_WIDGET, y, W_WIDGET + W_INFO, pv_name=f"{base}:MESSAGE"
    )
    y += ROW
    if "CYCLE_COUNT" in by_short:
        row_label("CYCLE_COUNT")
        _widget(
            root,
            "textupdate",
            "CYCLE_COUNT",
            COL_WIDGET,
            y,
            W_WIDGET,
            pv_name=f"{base}:CYCLE_COUNT",
        )
        y += ROW
    if {"ENABLE", "RUN", "CLEAR", "RESET"} & by_short.keys():
        section("Control")
    if "ENABLE" in by_short:
        row_label("ENABLE", "0 pauses the task, 1 resumes it")
        w = _widget(
            root,
            "bool_button",
            "ENABLE",
            COL_WIDGET,
            y,
            W_WIDGET,
            pv_name=f"{base}:ENABLE",
            off_label="Disabled",
            on_label="Enabled",
            show_led=True,
        )
        _color(w, "on_color", ("On", 0, 255, 0))
        y += ROW
    if "RUN" in by_short:
        row_label("RUN", "run one cycle; RUN reads 1 while it runs")
        _write_one_button(root, f"{base}:RUN", "Run once", y)
        w2 = _widget(root, "led", "RUN led", COL_INFO, y + 2, 20, 20, pv_name=f"{base}:RUN")
        _color(w2, "on_color", ("RUNNING", 0, 128, 255))
        y += ROW
    for short, text, tip in (
        ("CLEAR", "Clear latches", "release latched outputs to their rule_defaults"),
        ("RESET", "Reset", "CLEAR, forget fired rules, CYCLE_COUNT to 0"),
    ):
        if short in by_short:
            row_label(short, tip)
            _write_one_button(root, f"{base}:{short}", text, y)
            y += ROW
    if inputs:
        section("Inputs")
    for r in inputs:
        row_label(r.short, r.spec.description)
        pv = f"{base}:{r.short}"
        if r.spec.type == "bool":
            _widget(
                root,
                "bool_button",
                r.short,
                COL_WIDGET,
                y,
                W_WIDGET,
                pv_name=pv,
                off_label=r.spec.znam or "0",
                on_label=r.spec.onam or "1",
                show_led=True,
            )
        else:
            _widget(
                root,
                "textentry",
                r.short,
                COL_WIDGET,
                y,
                W_WIDGET,
                pv_name=pv,
                show_units=False,
                precision=r.spec.prec,
                tooltip=f"$(pv_name) {_limits(r)}".strip(),
            )
        info = _limits(r)
        if info:
            _label(root, info, COL_INFO, y, W_INFO)
        y += ROW
    if outputs:
        section("Outputs")
    for r in outputs:
        row_label(r.short, r.spec.description)
        pv = f"{base}:{r.short}"
        if r.spec.type == "bool":
            _widget(
                root,
                "led",
                r.short,
                COL_WIDGET,
                y + 2,
                20,
                20,
                pv_name=pv,
                off_label=r.spec.znam or "",
                on_label=r.spec.onam or "",
            )
            _widget(
                root, "textupdate", f"{r.short} text", COL_WIDGET + 30, y, W_WIDGET - 30, pv_name=pv
            )
        else:
            _widget(
                root,
                "textupdate",
                r.short,
                COL_WIDGET,
                y,
                W_WIDGET,
                pv_name=pv,
                show_units=True,
                precision=r.spec.prec,
            )
        info = _limits(r)
        if info:
            _label(root, info, COL_INFO, y, W_INFO)
        y += ROW
    root.find("height").text = str(y + 10)  # type: ignore[union-attr]
    return _serialize(root)


def overview_screen(
    screens: Sequence[Screen], prefix: str, link: dict[str, str], title: str = "iocmng"
) -> bytes:
    """One row per plugin: name, kind, STATUS, MESSAGE and a button opening its
    screen (``link[name]``: the URL or file of that plugin's ``.bob``)."""
    width = 760
    root = _display(f"{title} {prefix}", width, 0)
    y = 10
    w = _label(root, f"{title} · {prefix}", 10, y, width - 20, 30)
    _font(w, 18.0)
    y += 40
    for col, text in ((10, "Plugin"), (180, "Kind"), (300, "STATUS"), (440, "MESSAGE")):
        _font(_label(root, text, col, y, 120), 12.0)
    y += ROW
    if not screens:
        _label(root, "no plugins", 10, y, 300)
        y += ROW
    for s in screens:
        base = s.pv_prefix
        _label(root, s.name, 10, y, 160)
        _label(root, s.kind if s.kind == "job" else s.mode, 180, y, 110)
        if s.state == "pending":
            _label(root, "pending: waiting for its reload", 300, y, 300)
        else:
            _status_led(root, f"{base}:STATUS", s.kind, 300, y + 2)
            _widget(root, "textupdate", f"{s.name} STATUS", 330, y, 100, pv_name=f"{base}:STATUS")
            _widget(root, "textupdate", f"{s.name} MESSAGE", 440, y, 210, pv_name=f"{base}:MESSAGE")
        button = _widget(root, "action_button", f"open {s.name}", 660, y, 90, text="Open…")
        action = _sub(_sub(button, "actions"), "action", type="open_display")
        _sub(action, "file", link[s.name])
        _sub(action, "target", "tab")
        _sub(action, "description", f"Open {s.name}")
        y += ROW
    root.find("height").text = str(y + 10)  # type: ignore[union-attr]
    return _serialize(root)
