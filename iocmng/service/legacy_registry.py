"""iocmng 2.7.9's persisted plugins, taken over once when a site swaps the image.

2.7.9 kept the plugins added with ``auto_start_on_boot: true`` in
``<IOCMNG_PLUGINS_DIR>/autostart_plugins.yaml``::

    plugins:
      - {name: beam-monitor, git_url: https://..., branch: main, path: src/monitor,
         pat: ghp_..., auto_start: true, auto_start_on_boot: true, autostart_order: 1,
         parameters: {threshold: 80}}

At a real start, every entry whose name the registry does not hold yet goes
through the validation pipeline like a boot list entry (its ``pat``, if any,
is used for that clone only: never logged, never written anywhere by us).
A name taken over is written to ``.iocmng-2.7.9-imported`` (names only), so
removing it later through the API removes it for good. 2.7.9's file is left as
it is (a rollback to 2.7.9 still works); it holds tokens in plain text, which
the log says at every start while it exists.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..config.settings import StartupPlugin
from .registry import atomic_write

log = logging.getLogger("iocmng.service")

LEGACY_FILE = "autostart_plugins.yaml"
DONE_FILE = ".iocmng-2.7.9-imported"


def read_legacy(data_dir: Path) -> tuple[list[tuple[StartupPlugin, str | None]], list[str]]:
    """The entries not taken over yet, each with its token (or None), and one message per unusable entry."""
    path = data_dir / LEGACY_FILE
    if not path.is_file():
        return [], []
    where = f"iocmng 2.7.9's {path}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        return [], [f"{where}: cannot read it: {exc}"]
    raw_entries = data.get("plugins") if isinstance(data, dict) else None
    if not isinstance(raw_entries, list):
        return [], [f"{where}: expected a mapping with a 'plugins:' list"]
    done = imported(data_dir)
    entries: list[tuple[StartupPlugin, str | None]] = []
    errors: list[str] = []
    has_token = False
    for i, raw in enumerate(raw_entries):
        if not isinstance(raw, dict):
            errors.append(f"{where} plugins[{i}]: not a mapping")
            continue
        pat = raw.get("pat") or None
        has_token |= pat is not None
        fields: dict[str, Any] = {k: v for k, v in raw.items() if k != "pat" and v is not None}
        try:
            sp = StartupPlugin.model_validate(fields)
        except ValidationError as exc:
            errors.append(f"{where} plugins[{i}]: " + "; ".join(e["msg"] for e in exc.errors()))
            continue
        if sp.name not in done:
            entries.append((sp, str(pat) if pat is not None else None))
    if has_token:
        log.warning(
            "%s holds git tokens in plain text; delete it once its plugins run here "
            "(this service keeps no token on disk)",
            path,
        )
    return entries, errors


def imported(data_dir: Path) -> set[str]:
    try:
        return set(json.loads((data_dir / DONE_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return set()


def mark_imported(data_dir: Path, name: str) -> None:
    names = imported(data_dir) | {name}
    atomic_write(data_dir / DONE_FILE, json.dumps(sorted(names)).encode())
