"""What clients see of a plugin besides its live state: iocmng 2.7.9's fields.

A listing entry (``GET /api/v1/plugins``) and the startup view keep this
project's fields (``kind``, ``state``, ``source``, ``pvs``...) and add the ones
iocmng 2.7.9's clients read (``status``, ``plugin_type``, ``built_pvs``...),
derived here from the registry entry, the plugin's config.yaml and its record
names. Pure: no I/O, no EPICS.

``status`` speaks 2.7.9's vocabulary, mapped from ``state``:

=============================  ==========
state                          status
=============================  ==========
pending, starting, idle        loaded
running, paused                running
failed                         error
stopped                        stopped
=============================  ==========

2.7.9 also said ``available`` / ``invalid`` for plugin directories found on
disk but not loaded; this service only knows registered plugins, so it never
answers those two (docs/migrating.md).
"""

from __future__ import annotations

from typing import Any

from ..config.models import PluginConfig
from ..epics.plan import DEFAULT_PV_NAMES
from .registry import Entry

LEGACY_STATUS = {
    "pending": "loaded",
    "starting": "loaded",
    "idle": "loaded",
    "running": "running",
    "paused": "running",
    "failed": "error",
    "stopped": "stopped",
}


def legacy_status(state: str) -> str:
    """iocmng 2.7.9's ``status`` for one of our states."""
    return LEGACY_STATUS.get(state, "loaded")


def is_running(state: str) -> bool:
    """2.7.9's ``running``: a task's loop (or armed trigger) is alive, or a job run is in progress."""
    return state in ("running", "paused")


def short_names(base: str, records: list[str]) -> list[str]:
    """Record names without the ``<prefix>:<segment>:`` part (2.7.9's ``built_pvs``)."""
    head = base + ":"
    return [r[len(head) :] if r.startswith(head) else r.rsplit(":", 1)[-1] for r in records]


def pv_definitions(config: PluginConfig | None) -> dict[str, dict[str, Any]]:
    """``{inputs, outputs}`` as config.yaml declares them (``arguments:`` merged in)."""
    if config is None:
        return {"inputs": {}, "outputs": {}}
    pvs = config.pvs.model_dump(mode="json", exclude_none=True)
    return {"inputs": pvs.get("inputs") or {}, "outputs": pvs.get("outputs") or {}}


def legacy_fields(
    entry: Entry,
    config: PluginConfig | None,
    base: str,
    records: list[str],
    mode: str | None,
    class_name: str | None,
) -> dict[str, Any]:
    """The static part of 2.7.9's plugin dict (what does not change while a plugin runs).

    ``base`` is ``<prefix>:<segment>``; ``records`` the full record names;
    ``mode`` the task mode (None for a job); ``class_name`` the plugin's class.
    """
    shorts = short_names(base, records)
    defs = pv_definitions(config)
    src = entry.source
    class_name = class_name or None
    return {
        "plugin_type": entry.kind,
        "class_name": class_name,
        "git_url": src.url or "",  # stored without credentials (sources.strip_credentials)
        "local_path": src.local_path,
        "branch": src.branch,
        "path": src.path,
        "pv_prefix": base,
        "plugin_prefix": base.split(":", 1)[1] if ":" in base else base,
        "mode": mode,
        "auto_start": entry.auto_start,
        "auto_start_on_boot": entry.auto_start_on_boot,
        "autostart_order": entry.autostart_order,
        "pv_definitions": defs,
        "arguments": defs,  # 2.7.9 served the same dict under both names
        "base_control_pvs": [s for s in shorts if s in DEFAULT_PV_NAMES],
        "additional_input_pvs": list(defs["inputs"]),
        "additional_output_pvs": list(defs["outputs"]),
        "built_pvs": shorts,
        # Registered means validated: the add's pipeline passed (the steps are in the add's answer).
        "validation": {
            "ok": True,
            "class_name": class_name,
            "plugin_type": entry.kind,
            "errors": [],
        },
    }


#: Every key the two functions above add (the startup view copies them from the listing entry).
LEGACY_KEYS = (
    "plugin_type",
    "class_name",
    "git_url",
    "local_path",
    "branch",
    "path",
    "pv_prefix",
    "plugin_prefix",
    "mode",
    "auto_start",
    "auto_start_on_boot",
    "autostart_order",
    "pv_definitions",
    "arguments",
    "base_control_pvs",
    "additional_input_pvs",
    "additional_output_pvs",
    "built_pvs",
    "validation",
    "status",
    "running",
    "start_parameters",
)


def legacy_live(state: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The part of 2.7.9's plugin dict that follows the plugin's state."""
    return {
        "status": legacy_status(state),
        "running": is_running(state),
        "start_parameters": parameters,
    }
