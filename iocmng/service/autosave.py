"""Autosave of operator-set values: input PVs and ENABLE survive reloads and restarts.

softioc ships an autosave thread, but it cannot be flushed on demand at the
instant a reload stops the plugins, it keeps a timestamped backup file per
start (which grows the data directory at every reload) and does not fsync.
This store is small: ``{plugin: {pv: value}}`` in one JSON file, written
atomically a short while after the last change and flushed on stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from .registry import atomic_write

log = logging.getLogger("iocmng.autosave")

AUTOSAVE_FILE = "autosave.json"


class AutosaveStore:
    def __init__(self, data_dir: Path, delay: float = 1.0) -> None:
        self.path = data_dir / AUTOSAVE_FILE
        self.delay = delay
        self.values: dict[str, dict[str, Any]] = {}
        self._dirty = False
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                self.values = {k: v for k, v in data.items() if isinstance(v, dict)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable autosave file %s: %s", self.path, exc)
        return self.values

    def update(self, plugin: str, pv: str, value: Any) -> None:
        """Remember a value; the file is written ``delay`` seconds after the last change."""
        if hasattr(value, "item"):  # numpy scalars from softioc
            value = value.item()
        self.values.setdefault(plugin, {})[pv] = value
        self._schedule()

    def forget(self, plugin: str) -> None:
        """Drop a removed plugin's values (written with the next batch)."""
        if self.values.pop(plugin, None) is not None:
            self._schedule()

    def _schedule(self) -> None:
        self._dirty = True
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._write_soon)

    def _snapshot(self) -> bytes | None:
        # Serialized on the loop, where values change, so the writer thread
        # never sees a dict being modified.
        if not self._dirty:
            return None
        self._dirty = False
        return json.dumps(self.values, indent=1, sort_keys=True).encode()

    def _write_soon(self) -> None:
        self._timer = None
        if self._writing is not None and not self._writing.done():
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._write_soon)
            return
        data = self._snapshot()
        if data is not None:
            self._writing = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self._write, data), name="iocmng:autosave"
            )

    def _write(self, data: bytes) -> None:
        """Write, or log why not: a full or read-only data directory must not stop a reload."""
        try:
            atomic_write(self.path, data)
        except OSError as exc:
            self._dirty = True  # written with the next change or at stop, if space comes back
            log.error(
                "cannot save %s (input PV values may be lost at the next start): %s", self.path, exc
            )

    def flush(self) -> None:
        """Write now if anything changed (blocking: at shutdown only)."""
        data = self._snapshot()
        if data is not None:
            self._write(data)

    async def close(self) -> None:
        """Cancel the pending write and flush what is left."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing is not None:
            await self._writing
        data = self._snapshot()
        if data is not None:
            await asyncio.to_thread(self._write, data)
