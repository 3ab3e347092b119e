"""Loopback-only EPICS for the benchmarks: free ports and the environment that forces them.

Shared by the bench scripts (run as ``python bench/<script>.py``, so this
sibling module is importable); the tests have their own in tests/conftest.py.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

_reserved: set[int] = set()

LOOPBACK = {
    "EPICS_CA_ADDR_LIST": "127.0.0.1",
    "EPICS_CA_AUTO_ADDR_LIST": "NO",
    "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    "EPICS_PVA_ADDR_LIST": "127.0.0.1",
    "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
}


def free_port() -> int:
    """A loopback port free for TCP and UDP, never handed out twice here."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        if port in _reserved:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        _reserved.add(port)
        return port
    raise RuntimeError("no free loopback port")


def server_env(ca: int, repeater: int, pva: int, pva_bcast: int) -> dict[str, str]:
    """This process's environment without EPICS_/IOCMNG_ variables, forced to loopback ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPICS_", "IOCMNG_"))}
    env.update(LOOPBACK)
    env.update(
        {
            "EPICS_CA_ADDR_LIST": f"127.0.0.1:{ca}",
            "EPICS_CA_SERVER_PORT": str(ca),
            "EPICS_CA_REPEATER_PORT": str(repeater),
            "EPICS_PVA_SERVER_PORT": str(pva),
            "EPICS_PVA_BROADCAST_PORT": str(pva_bcast),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass(frozen=True)
class Ports:
    """The loopback ports of one EPICS server process (each a fresh free port)."""

    ca: int = field(default_factory=free_port)
    repeater: int = field(default_factory=free_port)
    pva: int = field(default_factory=free_port)
    pva_bcast: int = field(default_factory=free_port)

    def env(self) -> dict[str, str]:
        """EPICS environment of the server (and of a CA client that only needs this server)."""
        return server_env(self.ca, self.repeater, self.pva, self.pva_bcast)

    def pva_conf(self) -> dict[str, str]:
        """p4p client configuration that reaches exactly this server."""
        return {
            "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{self.pva_bcast}",
            "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVA_BROADCAST_PORT": str(self.pva_bcast),
            "EPICS_PVA_SERVER_PORT": str(self.pva),
        }
