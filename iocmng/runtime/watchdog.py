"""The loop watchdog: measures event-loop lag, reports a plugin hogging the loop, stops one that keeps it.

A heartbeat coroutine wakes every ``period`` and records how late it woke
(the loop lag). Three things watch that heartbeat, each able to act when
the one before cannot:

* a watcher *thread*: when the loop has not turned for longer than
  ``threshold``, it takes the loop thread's stack (``sys._current_frames``)
  while the stall is still happening, finds the plugin whose code is on it
  (plugin modules live under ``iocmng_plugins.``), logs the stack and
  reports the stall to that plugin's handle. It needs the GIL, so it only
  sees stalls that release it now and then;
* a ``SIGALRM`` timer, re-armed at every beat, that fires after ``limit``
  seconds without one. Python runs the handler in the loop's thread between
  two bytecodes, so it interrupts pure-Python code that never releases the
  GIL (``while True: pass``): if a plugin's code is on the stack (or the
  running asyncio task is the plugin's), the handler raises
  :class:`PluginStalled` into it, and the service stops the plugin and
  holds it ``failed`` (decision 0013). The timer repeats every second while
  the stall lasts, so a plugin that swallows the exception meets it again;
* a C-level timer (``faulthandler.dump_traceback_later``: a C thread that
  needs no GIL), re-armed at every beat, for what no Python code can
  interrupt (one long C call: ``sum(range(10**12))``, a regular expression
  that backtracks for ever): after ``exit_after`` seconds it writes every
  thread's stack to ``trace_path`` and ends the process with status 1. The
  supervisor (or the container's restart policy) starts the service again;
  at boot :func:`stalled_plugin_in_trace` finds the plugin on the loop
  thread's stack and the service holds it ``failed`` instead of starting it.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .handle import DURATION_BUCKETS, Durations, PluginStalled
from .loader import NAMESPACE

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


def plugin_of_task(task: asyncio.Task[Any] | None, names: dict[str, str]) -> str | None:
    """The plugin a task runs for, from the runtime's task names (``plugin:<name>[:what]``)."""
    if task is None:
        return None
    parts = task.get_name().split(":")
    if len(parts) >= 2 and parts[0] == "plugin" and parts[1] in names.values():
        return parts[1]
    return None


_FRAME = re.compile(r'^\s*File "(?P<file>.*)", line (?P<line>\d+) in (?P<func>.*)$')


def stalled_plugin_in_trace(text: str, plugin_dirs: dict[str, Path]) -> tuple[str | None, str]:
    """The plugin whose code was innermost on the loop thread when the C-level timer fired.

    ``text`` is what ``faulthandler`` wrote: one block per thread, frames
    most recent first. The loop thread is the one running asyncio's
    ``run_forever``; the first of its frames in a file under a plugin's
    directory names the plugin. ``(None, "")`` when no plugin is on it.
    """
    blocks: list[list[re.Match[str]]] = []
    for line in text.splitlines():
        if line.startswith(("Thread 0x", "Current thread 0x")):
            blocks.append([])
        elif blocks and (m := _FRAME.match(line)):
            blocks[-1].append(m)
    dirs = {name: d.resolve() for name, d in plugin_dirs.items()}
    for frames in blocks:
        if not any(
            m["file"].endswith("base_events.py") and m["func"] == "run_forever" for m in frames
        ):
            continue
        for m in frames:
            path = Path(m["file"])
            for name, d in dirs.items():
                if path.is_relative_to(d):
                    return name, f"{m['file']}:{m['line']} in {m['func']}"
    return None, ""


class LoopWatchdog:
    def __init__(
        self,
        threshold: float,
        plugin_names: Callable[[], list[str]],
        on_stall: Callable[[str | None, float, str], None],
        period: float = 0.1,
        limit: float | None = None,
        on_limit: Callable[[str, str], None] | None = None,
        trace_path: Path | None = None,
    ) -> None:
        self.threshold = threshold
        self.period = period
        self.plugin_names = plugin_names
        self.on_stall = on_stall
        #: stop the plugin holding the loop this long (SIGALRM); None: report only
        self.limit = limit
        self.on_limit = on_limit
        #: end the process when the loop is held this long (C-level timer)
        self.exit_after = exit_after(limit) if limit is not None else None
        self.trace_path = trace_path
        self._trace: IO[str] | None = None
        self._alarm = False
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
            self._arm()

    def _arm(self) -> None:
        """Push both timers back: they fire only when no beat comes for their whole delay."""
        if self._alarm:
            signal.setitimer(signal.ITIMER_REAL, self.limit, 1.0)  # type: ignore[arg-type]
        if self._trace is not None:
            faulthandler.dump_traceback_later(self.exit_after, exit=True, file=self._trace)  # type: ignore[arg-type]

    def _on_alarm(self, _signum: int, frame: Any) -> None:
        """SIGALRM, run by Python in the loop's thread: the loop has not turned for ``limit`` s."""
        names = {n.replace("-", "_"): n for n in self.plugin_names()}
        plugin, where = plugin_on_stack(frame, names)
        if plugin is None:
            plugin = plugin_of_task(asyncio.current_task(self._loop), names)
            where = (
                f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
                if frame
                else "?"
            )
        if plugin is None:  # idle, or the service's own code: the C-level timer acts if it lasts
            return
        held = time.monotonic() - self._beat
        reason = (
            f"stopped by the watchdog: held the event loop for {held:.1f}s (limit {self.limit:g}s, "
            f"IOCMNG_STALL_LIMIT) at {where}"
        )
        assert self.on_limit is not None
        self.on_limit(plugin, reason)
        raise PluginStalled(plugin, reason)

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
            log.error(
                "event loop stalled for more than %.2fs%s; loop thread stack:\n%s",
                stalled,
                f" by plugin {plugin} at {where}" if plugin else "",
                stack,
            )
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
        if self.limit is None:
            return
        if threading.current_thread() is threading.main_thread() and signal.getsignal(
            signal.SIGALRM
        ) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGALRM, self._on_alarm)
            self._alarm = True
        else:
            log.warning(
                "SIGALRM is not free here: a plugin holding the loop is reported, not stopped"
            )
        if self.trace_path is not None:
            try:
                self._trace = open(self.trace_path, "w")  # noqa: SIM115 - open for the generation's life
            except OSError as exc:
                log.warning("cannot open %s (%s): no C-level stall limit", self.trace_path, exc)
        self._arm()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        if self._alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            self._alarm = False
        if self._trace is not None:
            faulthandler.cancel_dump_traceback_later()
            self._trace.close()
            self._trace = None


def exit_after(limit: float) -> float:
    """Seconds of a held loop after which the process ends (the C-level timer): 3 x the limit."""
    return 3 * limit


__all__ = [
    "DURATION_BUCKETS",
    "LoopWatchdog",
    "PluginStalled",
    "exit_after",
    "stalled_plugin_in_trace",
]
