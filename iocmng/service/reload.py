"""The reload: apply a change to the record set by re-executing the service.

An EPICS record database is frozen at ``iocInit`` (softioc refuses new records after it), so a change
that adds or removes records is committed to the registry and then applied
by a new *generation* of the process: the service stops its plugins
gracefully, then ``os.execv`` replaces the process image (same PID, so a
container's PID 1 stays PID 1). The listening HTTP socket survives the exec:
its file descriptor is made inheritable and its number passed in
``IOCMNG_LISTEN_FD``. While no process accepts, the kernel queues new
connections in the socket's backlog, so clients wait instead of seeing
"connection refused". EPICS's own sockets are close-on-exec, which frees the
CA/PVA ports for the next generation.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

log = logging.getLogger("iocmng.reload")

LISTEN_FD_ENV = "IOCMNG_LISTEN_FD"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
BACKLOG = 1024


def listen_socket(host: str, port: int) -> socket.socket:
    """The inherited listening socket if this is a reloaded generation, else a new one."""
    fd = os.environ.pop(LISTEN_FD_ENV, None)
    if fd is not None:
        sock = socket.socket(fileno=int(fd))
        sock.set_inheritable(False)
        log.info("generation inherits the listening socket %s", sock.getsockname()[:2])
        return sock
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def exec_next_generation(sock: socket.socket) -> None:
    """Replace this process with the next generation, handing over ``sock``. Never returns."""
    sock.set_inheritable(True)
    os.environ[LISTEN_FD_ENV] = str(sock.fileno())
    # The signal mask and pending signals survive execve: a SIGTERM sent while
    # the next generation starts Python stays pending until that generation
    # has its handler (see unblock_stop_signals), instead of killing it.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    argv = list(sys.orig_argv)
    log.info("re-executing: %s", " ".join(argv))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.execv(sys.executable, [sys.executable, *argv[1:]])


def unblock_stop_signals() -> None:
    """Deliver a stop signal that arrived during the exec (handlers are installed)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
