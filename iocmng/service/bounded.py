"""Child processes bounded in time and in output (the validation pipeline's import check and pip).

A plugin's code runs in these children, so they are treated as hostile:

- each child starts a session of its own (``start_new_session``), and at the
  timeout the whole process group is killed, grandchildren included;
- stdout and stderr are read as they come, and only the last ``cap`` bytes
  of each are kept (the import check reports on its last line), so a child
  printing gigabytes costs a few kilobytes here;
- the wait ends when the child itself exits, not when its pipes close: a
  grandchild that keeps them open (a daemon forked at import) cannot hold
  the caller, and is killed with the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

#: Bytes kept of each stream (the tail).
OUTPUT_CAP = 64 * 1024
#: Seconds given to the pipes to drain after the child exited.
DRAIN = 1.0


@dataclass
class Finished:
    returncode: int | None  # None: killed at the timeout
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


async def _tail(stream: asyncio.StreamReader, keep: bytearray, cap: int) -> None:
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        keep += chunk
        if len(keep) > cap:
            del keep[: len(keep) - cap]


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Says when the child itself has exited: ``Process.wait()`` also waits for its pipes
    to close, which a grandchild holding them can put off for ever."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run(
    cmd: list[str],
    timeout: float,
    *,
    cwd: Path | None = None,
    cap: int = OUTPUT_CAP,
    merge_stderr: bool = False,
) -> Finished:
    """Run ``cmd`` (stdin closed) within ``timeout`` seconds; see the module docstring."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.subprocess_exec(
        lambda: _Protocol(65536, loop),
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        cwd=cwd,
        start_new_session=True,
    )
    proc = asyncio.subprocess.Process(transport, protocol, loop)
    out, err = bytearray(), bytearray()
    assert proc.stdout is not None
    readers = [asyncio.ensure_future(_tail(proc.stdout, out, cap))]
    if proc.stderr is not None:
        readers.append(asyncio.ensure_future(_tail(proc.stderr, err, cap)))
    timed_out = False
    try:
        await asyncio.wait_for(protocol.exited.wait(), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        if timed_out or proc.returncode is None:
            _kill_group(proc.pid)
            await protocol.exited.wait()
        # the child is gone; its pipes may still be held by a grandchild: drain briefly, then end it
        _, pending = await asyncio.wait(readers, timeout=DRAIN)
        if pending:  # a grandchild holds the pipes, so the group still exists: end it
            _kill_group(proc.pid)
            for task in pending:
                task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        with contextlib.suppress(TimeoutError):  # let the transport close its pipes
            await asyncio.wait_for(proc.wait(), DRAIN)
    return Finished(None if timed_out else proc.returncode, bytes(out), bytes(err), timed_out)
