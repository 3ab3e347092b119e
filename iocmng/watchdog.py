"""The loop watchdog: measures event-loop lag and catches a plugin hogging the loop.

A heartbeat coroutine wakes every ``period`` and records how late it woke
(the loop lag). A watcher *thread* checks the heartbeat: when the loop has
not turned for longer than ``threshold``, it takes the loop thread's stack
(``sys._current_frames``) while the stall is still happening, finds the
plugin whose code is on it (plugin modules live under ``iocmng_plugins.``),
logs the stack and reports the stall to that plugin's handle.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

from .loader import NAMESPACE
from .runtime import DURATION_BUCKETS, Durations

log = logging.getLogger("iocmng.watchdog")


def plugin_on_stack(frame: object, names: dict[str, str]) -> tuple[str | None, str]:
    """The plugin whose module is innermost on the stack, and where it is."""
    f = frame
    while f is not None:
        module = f.f_globals.get("__name__", "")  # type: ignore[attr-defined]
        if module.startswith(NAMESPACE + "."):
            key = module.split(".")[1]
            code = f.f_code  # type: ignore[attr-defined]
            return names.get(key, key), f"{code.co_filename}:{f.f_lineno} in {code.co_name}"  # type: ignore[attr-defined]
        f = f.f_back  # type: ignore[attr-defined]
    return None, ""


class LoopWatchdog:
    def __init__(
        self,
        threshold: float,
        plugin_names: Callable[[], list[str]],
        on_stall: Callable[[str | None, float, str], None],
        period: float = 0.1,
    ) -> None:
        self.threshold = threshold
        self.period = period
        self.plugin_names = plugin_names
        self.on_stall = on_stall
        self.lag = Durations()
        self.last_lag = 0.0
        self.stalls = 0
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop_thread = threading.get_ident()

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.period)
            self.last_lag = max(0.0, loop.time() - t0 - self.period)
            self.lag.observe(self.last_lag)
            self._beat = time.monotonic()

    def _watch(self) -> None:
        reported_beat = None
        while not self._stop.wait(min(self.threshold / 4, 0.25)):
            beat = self._beat
            stalled = time.monotonic() - beat
            if stalled < self.threshold or beat == reported_beat:
                continue
            reported_beat = beat  # one report per stall
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None:
                continue
            names = {n.replace("-", "_"): n for n in self.plugin_names()}
            plugin, where = plugin_on_stack(frame, names)
            stack = "".join(traceback.format_stack(frame)[-8:])
            self.stalls += 1
            log.error("event loop stalled for more than %.2fs%s; loop thread stack:\n%s", stalled,
                      f" by plugin {plugin} at {where}" if plugin else "", stack)
            try:
                # Runs when the loop turns again: by then the whole stall is known.
                self._loop.call_soon_threadsafe(self._report, plugin, beat, where)
            except RuntimeError:
                return

    def _report(self, plugin: str | None, beat: float, where: str) -> None:
        self.on_stall(plugin, time.monotonic() - beat - self.period, where)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._task = self._loop.create_task(self._heartbeat(), name="iocmng:heartbeat")
        self._thread = threading.Thread(target=self._watch, name="iocmng-watchdog", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})


__all__ = ["DURATION_BUCKETS", "LoopWatchdog"]
