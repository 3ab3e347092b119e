"""What plugins hand to the next generation at a reload: counters and saved state.

At a reload each plugin is stopped, its ``save_state()`` called (see
:mod:`iocmng.runtime.runtime`), and what it returned is written with its
counters to ``<data>/carryover.json``, atomically (as the registry). The next
generation reads the file once at boot and removes it. A plugin gets its state
back only if the registry still holds *the same registration*: same name and
same ``added_at`` (a plugin removed and added again under its name starts
fresh). A plain stop and start of the service carries nothing unless
IOCMNG_KEEP_STATE=true.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from ..runtime.handle import Carried
from .registry import Entry, atomic_write

log = logging.getLogger("iocmng.service")

CARRY_FILE = "carryover.json"


def write_carried(
    data_dir: Path, carried: Mapping[str, Carried], entries: Mapping[str, Entry]
) -> None:
    """Write what the registered plugins hand over; log (never raise) if the directory refuses."""
    plugins = {
        name: {
            "added_at": entries[name].added_at,
            "commit": c.commit,
            "counters": c.counters,
            "state": c.state,
        }
        for name, c in carried.items()
        if name in entries
    }
    doc = {"version": 1, "saved_at": time.time(), "plugins": plugins}
    try:
        atomic_write(data_dir / CARRY_FILE, json.dumps(doc).encode())
    except OSError as exc:
        log.error(
            "cannot write %s: the plugins' saved state and counters are lost at this reload: %s",
            CARRY_FILE,
            exc,
        )


def read_carried(data_dir: Path, entries: Mapping[str, Entry]) -> dict[str, Carried]:
    """What the previous generation handed over, for the plugins registered the same way; the file is consumed."""
    path = data_dir / CARRY_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        doc = {}
    finally:
        discard_carried(data_dir)
    plugins = doc.get("plugins") if isinstance(doc, dict) else None
    out: dict[str, Carried] = {}
    for name, saved in (plugins if isinstance(plugins, dict) else {}).items():
        entry = entries.get(name)
        if not isinstance(saved, dict) or entry is None or saved.get("added_at") != entry.added_at:
            log.info("%s: saved state not handed over (the plugin was removed or replaced)", name)
            continue
        counters = saved.get("counters")
        state = saved.get("state")
        commit = saved.get("commit")
        out[name] = Carried(
            counters if isinstance(counters, dict) else {},
            state if isinstance(state, dict) else None,
            commit if isinstance(commit, str) else None,
        )
    return out


def discard_carried(data_dir: Path) -> None:
    """Remove the file (a plain start that keeps no state)."""
    try:
        (data_dir / CARRY_FILE).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove %s: %s", CARRY_FILE, exc)
