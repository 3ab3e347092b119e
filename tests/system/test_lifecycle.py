"""The life of one ``iocmng-server``: plugins from git repos, jobs, triggers, removal, restarts.

One server (module scope) gets three plugins added from git repos made in a
temporary directory: a continuous task at the repo root, a triggered task
under a sub-path and a job. The tests below then follow that server's life
in order, each checking one behaviour:

* the adds answer 201 and the reload brings all three up in the same process;
* the listings show the source without credentials, the commit and PV names;
* all three have live PVs over CA and PVA, and the task cycles;
* the job runs over REST (in the service process; a failure is a result;
  409 while it runs);
* RUN triggers a cycle with a put-callback, and so does its REST twin;
* a removal drops only that plugin's PVs, and input PVs survive the reload;
* a live plugin restart keeps the generation and the records;
* a restart of the service restores the registry and the input PV values.

The last two build on what earlier tests did (ENABLE=0, a failed job run);
they fail with a clear message when those did not run or failed, so run the
module, not one of them alone.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from dataclasses import dataclass, field
from typing import Any

import pytest
from aioca import caget, camonitor, caput
from conftest import EXAMPLES, wait_for

from .conftest import (
    Reply,
    Server,
    ServerFactory,
    ca_gone,
    ca_value,
    make_repo,
    pva_answers,
)

pytestmark = pytest.mark.timeout(150)

PROBLEM = "application/problem+json"
SECRET = "ghp_SECRET123"


@dataclass
class Life:
    """The shared server and what happened to it so far."""

    srv: Server
    repos: dict[str, str]
    h0: dict[str, Any]  # health before the adds
    bodies: list[dict[str, Any]]  # the add requests
    adds: list[Reply]  # and their answers
    h1: dict[str, Any] | None = None  # health once the adds are live
    gen: int | None = None  # the generation the live plugin restart kept
    done: set[str] = field(default_factory=set)  # the tests that passed

    def needs(self, *tests: str) -> None:
        """Fail unless ``tests`` of this module passed before: their effects are this one's
        starting point."""
        missing = [t for t in tests if t not in self.done]
        if missing:
            pytest.fail(f"needs {', '.join(missing)} to have passed first (run the whole module)")


@pytest.fixture(scope="module")
def life(module_server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory) -> Life:
    """Start the server and add a continuous task, a triggered task (with path) and a job."""
    git_root = tmp_path_factory.mktemp("git")
    repos = {
        "monitor": make_repo(git_root / "monitor", {".": EXAMPLES / "sync_monitor"}),
        "scan": make_repo(
            git_root / "scan",
            {"README.md": "scans\n", "plugins/scan": EXAMPLES / "triggered_scan"},
        ),
        "diag": make_repo(git_root / "diag", {"jobs/diagnostics": EXAMPLES / "diagnostics_job"}),
    }
    srv = module_server_factory(start=False)
    h0 = srv.start()
    adds = [
        (
            "tasks",
            {
                "name": "monitor",
                "git_url": repos["monitor"],
                "branch": "main",
                "parameters": {"interval": 0.2},
            },
        ),
        (
            "tasks",
            {
                "name": "scan",
                "git_url": repos["scan"],
                "branch": "main",
                "path": "plugins/scan",
                "parameters": {"dwell": 0.01},
            },
        ),
        ("jobs", {"name": "diag", "git_url": repos["diag"], "path": "jobs/diagnostics"}),
    ]
    replies = [srv.call("POST", f"/{coll}", body) for coll, body in adds]
    life = Life(srv, repos, h0, [body for _, body in adds], replies)
    if all(r.status == 201 for r in replies):  # else test_adds says why; the others fail too
        life.h1 = srv.wait_generation(replies[-1].body["generation"])
    return life


async def _ca_greater(pv: str, value: float) -> bool:
    return await caget(pv, timeout=2) > value


async def _ca_equals(pv: str, value: str) -> bool:
    return await caget(pv, timeout=2, datatype=str) == value


async def _health(srv: Server) -> dict[str, Any]:
    r = await srv.acall("GET", "/health", timeout=10)
    assert r.status == 200, r.text
    return r.body


async def _state(srv: Server, name: str) -> str:
    return (await srv.acall("GET", f"/tasks/{name}")).body["state"]


def test_adds_reload_in_the_same_process(life: Life) -> None:
    h0 = life.h0
    assert h0["status"] == "ok" and h0["plugins"]["total"] == 0
    generations = []
    for body, r in zip(life.bodies, life.adds, strict=True):
        assert r.status == 201, r.text
        assert r.body["reload_pending"] is True
        assert r.body["plugin"]["name"] == body["name"]
        assert all(s["ok"] for s in r.body["steps"])
        assert SECRET not in r.text
        generations.append(r.body["generation"])
    assert generations == sorted(generations) and generations[0] > h0["generation"]
    h1 = life.h1
    assert h1 is not None
    assert h1["tasks_count"] == 2 and h1["jobs_count"] == 1
    assert h1["plugins"].get("failed", 0) == 0, h1
    # the same PID serves every generation (re-exec, not a new process)
    assert life.srv.alive()
    life.done.add("test_adds_reload_in_the_same_process")


async def test_listings(life: Life) -> None:
    """Source without credentials, commit SHA, PV names."""
    srv, repos = life.srv, life.repos
    r = await srv.acall("GET", "/tasks/scan")
    assert r.status == 200, r.text
    scan = r.body
    assert scan["mode"] == "triggered" and scan["state"] == "running"
    assert scan["source"]["url"] == repos["scan"] and scan["source"]["path"] == "plugins/scan"
    assert re.fullmatch(r"[0-9a-f]{40}", scan["source"]["commit"])
    assert srv.pv("scan", "RUN") in scan["pvs"]
    r = await srv.acall("GET", "/jobs")
    assert r.body["count"] == 1
    assert [j["name"] for j in r.body["plugins"]] == ["diag"] and r.body["plugins"][0][
        "state"
    ] == "idle"
    r = await srv.acall("GET", "/tasks")
    assert sorted(t["name"] for t in r.body["plugins"]) == ["monitor", "scan"]


async def test_live_pvs_ca_and_pva(life: Life) -> None:
    srv = life.srv
    assert await ca_value(srv.pv("monitor", "STATUS"), datatype=str) == "RUN"
    assert await ca_value(srv.pv("scan", "STATUS"), datatype=str) == "RUN"
    assert await ca_value(srv.pv("diag", "STATUS"), datatype=str) == "IDLE"
    assert await ca_value(srv.pv("monitor", "SETPOINT")) == pytest.approx(50.0)
    for pv in (srv.pv("monitor", "READING"), srv.pv("scan", "POSITION"), srv.pv("diag", "MESSAGE")):
        assert await pva_answers(srv, pv), pv
    first = await ca_value(srv.pv("monitor", "CYCLE_COUNT"))
    await wait_for(
        lambda: _ca_greater(srv.pv("monitor", "CYCLE_COUNT"), first),
        timeout=15,
        what="CYCLE_COUNT to advance",
    )


async def test_job_runs_over_rest(life: Life) -> None:
    srv = life.srv
    r = await srv.acall("POST", "/jobs/diag/run")
    assert r.status == 200, r.text
    res = r.body
    assert res["success"] is True and res["message"] == "OK"
    assert res["data"]["pid"] == srv.pid  # the job ran inside the service process
    assert isinstance(res["duration_s"], float) and res["duration_s"] >= 0
    assert isinstance(res["started_at"], float)
    assert await ca_value(srv.pv("diag", "STATUS"), datatype=str) == "SUCCESS"
    r = await srv.acall("POST", "/jobs/diag/run", {"parameters": {"fail": True}})
    assert r.status == 200 and r.body["success"] is False and "asked to fail" in r.body["message"]
    await wait_for(
        lambda: _ca_equals(srv.pv("diag", "STATUS"), "FAILED"), timeout=10, what="job STATUS FAILED"
    )

    # 409 while the job runs (a slow run in the background, then a second run)
    slow = asyncio.create_task(
        srv.acall("POST", "/jobs/diag/run", {"parameters": {"sleep": 3.0}, "timeout": 30})
    )
    try:

        async def running() -> bool:
            return (await srv.acall("GET", "/jobs/diag")).body["state"] == "running"

        await wait_for(running, timeout=10, what="job state running")
        r = await srv.acall("POST", "/jobs/diag/run")
        assert r.status == 409 and r.content_type == PROBLEM, r.text
        assert "running" in r.body["detail"]
    finally:
        r = await slow
    assert r.status == 200 and r.body["success"] is True, r.text
    life.done.add("test_job_runs_over_rest")


async def test_trigger_runs_a_cycle(life: Life) -> None:
    srv = life.srv
    # -- trigger RUN with a put-callback: completes when the run ends ------------------------
    await caput(srv.pv("scan", "START"), 1.0, wait=True, timeout=10)
    await caput(srv.pv("scan", "STOP"), 3.0, wait=True, timeout=10)
    await caput(srv.pv("scan", "RUN"), 1, wait=True, timeout=20)
    assert await ca_value(srv.pv("scan", "SCANS")) == 1
    assert await ca_value(srv.pv("scan", "POSITION")) == pytest.approx(3.0)
    assert await ca_value(srv.pv("scan", "RUN")) == 0
    assert (await ca_value(srv.pv("scan", "RESULT"))).startswith("scan 1")

    # -- the REST twin of RUN=1: waits for the cycle; RUN reads 1 meanwhile --------------------
    # A monitor, not polling: the scan (dwell 0.01 s) may end between two polls on a loaded machine.
    run_values: list[int] = []
    sub = camonitor(srv.pv("scan", "RUN"), lambda v: run_values.append(int(v)))
    try:
        await wait_for(lambda: run_values == [0], timeout=10, what="RUN's first monitor update (0)")
        r = await srv.acall("POST", "/tasks/scan/trigger")
        await wait_for(
            lambda: run_values[-1:] == [0] and len(run_values) >= 3,
            timeout=10,
            what="RUN back to 0 after the REST trigger",
        )
    finally:
        sub.close()
    assert run_values[:3] == [0, 1, 0], run_values  # RUN read 1 while the REST trigger ran
    assert r.status == 200 and r.body["success"] is True and r.body["cycle_count"] == 2, r.text
    assert await ca_value(srv.pv("scan", "SCANS")) == 2
    assert await ca_value(srv.pv("scan", "RUN")) == 0
    r = await srv.acall("POST", "/tasks/monitor/trigger")
    assert r.status == 409 and "continuous" in r.body["detail"], r.text


async def test_removal_drops_only_its_pvs(life: Life) -> None:
    srv = life.srv
    pid = srv.pid
    # -- an input PV written now must survive the reload and the restart -----------------------
    await caput(srv.pv("monitor", "SETPOINT"), 73.5, wait=True, timeout=10)
    await caput(srv.pv("monitor", "ENABLE"), 0, wait=True, timeout=10)

    async def paused() -> bool:
        return await _state(srv, "monitor") == "paused"

    await wait_for(paused, timeout=10, what="monitor paused by ENABLE=0")

    # -- remove the triggered task: its PVs go, the others stay --------------------------------
    repos_before = sorted(p.name for p in (srv.data_dir / "repos").iterdir())
    assert len(repos_before) == 3
    r = await srv.acall("DELETE", "/tasks/scan")
    assert r.status == 200 and r.body["reload_pending"] is True, r.text
    await asyncio.to_thread(srv.wait_generation, r.body["generation"])
    assert srv.pid == pid and srv.alive()
    assert len(list((srv.data_dir / "repos").iterdir())) == 2  # its clone is gone
    r = await srv.acall("GET", "/tasks/scan")
    assert r.status == 404 and r.content_type == PROBLEM
    assert await ca_value(srv.pv("monitor", "SETPOINT")) == pytest.approx(73.5)
    assert await ca_value(srv.pv("diag", "STATUS"), datatype=str) == "IDLE"
    assert await ca_value(srv.pv("monitor", "ENABLE")) == 0
    assert await ca_gone(srv.pv("scan", "RUN"))
    assert await ca_gone(srv.pv("scan", "STATUS"))
    assert not await pva_answers(srv, srv.pv("scan", "POSITION"))
    assert await pva_answers(srv, srv.pv("monitor", "READING"))
    life.done.add("test_removal_drops_only_its_pvs")


async def test_live_plugin_restart_keeps_the_generation(life: Life) -> None:
    """Same records, no reload."""
    life.needs("test_removal_drops_only_its_pvs")  # ENABLE=0 there
    srv = life.srv
    gen = (await _health(srv))["generation"]
    r = await srv.acall("POST", "/plugins/monitor/restart", {"parameters": {"interval": 0.3}})
    assert r.status == 200, r.text
    assert r.body["reload_pending"] is False and r.body["generation"] == gen
    h = await _health(srv)
    assert h["generation"] == gen and h["pending_generation"] is None
    r = await srv.acall("GET", "/tasks/monitor")
    assert r.body["parameters"]["interval"] == 0.3
    assert r.body["state"] == "paused"  # ENABLE=0 still holds after the restart
    r = await srv.acall("POST", "/plugins/diag/restart")
    assert r.status == 200 and r.body["reload_pending"] is False, r.text
    assert (await srv.acall("POST", "/jobs/diag/run")).body["success"] is True
    life.gen = gen
    life.done.add("test_live_plugin_restart_keeps_the_generation")


async def test_service_restart_restores_registry_and_pvs(life: Life) -> None:
    """SIGTERM, exit 0, start again on the same data dir."""
    life.needs(
        "test_job_runs_over_rest",  # the one job run asked to fail: the only error logged
        "test_removal_drops_only_its_pvs",  # SETPOINT=73.5, ENABLE=0, scan removed
        "test_live_plugin_restart_keeps_the_generation",  # interval 0.3, the generation
    )
    srv = life.srv
    registry_before = json.loads((srv.data_dir / "registry.json").read_text())
    rc = srv.stop(signal.SIGTERM)
    log = srv.log()
    assert rc == 0, log[-4000:]
    assert re.search(r"iocmng\.plugin\.monitor: stopped after \d+ cycles", log), (
        "cleanup() of monitor did not run"
    )
    h2 = srv.start()
    assert h2["generation"] == life.gen
    assert h2["tasks_count"] == 1 and h2["jobs_count"] == 1
    r = await srv.acall("GET", "/plugins")
    assert sorted(p["name"] for p in r.body["plugins"]) == ["diag", "monitor"]
    monitor = next(p for p in r.body["plugins"] if p["name"] == "monitor")
    assert monitor["parameters"]["interval"] == 0.3
    assert monitor["source"]["commit"] == registry_before["plugins"]["monitor"]["source"]["commit"]
    assert await ca_value(srv.pv("monitor", "SETPOINT")) == pytest.approx(73.5)
    assert await ca_value(srv.pv("monitor", "ENABLE")) == 0

    # HTTP answers while the plugins initialize (state "starting"), by design: poll
    async def paused() -> bool:
        return await _state(srv, "monitor") == "paused"

    await wait_for(paused, timeout=15, what="monitor paused again after the restart")
    await caput(srv.pv("monitor", "ENABLE"), 1, wait=True, timeout=10)

    async def running_again() -> bool:
        return await _state(srv, "monitor") == "running"

    await wait_for(running_again, timeout=10, what="monitor running after ENABLE=1")
    assert await ca_gone(srv.pv("scan", "RUN"))
    r = await srv.acall("POST", "/jobs/diag/run")
    assert r.status == 200 and r.body["success"] is True
    assert srv.stop(signal.SIGINT) == 0
    # the only error logged is the job run that was asked to fail
    errors = re.findall(r"^\S+ \S+ (?:ERROR|CRITICAL) +(\S+)", srv.log(), re.MULTILINE)
    assert errors == ["iocmng.plugin.diag:"], srv.log()[-4000:]
