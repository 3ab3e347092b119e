"""Plugins run locally, without the service: ``iocmng run DIR...``, ``iocmng-run`` and ``run_ioc()``.

:func:`run_plugins` loads plugin directories, builds their records, runs
``iocInit`` once and runs them until SIGINT/SIGTERM, then stops them
(every ``cleanup()`` runs) and returns 0; 2 if a directory is refused.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("iocmng.cli")


def name_from_dir(directory: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", directory.resolve().name.lower()).strip("-_")
    return (name or "plugin")[:40]


async def run_plugins(
    dirs: list[Path],
    prefix: str,
    params: dict[str, Any],
    name: str | None,
    *,
    exact_prefix: bool = False,
    extra_paths: list[Path] | None = None,
    pvout: Path | None = None,
    cls: type | None = None,
) -> int:
    """Run plugin directories; ``exact_prefix`` (iocmng-run, one plugin): PVs are ``<prefix>:<PV>``;
    ``cls`` (one directory holding its config.yaml): the plugin class, instead of the directory's module."""
    # Imported here: `iocmng --help` and the client commands must not load softioc.
    from ..config.settings import load_settings
    from ..epics.ioc import IocBridge
    from .runtime import PluginSpec, Runtime, State

    bridge = IocBridge(prefix, exact=exact_prefix)
    runtime = Runtime(bridge)
    runtime.channelfinder_url = os.environ.get("IOCMNG_CHANNELFINDER_URL") or None
    runtime.link_protocol = load_settings().default_link_protocol
    failed = []
    for d in dirs:
        plugin = name if name and len(dirs) == 1 else name_from_dir(d)
        h = runtime.prepare(
            PluginSpec(plugin, d.resolve(), params, list(extra_paths or []), cls=cls)
        )
        if h.state == State.FAILED:
            failed.append(f"{d}: {h.last_error}")
    if failed:
        for line in failed:
            print(f"iocmng run: refused {line}", file=sys.stderr)
        return 2
    if pvout is not None:  # the reference's --pvout: one full PV name a line
        names = sorted(n for h in runtime.handles.values() if h.records for n in h.records.names())
        await asyncio.to_thread(_write_lines, pvout, names)
    loop = asyncio.get_running_loop()
    bridge.start(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    # Everything built so far (modules, records, plugin objects) lives until
    # exit: move it out of the collector's generations so full collections
    # do not walk it while the loop is ticking (docs/performance.md).
    gc.freeze()
    for h in runtime.handles.values():
        log.info(
            "%s %s (%s): %s",
            h.kind,
            h.name,
            h.mode,
            ", ".join(h.records.names() if h.records else []),
        )
        if h.kind == "job" and h.state == State.IDLE:
            result = await runtime.run_job(h.name)
            print(json.dumps(result), flush=True)
    print("iocmng run: serving; Ctrl-C to stop", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("stopping")
    await runtime.stop()
    return 0


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
