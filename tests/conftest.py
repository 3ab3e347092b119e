"""Shared test helpers: loopback-only EPICS, free ports, polling, the runner.

EPICS clients and servers find each other by UDP broadcast on well-known
ports; on a shared machine that would reach other people's IOCs. Every
server started here therefore gets its own free loopback ports and an
environment forced to 127.0.0.1 (the pattern of ophyd-async's
``configure_epics_environment``).

The catch is the client side: aioca (libca) reads the environment once, when
its context is created at the first call, so the CA client of this pytest
process cannot learn a new server's port later. So at import time we reserve
a pool of CA server ports and put every one of them in
``EPICS_CA_ADDR_LIST`` (``127.0.0.1:PORT`` entries; searches to a port with
no server are harmless). Each runner started by a test takes the next port of
that pool. p4p has no such problem: a ``Context`` is created per server
with its addresses passed explicitly (:func:`pva_context`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "plugins_examples"
#: Files of iocmng 2.7.9 (its README examples), verbatim: they must keep loading.
REFERENCE_2_7_9 = REPO / "tests" / "reference_2_7_9"

#: CA server ports known to this process's CA client; servers started by a
#: session take them in turn (a port is reused after CA_POOL_SIZE servers).
CA_POOL_SIZE = 48

_reserved: set[int] = set()


def free_port() -> int:
    """A loopback port free for both TCP and UDP, never handed out twice here."""
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
    raise RuntimeError("no free loopback port found")


def loopback_env() -> dict[str, str]:
    """EPICS variables that keep CA and PVA on 127.0.0.1 (no ports chosen)."""
    return {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    }


# -- the CA client of this process: configured before aioca's first call ---------------
CA_PORT_POOL: list[int] = [free_port() for _ in range(CA_POOL_SIZE)]
_ca_pool_next = 0

os.environ.update(loopback_env())
os.environ.update(
    {
        "EPICS_CA_ADDR_LIST": " ".join(f"127.0.0.1:{p}" for p in CA_PORT_POOL),
        "EPICS_CA_REPEATER_PORT": str(free_port()),
        "EPICS_CA_SERVER_PORT": str(CA_PORT_POOL[0]),
        "EPICS_PVA_SERVER_PORT": str(free_port()),
        "EPICS_PVA_BROADCAST_PORT": str(free_port()),
    }
)
for _var in (
    "EPICS_CA_NAME_SERVERS",
    "EPICS_PVA_NAME_SERVERS",
    "IOCMNG_PREFIX",
    "IOCMNG_CONFIG",
    "IOCMNG_BEAMLINE_CONFIG",
):
    os.environ.pop(_var, None)


@dataclass(frozen=True)
class EpicsPorts:
    """The ports of one server process, and the environment that forces them."""

    ca_server: int
    ca_repeater: int
    pva_server: int
    pva_broadcast: int

    @classmethod
    def allocate(cls) -> EpicsPorts:
        global _ca_pool_next
        # Round robin: past the end of the pool, the oldest ports come back;
        # their servers (modules run in order) are long gone by then.
        ca = CA_PORT_POOL[_ca_pool_next % len(CA_PORT_POOL)]
        _ca_pool_next += 1
        return cls(ca, free_port(), free_port(), free_port())

    def env(self) -> dict[str, str]:
        """The full process environment for a server subprocess."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EPICS_", "IOCMNG_"))}
        env.update(loopback_env())
        env.update(
            {
                "EPICS_CA_SERVER_PORT": str(self.ca_server),
                "EPICS_CA_REPEATER_PORT": str(self.ca_repeater),
                "EPICS_PVA_SERVER_PORT": str(self.pva_server),
                "EPICS_PVA_BROADCAST_PORT": str(self.pva_broadcast),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def pva_conf(self) -> dict[str, str]:
        """p4p client configuration that reaches exactly this server."""
        return {
            "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{self.pva_broadcast}",
            "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVA_BROADCAST_PORT": str(self.pva_broadcast),
            "EPICS_PVA_SERVER_PORT": str(self.pva_server),
        }


@pytest.fixture
def epics_ports() -> EpicsPorts:
    """Fresh loopback ports (CA port from the client's pool) for one server."""
    return EpicsPorts.allocate()


# -- polling instead of sleeping ----------------------------------------------------------
async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value; return that value.

    Fails the test with the last value seen (or exception raised) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if inspect.isawaitable(last):
                last = await last
        except Exception as exc:  # e.g. a channel not connected yet
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}: last {last!r}"
            )
        await asyncio.sleep(interval)


def wait_for_sync(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """:func:`wait_for` for code without an event loop (fixtures)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}: last {last!r}"
            )
        time.sleep(interval)


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    return wait_for


# -- the runner (`iocmng run`) in a subprocess -----------------------------------------------
def random_prefix() -> str:
    return "T" + uuid.uuid4().hex[:8].upper()


def plugin_pv_name(directory: Path) -> str:
    """The upper-cased plugin name the runner derives from a directory."""
    from iocmng.runtime.local import name_from_dir

    return name_from_dir(directory).upper()


def runner_command(
    dirs: list[Path], prefix: str | None, params: list[str], extra: list[str] | None = None
) -> list[str]:
    cmd = [sys.executable, "-m", "iocmng.cli", "run", *map(str, dirs)]
    if prefix is not None:
        cmd += ["--prefix", prefix]
    for p in params:
        cmd += ["-p", p]
    return cmd + list(extra or [])


@dataclass
class Runner:
    """A running ``iocmng run`` process and how to reach its PVs."""

    proc: subprocess.Popen[bytes]
    prefix: str
    ports: EpicsPorts
    log_path: Path
    out_path: Path
    dirs: list[Path]
    returncode: int | None = None
    _stopped: bool = field(default=False, repr=False)

    def pv(self, plugin: str, short: str) -> str:
        """Full PV name of ``short`` of the plugin named (directory name accepted)."""
        return f"{self.prefix}:{plugin.upper()}:{short}"

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Signal the runner and wait for it to exit; return the exit code."""
        if not self._stopped:
            self._stopped = True
            _purge_ca_channels()
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.returncode = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(
                    f"runner did not exit within {timeout}s of signal {sig}:\n{self.stderr()}"
                ) from None
        assert self.returncode is not None
        return self.returncode


def _purge_ca_channels() -> None:
    """Close this process's CA channels before a server goes away.

    aioca hands connection events to the event loop a channel was created on;
    a test's loop is closed when the test ends, so a server stopping later
    would make libca's callback thread call into a closed loop.
    """
    if "aioca" in sys.modules:
        import aioca

        aioca.purge_channel_caches()


def pv_answers(ports: EpicsPorts, pv: str, timeout: float = 1.0) -> bool:
    """True when ``pv`` answers a PVA get on the server at ``ports``."""
    from p4p.client.thread import Context

    ctx = Context("pva", conf=ports.pva_conf(), useenv=False)
    try:
        ctx.get(pv, timeout=timeout)
        return True
    finally:
        ctx.close()


def start_runner(
    dirs: list[Path],
    workdir: Path,
    params: list[str] = (),
    prefix: str | None = None,
    ready_timeout: float = 30.0,
) -> Runner:
    """Start ``iocmng run DIRS --prefix PREFIX`` and wait until its first plugin's STATUS answers."""
    prefix = prefix or random_prefix()
    ports = EpicsPorts.allocate()
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    log_path, out_path = workdir / f"runner-{tag}.err", workdir / f"runner-{tag}.out"
    with open(log_path, "wb") as err, open(out_path, "wb") as out:
        proc = subprocess.Popen(
            runner_command(dirs, prefix, list(params)),
            env=ports.env(),
            cwd=workdir,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    runner = Runner(proc, prefix, ports, log_path, out_path, list(dirs))
    probe = f"{prefix}:{plugin_pv_name(dirs[0])}:STATUS"

    def ready() -> bool:
        _raise_if_dead(runner)
        return "serving" in runner.stderr() and pv_answers(ports, probe)

    try:
        wait_for_sync(ready, timeout=ready_timeout, interval=0.2, what=f"{probe} to answer")
    except BaseException:
        runner.stop(signal.SIGKILL)
        raise
    return runner


def _raise_if_dead(runner: Runner) -> None:
    # pytest.fail raises a BaseException, so the polling loop does not swallow it
    if not runner.alive():
        pytest.fail(
            f"runner exited with {runner.proc.returncode} before serving:\n{runner.stderr()}"
        )


#: What each example logs from its cleanup() at info level.
CLEANUP_MARKS = {
    "sync_monitor": re.compile(r"iocmng\.plugin\.sync_monitor: stopped after \d+ cycles"),
    "async_monitor": re.compile(r"iocmng\.plugin\.async_monitor: wave stopped"),
}


def stop_and_check(runner: Runner) -> str:
    """Stop with SIGINT; assert exit code 0 and that every known cleanup() ran. Returns stderr."""
    rc = runner.stop(signal.SIGINT)
    log = runner.stderr()
    assert rc == 0, f"runner exited with {rc}:\n{log}"
    for d in runner.dirs:
        mark = CLEANUP_MARKS.get(d.name)
        if mark is not None:
            assert mark.search(log), f"cleanup() of {d.name} did not run:\n{log}"
    assert "Traceback" not in log.split("stopping", 1)[-1], f"errors while stopping:\n{log}"
    return log


@pytest.fixture
def runner_factory(tmp_path: Path) -> Iterator[Callable[..., Runner]]:
    """Start runners for one test; each is stopped (SIGINT, exit 0, cleanup ran) at teardown."""
    started: list[Runner] = []

    def factory(dirs: list[Path], params: list[str] = (), prefix: str | None = None) -> Runner:
        r = start_runner(dirs, tmp_path / "runner", params, prefix)
        started.append(r)
        return r

    yield factory
    for r in started:
        if not r._stopped:
            stop_and_check(r)


def pva_context(ports: EpicsPorts) -> Any:
    """A p4p asyncio client Context that reaches the server at ``ports`` only."""
    from p4p.client.asyncio import Context

    return Context("pva", conf=ports.pva_conf(), useenv=False)
