"""A plugin that holds the event loop past the watchdog's limit is stopped and stays failed (issue 14, item 3).

The watchdog must act while the plugin's code holds the GIL, where its
thread cannot run:

* pure-Python code that never returns (``while True: pass`` in an
  ``async def execute``): the SIGALRM timer raises into it after
  ``IOCMNG_STALL_LIMIT`` seconds; the plugin is stopped, ``failed`` with the
  reason (REST, STATUS, MESSAGE), the service answers throughout, and it is
  still failed after a restart of the service, until a restart on purpose;
* code no Python signal handler can interrupt (one long C call,
  ``sum(range(10**15))``) and code that swallows the watchdog's exception:
  the C-level timer ends the process after 3 x the limit, the supervisor
  starts it again, and the plugin on the loop's stack is held failed
  instead of freezing the service again.

Each stall starts when the test creates the plugin's flag file, so that a
restart on purpose (after removing it) is seen to run again.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import wait_for_sync

from .conftest import Server, ServerFactory

pytestmark = pytest.mark.timeout(240)

LIMIT = 2.0  # IOCMNG_STALL_LIMIT: the C-level timer ends the process after 3 x this

HEAD = "import os\nfrom iocmng import TaskBase\n\n"
PLUGINS = {
    "neighbour": """
class Neighbour(TaskBase):
    async def initialize(self): pass
    async def execute(self): pass
    async def cleanup(self): pass
""",
    # pure Python, never returns: the SIGALRM timer interrupts it
    "spinner": """
class Spinner(TaskBase):
    async def initialize(self): pass
    async def execute(self):
        if os.path.exists(self.parameters["flag"]):
            while True:
                pass
    async def cleanup(self): pass
""",
    # one C call of hours: no Python signal handler runs until it returns
    "cspin": """
class CSpin(TaskBase):
    async def initialize(self): pass
    async def execute(self):
        if os.path.exists(self.parameters["flag"]):
            sum(range(10**15))
    async def cleanup(self): pass
""",
    # swallows the watchdog's exception (a bare except) and goes on spinning
    "swallower": """
class Swallower(TaskBase):
    async def initialize(self): pass
    async def execute(self):
        if os.path.exists(self.parameters["flag"]):
            while True:
                try:
                    while True:
                        pass
                except BaseException:
                    pass
    async def cleanup(self): pass
""",
}


def plugin_dir(root: Path, name: str, flag: Path) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "plugin.py").write_text(HEAD + PLUGINS[name])
    (d / "config.yaml").write_text(json.dumps({"parameters": {"interval": 0.1, "flag": str(flag)}}))
    return d


def info(srv: Server, name: str) -> dict[str, Any]:
    r = srv.call("GET", f"/plugins/{name}", timeout=30)
    assert r.status == 200, r.text
    return r.body


def pv(srv: Server, plugin: str, short: str) -> Any:
    r = srv.call("GET", f"/pvs/{srv.pv(plugin, short)}", timeout=30)
    assert r.status == 200, r.text
    return r.body["value"]


def registered(srv: Server, name: str) -> dict[str, Any]:
    return json.loads((srv.data_dir / "registry.json").read_text())["plugins"][name]


def failed(srv: Server, name: str, timeout: float = 30) -> dict[str, Any]:
    def one() -> dict[str, Any] | None:
        try:
            i = info(srv, name)
        except (OSError, urllib.error.URLError):
            return None  # the process is being restarted
        return i if i["state"] == "failed" else None

    return wait_for_sync(one, timeout=timeout, interval=0.2, what=f"{name} failed")


def running(srv: Server, name: str, timeout: float = 30) -> dict[str, Any]:
    def one() -> dict[str, Any] | None:
        try:
            i = info(srv, name)
        except (OSError, urllib.error.URLError):
            return None
        return i if i["state"] == "running" and i["cycle_count"] > 0 else None

    return wait_for_sync(one, timeout=timeout, interval=0.2, what=f"{name} running")


def cycles(srv: Server, name: str) -> int:
    return int(info(srv, name)["cycle_count"])


def make_server(
    factory: ServerFactory, tmp_path: Path, names: list[str], supervise: bool
) -> Server:
    root = tmp_path / "plugins"
    entries = [
        {"name": n, "local_path": str(plugin_dir(root, n, tmp_path / f"{n}.flag"))} for n in names
    ]
    config = tmp_path / "service.yaml"
    config.write_text(json.dumps({"plugins": entries}))
    return factory(
        args=("--supervise",) if supervise else (),
        start=False,
        env={
            "IOCMNG_CONFIG": str(config),
            "IOCMNG_STALL_LIMIT": str(LIMIT),
            "IOCMNG_RELOAD_DELAY": "0.1",
        },
    )


class HealthPoller:
    """Polls /health from a thread; records the slowest answer and any failure."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.slowest = 0.0
        self.errors: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                status = self.srv.call("GET", "/health", timeout=3 * LIMIT + 10).status
                if status != 200:
                    self.errors.append(f"status {status}")
            except (OSError, urllib.error.URLError) as exc:
                self.errors.append(repr(exc))
            self.slowest = max(self.slowest, time.monotonic() - t0)
            self.count += 1
            self._stop.wait(0.1)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_python_stall_is_stopped_and_stays_failed(
    tmp_path: Path, server_factory: ServerFactory
) -> None:
    srv = make_server(server_factory, tmp_path, ["neighbour", "spinner"], supervise=False)
    srv.start()
    running(srv, "neighbour")
    running(srv, "spinner")
    pid = srv.pid

    with HealthPoller(srv) as health:
        (tmp_path / "spinner.flag").touch()
        spinner = failed(srv, "spinner")
        n0 = cycles(srv, "neighbour")
        # Part of the test, not a wait for a condition: one second for the neighbour to cycle
        # and for the health poller to collect answers after the stall (health.count below).
        time.sleep(1.0)
        assert cycles(srv, "neighbour") > n0, "the neighbour did not run after the stall"
    # the stall held every request for about the limit, no longer; none failed
    assert not health.errors, health.errors
    assert health.count > 10 and health.slowest < 3 * LIMIT, (health.count, health.slowest)
    assert srv.alive() and srv.pid == pid

    reason = spinner["last_error"]
    assert "stopped by the watchdog" in reason and "IOCMNG_STALL_LIMIT" in reason, spinner
    assert "plugin.py" in reason, reason  # where it was held
    assert pv(srv, "spinner", "STATUS") in ("ERROR", 4), pv(srv, "spinner", "STATUS")
    assert "stopped by the watchdog" in pv(srv, "spinner", "MESSAGE")
    assert registered(srv, "spinner")["failed"] == reason
    assert info(srv, "neighbour")["state"] == "running"
    assert "stopped by the watchdog" in srv.log()

    # -- a restart of the service does not start it again (no second freeze) ------------------
    assert srv.stop() == 0
    srv.start()
    running(srv, "neighbour")
    again = info(srv, "spinner")
    assert again["state"] == "failed" and again["last_error"] == reason, again
    assert again["cycle_count"] == 0, again
    assert pv(srv, "spinner", "STATUS") in ("ERROR", 4)

    # -- a restart on purpose lifts the hold -------------------------------------------------
    (tmp_path / "spinner.flag").unlink()
    r = srv.call("POST", "/plugins/spinner/restart", timeout=30)
    assert r.status == 200, r.text
    running(srv, "spinner")
    assert registered(srv, "spinner").get("failed") is None
    assert srv.stop() == 0
    srv.start()
    running(srv, "spinner")


def test_c_level_stall_ends_the_process_and_the_plugin_is_held(
    tmp_path: Path, server_factory: ServerFactory
) -> None:
    srv = make_server(server_factory, tmp_path, ["neighbour", "cspin", "swallower"], supervise=True)
    srv.start()
    for name in ("neighbour", "cspin", "swallower"):
        running(srv, name)
    service = psutil.Process(srv.pid).children()[0].pid

    for name in ("cspin", "swallower"):
        (tmp_path / f"{name}.flag").touch()
        held = failed(srv, name, timeout=3 * LIMIT + 40)
        reason = held["last_error"]
        assert "stopped by the watchdog" in reason and "could not interrupt" in reason, held
        assert "plugin.py" in reason, reason
        kids = psutil.Process(srv.pid).children()
        assert len(kids) == 1 and kids[0].pid != service, "the process did not end and restart"
        service = kids[0].pid
        assert registered(srv, name)["failed"] == reason
        assert any(name in e for e in srv.health()["boot_errors"]), srv.health()
        assert (srv.data_dir / "watchdog-trace.last.txt").read_text().strip()
        running(srv, "neighbour")
    assert info(srv, "cspin")["state"] == "failed"  # still held after the second restart

    # a restart on purpose runs it again
    (tmp_path / "cspin.flag").unlink()
    r = srv.call("POST", "/plugins/cspin/restart", timeout=30)
    assert r.status == 200, r.text
    running(srv, "cspin")
    assert psutil.Process(srv.pid).children()[0].pid == service
