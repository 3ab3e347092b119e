"""The boot list: ``IOCMNG_PLUGINS_CONFIG``, plugins registered at a real start.

::

    plugins:
      - name: beam-monitor
        git_url: https://gitlab.example.org/controls/beam-monitor.git
        branch: main
        path: src/monitor
        pat_env: GITLAB_TOKEN      # the token is read from this variable, never from the file
        autostart_order: 1
        parameters: {threshold: 80}
      - name: scratch
        local_path: /opt/plugins/scratch
        auto_start: false          # registered (PVs built), left stopped

A file that cannot be read, is not YAML or has no ``plugins:`` list is a
start-up error naming ``IOCMNG_PLUGINS_CONFIG`` (the service exits 2). A bad
*entry* is reported in ``GET /api/v1/health`` ``boot_errors`` and the other
entries load. Entries are ordered by ``autostart_order`` (those with one
first, ascending), then by their place in the list.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, ValidationError, field_validator

from ..errors import SettingsError
from .settings import StartupPlugin

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class BootEntry(StartupPlugin):
    """One boot list entry (unknown keys are refused, so a typo is not silently ignored)."""

    model_config = ConfigDict(extra="forbid")

    #: The reference's flag; every boot list entry is loaded at boot anyway.
    auto_start_on_boot: bool | None = None
    #: Refused: a token never lives in the file (see pat_env).
    pat: str | None = None

    @field_validator("pat")
    @classmethod
    def _no_pat(cls, v: str | None) -> None:
        if v is not None:
            raise ValueError(
                "a token is not read from the boot list; put it in an environment variable "
                "and name that variable with pat_env (e.g. pat_env: GITLAB_TOKEN)"
            )
        return None

    @field_validator("pat_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not ENV_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v


def _entry_problem(i: int, raw: Any, exc: ValidationError) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "entry"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return (
        f"IOCMNG_PLUGINS_CONFIG plugins[{i}]"
        + (f" ({name})" if name else "")
        + ": "
        + "; ".join(parts)
    )


def read_boot_list(path: Path | None) -> tuple[list[BootEntry], list[str]]:
    """The entries in start order, and one message per refused entry.

    Raises SettingsError (naming IOCMNG_PLUGINS_CONFIG) when the file as a whole is unusable.
    """
    if path is None:
        return [], []
    where = f"IOCMNG_PLUGINS_CONFIG={str(path)!r}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{where}: not valid YAML: {exc}") from None
    if data is None:
        return [], []
    if not isinstance(data, dict) or not isinstance(data.get("plugins", []), list):
        raise SettingsError(f"{where}: expected a mapping with a 'plugins:' list")
    entries: list[BootEntry] = []
    errors: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(data.get("plugins") or []):
        try:
            entry = BootEntry.model_validate(raw)
        except ValidationError as exc:
            errors.append(_entry_problem(i, raw, exc))
            continue
        if bool(entry.git_url) == bool(entry.local_path):
            errors.append(
                f"IOCMNG_PLUGINS_CONFIG plugins[{i}] ({entry.name}): give exactly one of git_url or local_path"
            )
            continue
        if entry.name in seen:
            errors.append(
                f"IOCMNG_PLUGINS_CONFIG plugins[{i}] ({entry.name}): the name is already used by an "
                "earlier entry; this one is ignored"
            )
            continue
        seen.add(entry.name)
        entries.append(entry)
    order = sorted(
        range(len(entries)),
        key=lambda k: (entries[k].autostart_order is None, entries[k].autostart_order or 0, k),
    )
    return [entries[k] for k in order], errors
