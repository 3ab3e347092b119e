"""The supervisor (``iocmng-server --supervise``): bring the service back after a process exit.

Plugins run in the service process (decision 0002), so a plugin that calls
``os._exit()`` or crashes a C extension takes the whole service down. The
supervisor is a small parent process that

* owns the listening HTTP socket and hands it to the service as the reload
  does (``IOCMNG_LISTEN_FD``), so clients queue in its backlog while the
  service is restarted instead of seeing "connection refused";
* runs the service as its child (``python -m iocmng``), which keeps reloading
  itself with ``os.execv`` as usual (same PID, so the child is the same);
* restarts the child when it exits unexpectedly, with a growing delay
  (``BACKOFF``), the service rebuilding everything from the registry;
* after ``QUICK_DEATHS`` deaths in a row each within ``QUICK`` seconds of
  its start, starts the service in *safe mode* (``IOCMNG_SAFE_MODE=1``):
  records are built but no plugin is started, each is ``failed`` with a
  reason, so a plugin that kills the process at every start cannot make the
  service crash-loop; the operator removes or fixes the culprit and
  restarts the others (``POST /plugins/{name}/restart``);
* forwards SIGTERM/SIGINT to the child and exits with the child's status
  after its clean stop (0), or 2 when the child refuses its settings.

The child gets ``PR_SET_PDEATHSIG`` (SIGTERM), so it stops cleanly if the
supervisor itself is killed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

from .reload import LISTEN_FD_ENV, listen_socket

log = logging.getLogger("iocmng.supervisor")

#: Set by the supervisor for each start of the child: a real start (startup list applied).
FRESH_START_ENV = "IOCMNG_FRESH_START"
#: Set for a start after repeated quick deaths: build records, start no plugin.
SAFE_MODE_ENV = "IOCMNG_SAFE_MODE"
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
QUICK = 20.0  # a death within this many seconds of the start counts as quick
QUICK_DEATHS = 3
SETTINGS_EXIT = 2  # the child refused its settings: restarting cannot help


def _pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Supervisor:
    def __init__(self, host: str, port: int, child_args: list[str]) -> None:
        self.sock = listen_socket(host, port)
        self.child_args = child_args
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.deaths = 0  # deaths in a row
        self.quick = 0  # quick deaths in a row

    def _forward(self, signum: int, _frame: object) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def _spawn(self, safe: bool) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        fd = self.sock.fileno()
        env[LISTEN_FD_ENV] = str(fd)
        env[FRESH_START_ENV] = "1"
        if safe:
            env[SAFE_MODE_ENV] = "1"
        else:
            env.pop(SAFE_MODE_ENV, None)
        self.sock.set_inheritable(True)
        return subprocess.Popen(
            [sys.executable, "-m", "iocmng", *self.child_args],
            env=env,
            pass_fds=(fd,),
            preexec_fn=_pdeathsig,
        )

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        while True:
            safe = self.quick >= QUICK_DEATHS
            if safe:
                log.error(
                    "the service died %d times within %.0f s of its start: starting it in safe mode "
                    "(plugins not started)",
                    self.quick,
                    QUICK,
                )
            started = time.monotonic()
            self.child = self._spawn(safe)
            log.info("supervisor: service started (pid %d)", self.child.pid)
            while True:
                try:
                    code = self.child.wait()
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                    continue
            lived = time.monotonic() - started
            if self.stopping or code == 0:
                log.info("supervisor: service stopped (exit %d)", code)
                self.sock.close()
                return (
                    0
                    if code == 0 or self.stopping and code in (-signal.SIGTERM, -signal.SIGINT)
                    else code
                )
            if code == SETTINGS_EXIT:
                self.sock.close()
                return code
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            self.deaths = self.deaths + 1 if lived < 60 else 1
            self.quick = self.quick + 1 if lived < QUICK else 0
            delay = BACKOFF[min(self.deaths - 1, len(BACKOFF) - 1)]
            log.error(
                "supervisor: the service died (%s) after %.1f s; restarting it from the registry in %.1f s",
                how,
                lived,
                delay,
            )
            deadline = time.monotonic() + delay
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.stopping:
                self.sock.close()
                return 0


def supervise(host: str, port: int, child_args: list[str]) -> int:
    return Supervisor(host, port, child_args).run()
