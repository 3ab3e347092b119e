"""System tests of ``iocmng-server``: the real process, over HTTP, Channel Access and PV Access.

* ``test_lifecycle``: plugins added from git repos made in ``tmp_path`` get
  live PVs after their reload; jobs run over REST; RUN triggers a cycle;
  a removal drops only that plugin's PVs; a restart of the service restores
  the registry and input PV values; a live plugin restart keeps the generation.
* ``test_bad_input``: one server (module scope) answers every bad request of
  the issue with a 4xx problem+json naming the problem, leaves nothing behind
  and stays healthy. None of those requests reaches a reload.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioca import CANothing, caget, camonitor, caput, purge_channel_caches
from conftest import EXAMPLES, loopback_env, pva_context, wait_for
from service_support import Server, closed_port, git, make_repo

pytestmark = pytest.mark.timeout(150)

PROBLEM = "application/problem+json"
SECRET = "ghp_SECRET123"


# -- HTTP helpers ----------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    content_type: str
    body: Any
    text: str


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    json_body: Any = None,
    data: bytes | str | None = None,
    timeout: float = 60.0,
) -> Reply:
    kwargs: dict[str, Any] = {}
    if json_body is not None:
        kwargs["json"] = json_body
    elif data is not None:
        kwargs["data"] = data
        kwargs["headers"] = {"Content-Type": "application/json"}
    async with http.request(
        method, url, timeout=aiohttp.ClientTimeout(total=timeout), **kwargs
    ) as resp:
        text = await resp.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        return Reply(resp.status, resp.content_type, body, text)


@pytest.fixture(autouse=True)
async def _close_ca_channels() -> AsyncIterator[None]:
    """Close this test's CA channels while its loop runs: aioca delivers connection
    events to the loop a channel was made on, and that loop closes with the test."""
    yield
    purge_channel_caches()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def health(http: aiohttp.ClientSession, srv: Server) -> dict[str, Any]:
    r = await call(http, "GET", f"{srv.url}/health", timeout=10)
    assert r.status == 200, r.text
    return r.body


async def wait_generation(
    http: aiohttp.ClientSession, srv: Server, generation: int, timeout: float = 45.0
) -> dict[str, Any]:
    """Wait until the server serves ``generation`` (or later) with no reload pending and no
    plugin still initializing (HTTP answers while plugins start, by design)."""

    async def live() -> dict[str, Any] | None:
        h = await health(http, srv)
        settled = not h["plugins"].get("starting") and not h["plugins"].get("pending")
        return h if h["generation"] >= generation and h["pending_generation"] is None and settled else None

    return await wait_for(live, timeout=timeout, interval=0.1, what=f"generation {generation}")


# -- EPICS helpers ------------------------------------------------------------------------------
async def ca_value(pv: str, timeout: float = 20.0, **kw: Any) -> Any:
    """caget that waits for the channel (it may be reconnecting after a reload)."""
    return await caget(pv, timeout=timeout, **kw)


async def ca_gone(pv: str) -> bool:
    try:
        await caget(pv, timeout=1.5)
    except CANothing:
        return True
    return False


async def pva_answers(srv: Server, pv: str, timeout: float = 2.0) -> bool:
    ctx = pva_context(srv.ports)
    try:
        await asyncio.wait_for(ctx.get(pv), timeout)
        return True
    except Exception:
        return False
    finally:
        ctx.close()


# ================================================================================================
# The lifecycle
# ================================================================================================
@pytest.fixture
def repos(tmp_path: Path) -> dict[str, str]:
    """Three repos: a continuous task at the root, a triggered task under a sub-path, a job."""
    return {
        "monitor": make_repo(tmp_path / "git" / "monitor", {".": EXAMPLES / "sync_monitor"}),
        "scan": make_repo(
            tmp_path / "git" / "scan",
            {"README.md": "scans\n", "plugins/scan": EXAMPLES / "triggered_scan"},
        ),
        "diag": make_repo(
            tmp_path / "git" / "diag", {"jobs/diagnostics": EXAMPLES / "diagnostics_job"}
        ),
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(data_dir=tmp_path / "data", log_path=tmp_path / "server.log")
    yield srv
    srv.kill()


async def test_lifecycle(
    server: Server, repos: dict[str, str], http: aiohttp.ClientSession
) -> None:
    srv = server
    h0 = srv.start()
    assert h0["status"] == "ok" and h0["plugins"]["total"] == 0
    base = srv.url

    # -- add a continuous task, a triggered task (with path) and a job -----------------------
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
    generations = []
    for coll, body in adds:
        r = await call(http, "POST", f"{base}/{coll}", json_body=body)
        assert r.status == 201, r.text
        assert r.body["reload_pending"] is True
        assert r.body["plugin"]["name"] == body["name"]
        assert all(s["ok"] for s in r.body["steps"])
        assert SECRET not in r.text
        generations.append(r.body["generation"])
    assert generations == sorted(generations) and generations[0] > h0["generation"]
    h1 = await wait_generation(http, srv, generations[-1])
    assert h1["tasks_count"] == 2 and h1["jobs_count"] == 1
    assert h1["plugins"].get("failed", 0) == 0, h1

    # the same PID serves every generation (re-exec, not a new process)
    pid = srv.pid
    assert srv.alive()

    # -- listings: source without credentials, commit SHA, PV names ----------------------------
    r = await call(http, "GET", f"{base}/tasks/scan")
    assert r.status == 200, r.text
    scan = r.body
    assert scan["mode"] == "triggered" and scan["state"] == "running"
    assert scan["source"]["url"] == repos["scan"] and scan["source"]["path"] == "plugins/scan"
    assert re.fullmatch(r"[0-9a-f]{40}", scan["source"]["commit"])
    assert srv.pv("scan", "RUN") in scan["pvs"]
    r = await call(http, "GET", f"{base}/jobs")
    assert r.body["count"] == 1
    assert [j["name"] for j in r.body["plugins"]] == ["diag"] and r.body["plugins"][0]["state"] == "idle"
    r = await call(http, "GET", f"{base}/tasks")
    assert sorted(t["name"] for t in r.body["plugins"]) == ["monitor", "scan"]

    # -- all three have live PVs (CA and PVA) ------------------------------------------------
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

    # -- run the job over REST ---------------------------------------------------------------
    r = await call(http, "POST", f"{base}/jobs/diag/run")
    assert r.status == 200, r.text
    res = r.body
    assert res["success"] is True and res["message"] == "OK"
    assert res["data"]["pid"] == pid  # the job ran inside the service process
    assert isinstance(res["duration_s"], float) and res["duration_s"] >= 0
    assert isinstance(res["started_at"], float)
    assert await ca_value(srv.pv("diag", "STATUS"), datatype=str) == "SUCCESS"
    r = await call(http, "POST", f"{base}/jobs/diag/run", json_body={"parameters": {"fail": True}})
    assert r.status == 200 and r.body["success"] is False and "asked to fail" in r.body["message"]
    await wait_for(
        lambda: _ca_equals(srv.pv("diag", "STATUS"), "FAILED"), timeout=10, what="job STATUS FAILED"
    )

    # 409 while the job runs (a slow run in the background, then a second run)
    slow = asyncio.create_task(
        call(
            http,
            "POST",
            f"{base}/jobs/diag/run",
            json_body={"parameters": {"sleep": 3.0}, "timeout": 30},
        )
    )
    try:

        async def running() -> bool:
            return (await call(http, "GET", f"{base}/jobs/diag")).body["state"] == "running"

        await wait_for(running, timeout=10, what="job state running")
        r = await call(http, "POST", f"{base}/jobs/diag/run")
        assert r.status == 409 and r.content_type == PROBLEM, r.text
        assert "running" in r.body["detail"]
    finally:
        r = await slow
    assert r.status == 200 and r.body["success"] is True, r.text

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
        r = await call(http, "POST", f"{base}/tasks/scan/trigger")
        await wait_for(lambda: run_values[-1:] == [0] and len(run_values) >= 3, timeout=10,
                       what="RUN back to 0 after the REST trigger")
    finally:
        sub.close()
    assert run_values[:3] == [0, 1, 0], run_values  # RUN read 1 while the REST trigger ran
    assert r.status == 200 and r.body["success"] is True and r.body["cycle_count"] == 2, r.text
    assert await ca_value(srv.pv("scan", "SCANS")) == 2
    assert await ca_value(srv.pv("scan", "RUN")) == 0
    r = await call(http, "POST", f"{base}/tasks/monitor/trigger")
    assert r.status == 409 and "continuous" in r.body["detail"], r.text

    # -- an input PV written now must survive the reload and the restart -----------------------
    await caput(srv.pv("monitor", "SETPOINT"), 73.5, wait=True, timeout=10)
    await caput(srv.pv("monitor", "ENABLE"), 0, wait=True, timeout=10)

    async def paused() -> bool:
        return (await call(http, "GET", f"{base}/tasks/monitor")).body["state"] == "paused"

    await wait_for(paused, timeout=10, what="monitor paused by ENABLE=0")

    # -- remove the triggered task: its PVs go, the others stay --------------------------------
    repos_before = sorted(p.name for p in (srv.data_dir / "repos").iterdir())
    assert len(repos_before) == 3
    r = await call(http, "DELETE", f"{base}/tasks/scan")
    assert r.status == 200 and r.body["reload_pending"] is True, r.text
    await wait_generation(http, srv, r.body["generation"])
    assert srv.pid == pid and srv.alive()
    assert len(list((srv.data_dir / "repos").iterdir())) == 2  # its clone is gone
    r = await call(http, "GET", f"{base}/tasks/scan")
    assert r.status == 404 and r.content_type == PROBLEM
    assert await ca_value(srv.pv("monitor", "SETPOINT")) == pytest.approx(73.5)
    assert await ca_value(srv.pv("diag", "STATUS"), datatype=str) == "IDLE"
    assert await ca_value(srv.pv("monitor", "ENABLE")) == 0
    assert await ca_gone(srv.pv("scan", "RUN"))
    assert await ca_gone(srv.pv("scan", "STATUS"))
    assert not await pva_answers(srv, srv.pv("scan", "POSITION"))
    assert await pva_answers(srv, srv.pv("monitor", "READING"))

    # -- live restart of a plugin: same records, no reload --------------------------------
    gen = (await health(http, srv))["generation"]
    r = await call(
        http, "POST", f"{base}/plugins/monitor/restart", json_body={"parameters": {"interval": 0.3}}
    )
    assert r.status == 200, r.text
    assert r.body["reload_pending"] is False and r.body["generation"] == gen
    h = await health(http, srv)
    assert h["generation"] == gen and h["pending_generation"] is None
    r = await call(http, "GET", f"{base}/tasks/monitor")
    assert r.body["parameters"]["interval"] == 0.3
    assert r.body["state"] == "paused"  # ENABLE=0 still holds after the restart
    r = await call(http, "POST", f"{base}/plugins/diag/restart")
    assert r.status == 200 and r.body["reload_pending"] is False, r.text
    assert (await call(http, "POST", f"{base}/jobs/diag/run")).body["success"] is True

    # -- restart the service: SIGTERM, exit 0, start again on the same data dir ------------
    registry_before = json.loads((srv.data_dir / "registry.json").read_text())
    rc = srv.stop(signal.SIGTERM)
    log = srv.log()
    assert rc == 0, log[-4000:]
    assert re.search(r"iocmng\.plugin\.monitor: stopped after \d+ cycles", log), (
        "cleanup() of monitor did not run"
    )
    h2 = srv.start()
    assert h2["generation"] == gen
    assert h2["tasks_count"] == 1 and h2["jobs_count"] == 1
    r = await call(http, "GET", f"{base}/plugins")
    assert sorted(p["name"] for p in r.body["plugins"]) == ["diag", "monitor"]
    monitor = next(p for p in r.body["plugins"] if p["name"] == "monitor")
    assert monitor["parameters"]["interval"] == 0.3
    assert monitor["source"]["commit"] == registry_before["plugins"]["monitor"]["source"]["commit"]
    assert await ca_value(srv.pv("monitor", "SETPOINT")) == pytest.approx(73.5)
    assert await ca_value(srv.pv("monitor", "ENABLE")) == 0
    # HTTP answers while the plugins initialize (state "starting"), by design: poll
    await wait_for(paused, timeout=15, what="monitor paused again after the restart")
    await caput(srv.pv("monitor", "ENABLE"), 1, wait=True, timeout=10)

    async def running_again() -> bool:
        return (await call(http, "GET", f"{base}/tasks/monitor")).body["state"] == "running"

    await wait_for(running_again, timeout=10, what="monitor running after ENABLE=1")
    assert await ca_gone(srv.pv("scan", "RUN"))
    r = await call(http, "POST", f"{base}/jobs/diag/run")
    assert r.status == 200 and r.body["success"] is True
    assert srv.stop(signal.SIGINT) == 0
    # the only error logged is the job run that was asked to fail
    errors = re.findall(r"^\S+ \S+ (?:ERROR|CRITICAL) +(\S+)", srv.log(), re.MULTILINE)
    assert errors == ["iocmng.plugin.diag:"], srv.log()[-4000:]


async def _ca_greater(pv: str, value: float) -> bool:
    return await caget(pv, timeout=2) > value


async def _ca_equals(pv: str, value: str) -> bool:
    return await caget(pv, timeout=2, datatype=str) == value


# ================================================================================================
# Bad input: one server for all the cases
# ================================================================================================
TASK = """
from iocmng import TaskBase


class Good(TaskBase):
    def initialize(self):
        pass

    def execute(self):
        pass

    def cleanup(self):
        pass
"""

JOB = """
from iocmng import JobBase, JobResult


class GoodJob(JobBase):
    def initialize(self):
        pass

    def execute(self):
        return JobResult(success=True, data={}, message="OK")
"""

CONFIG = "parameters:\n  mode: continuous\n  interval: 1.0\n"


def _pvs(block: str) -> str:
    return CONFIG + "pvs:\n" + block


#: name -> files of one bad (or, for "task"/"job", good) plugin repository
BAD_REPOS: dict[str, dict[str, str]] = {
    "task": {"plugin.py": TASK, "config.yaml": CONFIG},
    "job": {"plugin.py": JOB, "config.yaml": "parameters: {}\n"},
    "syntax": {
        "plugin.py": "from iocmng import TaskBase\n\nclass Bad(TaskBase)\n    pass\n",
        "config.yaml": CONFIG,
    },
    "noclass": {"plugin.py": "def helper():\n    return 1\n", "config.yaml": CONFIG},
    "twoclasses": {
        "plugin.py": TASK + TASK.replace("class Good", "class Other").split("\n\n", 1)[1],
        "config.yaml": CONFIG,
    },
    "abstract": {
        "plugin.py": TASK.replace("def cleanup(self):\n        pass\n", ""),
        "config.yaml": CONFIG,
    },
    "importerror": {
        "plugin.py": "import iocmng_no_such_module_xyz\n" + TASK,
        "config.yaml": CONFIG,
    },
    "hang": {"plugin.py": "import time\ntime.sleep(1000)\n" + TASK, "config.yaml": CONFIG},
    "exits": {"plugin.py": "import os\nos._exit(3)\n" + TASK, "config.yaml": CONFIG},
    "notyaml": {"plugin.py": TASK, "config.yaml": "parameters: [unclosed\n  mode: {\n"},
    "pvtype": {
        "plugin.py": TASK,
        "config.yaml": _pvs("  inputs:\n    LEVEL: {type: complex, value: 0}\n"),
    },
    "unknownkey": {
        "plugin.py": TASK,
        "config.yaml": _pvs("  outputs:\n    LEVEL: {type: float, colour: red}\n"),
    },
    "topkey": {"plugin.py": TASK, "config.yaml": CONFIG + "colour: red\n"},
    "collide": {
        "plugin.py": TASK,
        "config.yaml": _pvs("  outputs:\n    STATUS: {type: int, value: 0}\n"),
    },
    "longpv": {
        "plugin.py": TASK,
        "config.yaml": _pvs(f"  outputs:\n    L{'X' * 55}: {{type: float}}\n"),
    },
    "nopyfile": {"config.yaml": CONFIG, "_private.py": TASK},
}


@dataclass
class Ctx:
    """What a bad-input case can refer to."""

    srv: Server
    repos: dict[str, str]
    canary: Path
    demo_task: str
    demo_job: str
    closed_port: int


@dataclass
class Case:
    id: str
    method: str
    path: str | Callable[[Ctx], str]
    body: Any = None  # a dict (JSON), bytes/str (raw), or a callable of Ctx giving either
    status: int = 422
    detail: str = ""  # regex the problem's detail must match (case-insensitive)

    def resolve(self, ctx: Ctx) -> tuple[str, Any]:
        path = self.path(ctx) if callable(self.path) else self.path
        body = self.body(ctx) if callable(self.body) else self.body
        return path, body


def add(repo: str, name: str = "newplugin", **extra: Any) -> Callable[[Ctx], dict[str, Any]]:
    """A POST body adding ``name`` from the test repo ``repo``."""
    return lambda ctx: {"name": name, "git_url": ctx.repos[repo], "branch": "main", **extra}


def named(name: str) -> Callable[[Ctx], dict[str, Any]]:
    return lambda ctx: {"name": name, "git_url": ctx.repos["task"]}


CASES = [
    # -- names ----------------------------------------------------------------------------
    Case("name-slash", "POST", "/tasks", named("a/b"), 422, r"name.*'a/b'"),
    Case("name-dotdot", "POST", "/tasks", named(".."), 422, r"name.*'\.\.'"),
    Case("name-space", "POST", "/tasks", named("my task"), 422, r"name.*'my task'"),
    Case("name-too-long", "POST", "/tasks", named("x" * 129), 422, r"name.*1-128"),
    Case("name-empty", "POST", "/tasks", named(""), 422, r"name"),
    Case("name-dot", "POST", "/jobs", named("My.Job"), 422, r"name.*'My\.Job'"),
    Case("name-in-url", "GET", "/tasks/a..b", None, 400, r"name.*'a\.\.b'"),
    # -- path ------------------------------------------------------------------------------
    Case("path-dotdot", "POST", "/tasks", add("task", path="../x"), 422, r"path.*'\.\./x'"),
    Case("path-dotdot-inner", "POST", "/tasks", add("task", path="sub/../../x"), 422, r"path"),
    Case(
        "path-absolute",
        "POST",
        "/tasks",
        lambda c: add("task", path=str(c.canary))(c),
        422,
        r"path.*relative",
    ),
    Case("path-symlink-out", "POST", "/tasks", add("symlink", path="link"), 422, r"path.*outside"),
    Case(
        "path-missing", "POST", "/tasks", add("task", path="no/such/dir"), 422, r"path.*no/such/dir"
    ),
    Case(
        "local-path-not-plugin",
        "POST",
        "/tasks",
        lambda c: {"name": "newplugin", "local_path": str(c.canary)},
        422,
        r"config|\.py",
    ),
    # -- sources ---------------------------------------------------------------------------
    Case(
        "repo-missing",
        "POST",
        "/tasks",
        lambda c: {
            "name": "newplugin",
            "git_url": (c.srv.data_dir.parent / "nonexistent").as_uri(),
        },
        422,
        r"clone.*nonexistent",
    ),
    Case(
        "repo-unreachable-pat",
        "POST",
        "/tasks",
        lambda c: {
            "name": "newplugin",
            "git_url": f"https://127.0.0.1:{c.closed_port}/team/plugin.git",
            "pat": SECRET,
        },
        422,
        r"clone.*127\.0\.0\.1",
    ),
    Case(
        "repo-userinfo-in-url",
        "POST",
        "/tasks",
        lambda c: {
            "name": "newplugin",
            "git_url": f"https://user:{SECRET}@127.0.0.1:{c.closed_port}/p.git",
        },
        422,
        r"credentials",
    ),
    Case(
        "repo-scheme",
        "POST",
        "/tasks",
        {"name": "newplugin", "git_url": "ftp://example.org/p.git"},
        422,
        r"scheme.*https://",
    ),
    Case(
        "pat-not-https",
        "POST",
        "/tasks",
        lambda c: {"name": "newplugin", "git_url": c.repos["task"], "pat": SECRET},
        422,
        r"pat.*https",
    ),
    Case(
        "branch-missing",
        "POST",
        "/tasks",
        add("task", branch="no-such-branch"),
        422,
        r"branch.*no-such-branch",
    ),
    # -- code ---------------------------------------------------------------------------------
    Case("syntax-error", "POST", "/tasks", add("syntax"), 422, r"syntax.*plugin\.py.*line 3"),
    Case("no-plugin-class", "POST", "/tasks", add("noclass"), 422, r"no plugin class"),
    Case(
        "two-plugin-classes",
        "POST",
        "/tasks",
        add("twoclasses"),
        422,
        r"more than one.*Good.*Other|Other.*Good",
    ),
    Case("missing-abstract", "POST", "/tasks", add("abstract"), 422, r"abstract.*cleanup"),
    Case(
        "import-error",
        "POST",
        "/tasks",
        add("importerror"),
        422,
        r"import.*iocmng_no_such_module_xyz",
    ),
    Case("import-hangs", "POST", "/tasks", add("hang"), 422, r"import.*within 3"),
    Case("import-exits", "POST", "/tasks", add("exits"), 422, r"import.*code 3"),
    Case("no-py-file", "POST", "/tasks", add("nopyfile"), 422, r"no \.py file"),
    # -- config.yaml -------------------------------------------------------------------------
    Case(
        "config-not-yaml",
        "POST",
        "/tasks",
        add("notyaml"),
        422,
        r"config: config\.yaml: not valid YAML.*line 2",
    ),
    Case(
        "config-pv-type",
        "POST",
        "/tasks",
        add("pvtype"),
        422,
        r"config\.yaml: pvs\.inputs\.LEVEL\.type",
    ),
    Case(
        "config-unknown-key",
        "POST",
        "/tasks",
        add("unknownkey"),
        422,
        r"config\.yaml: pvs\.outputs\.LEVEL\.colour",
    ),
    Case("config-unknown-top-key", "POST", "/tasks", add("topkey"), 422, r"config.*colour"),
    Case("config-pv-collides", "POST", "/tasks", add("collide"), 422, r"STATUS"),
    Case("config-pv-too-long", "POST", "/tasks", add("longpv"), 422, r"LX+.*60|60.*LX+"),
    # -- kind ---------------------------------------------------------------------------------
    Case("job-via-tasks", "POST", "/tasks", add("job"), 422, r"GoodJob is a job, not a task"),
    Case("task-via-jobs", "POST", "/jobs", add("task"), 422, r"Good is a task, not a job"),
    # -- duplicates and unknown names ----------------------------------------------------------
    Case(
        "duplicate-task",
        "POST",
        "/tasks",
        lambda c: add("task", name=c.demo_task)(c),
        409,
        r"already exists",
    ),
    Case(
        "duplicate-job-via-plugins",
        "POST",
        "/plugins",
        lambda c: add("job", name=c.demo_job)(c),
        409,
        r"already exists",
    ),
    Case("unknown-get", "GET", "/tasks/nosuch", None, 404, r"nosuch"),
    Case("unknown-delete", "DELETE", "/plugins/nosuch", None, 404, r"nosuch"),
    Case("unknown-run", "POST", "/jobs/nosuch/run", None, 404, r"nosuch"),
    Case("unknown-restart", "POST", "/plugins/nosuch/restart", None, 404, r"nosuch"),
    Case("job-as-task-get", "GET", lambda c: f"/tasks/{c.demo_job}", None, 404, r"no task named"),
    Case(
        "task-as-job-delete", "DELETE", lambda c: f"/jobs/{c.demo_task}", None, 404, r"no job named"
    ),
    Case(
        "task-as-job-run", "POST", lambda c: f"/jobs/{c.demo_task}/run", None, 404, r"no job named"
    ),
    Case("unknown-endpoint", "GET", "/nothing-here", None, 404, r"/api/v1/nothing-here"),
    # -- malformed bodies ------------------------------------------------------------------------
    Case("body-not-json", "POST", "/tasks", "{this is not json", 400, r"not valid JSON"),
    Case("body-not-object", "POST", "/tasks", "[1, 2]", 400, r"JSON object"),
    Case("body-empty", "POST", "/tasks", "", 400, r"JSON body"),
    Case("missing-name", "POST", "/tasks", lambda c: {"git_url": c.repos["task"]}, 422, r"name"),
    Case("missing-source", "POST", "/tasks", {"name": "newplugin"}, 422, r"git_url or local_path"),
    Case(
        "both-sources",
        "POST",
        "/tasks",
        lambda c: {"name": "newplugin", "git_url": c.repos["task"], "local_path": str(c.canary)},
        422,
        r"git_url or local_path",
    ),
    Case(
        "wrong-type-name",
        "POST",
        "/tasks",
        lambda c: {"name": 5, "git_url": c.repos["task"]},
        422,
        r"name",
    ),
    Case(
        "wrong-type-parameters",
        "POST",
        "/tasks",
        add("task", parameters="fast"),
        422,
        r"parameters",
    ),
    Case("wrong-type-branch", "POST", "/tasks", add("task", branch=["main"]), 422, r"branch"),
    Case(
        "unknown-field",
        "POST",
        "/tasks",
        add("task", colour="red"),
        422,
        r"body\.colour: unknown key.*openapi",
    ),
    Case(
        "run-bad-timeout",
        "POST",
        lambda c: f"/jobs/{c.demo_job}/run",
        {"timeout": -1},
        422,
        r"timeout",
    ),
    Case(
        "run-unknown-field",
        "POST",
        lambda c: f"/jobs/{c.demo_job}/run",
        {"paramters": {}},
        422,
        r"paramters",
    ),
    Case(
        "restart-wrong-type",
        "POST",
        lambda c: f"/plugins/{c.demo_task}/restart",
        {"parameters": [1]},
        422,
        r"parameters",
    ),
    Case(
        "body-too-large",
        "POST",
        "/tasks",
        lambda c: json.dumps(
            {"name": "big", "git_url": c.repos["task"], "parameters": {"x": "y" * 20000}}
        ),
        413,
        r"too large.*4096",
    ),
]


@pytest.fixture(scope="module")
def bad_ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    """A --demo server (existing names for the 409/404 cases) and the bad repos."""
    tmp = tmp_path_factory.mktemp("bad")
    canary = tmp / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("must survive\n")
    repos = {name: make_repo(tmp / "git" / name, files) for name, files in BAD_REPOS.items()}
    link_repo = tmp / "git" / "symlink"
    repos["symlink"] = make_repo(link_repo, {"README.md": "a link out\n"})
    (link_repo / "link").symlink_to(canary)
    git(link_repo, "add", "link")
    git(link_repo, "commit", "-q", "-m", "link")

    srv = Server(
        data_dir=tmp / "data",
        log_path=tmp / "server.log",
        args=("--demo",),
        extra_env={
            "IOCMNG_IMPORT_TIMEOUT": "3",
            "IOCMNG_MAX_BODY": "4096",
            "IOCMNG_GIT_TIMEOUT": "20",
        },
    )
    h = srv.start()
    assert h["plugins"].get("failed", 0) == 0, h
    with urllib.request.urlopen(f"{srv.url}/plugins", timeout=5) as resp:
        listing = json.loads(resp.read())["plugins"]
    demo_task = next(p["name"] for p in listing if p["kind"] == "task")
    demo_job = next(p["name"] for p in listing if p["kind"] == "job")
    ctx = Ctx(srv, repos, canary, demo_task, demo_job, closed_port())
    try:
        yield ctx
        assert srv.alive(), f"the server died:\n{srv.log()[-4000:]}"
        rc = srv.stop(signal.SIGTERM)
        log = srv.log()
        assert rc == 0, log[-4000:]
        assert SECRET not in log, "the token reached the server log"
        assert "internal error" not in log.lower(), log[-4000:]
    finally:
        srv.kill()


def snapshot(data_dir: Path) -> dict[str, Any]:
    """What a refused request must not change."""

    def names(sub: str) -> list[str]:
        d = data_dir / sub
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    reg = data_dir / "registry.json"
    return {
        "repos": names("repos"),
        "deps": names("deps"),
        "registry": reg.read_bytes() if reg.exists() else None,
        "tmp": sorted(p.name for p in data_dir.glob(".*.tmp")),
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_input(case: Case, bad_ctx: Ctx, http: aiohttp.ClientSession) -> None:
    ctx, srv = bad_ctx, bad_ctx.srv
    before = snapshot(srv.data_dir)
    h_before = await health(http, srv)
    path, body = case.resolve(ctx)
    if isinstance(body, dict):
        r = await call(http, case.method, srv.url + path, json_body=body)
    else:
        r = await call(http, case.method, srv.url + path, data=body)

    assert r.status == case.status, f"{case.id}: {r.status} {r.text}"
    assert r.content_type == PROBLEM, r.content_type
    assert r.body["status"] == case.status and r.body["title"]
    assert re.search(case.detail, r.body["detail"], re.IGNORECASE | re.DOTALL), r.body["detail"]
    assert SECRET not in r.text
    assert str(srv.data_dir) not in r.text, (
        "the detail names our temporary clone, not the user's file"
    )
    if r.status == 422 and "steps" in r.body:  # the per-step report ends with the failed step
        assert r.body["steps"][-1]["ok"] is False and all(s["ok"] for s in r.body["steps"][:-1])

    # nothing left behind, nothing pending, the service healthy and the same process
    assert snapshot(srv.data_dir) == before
    h = await health(http, srv)
    assert h["status"] == "ok" and h["pending_generation"] is None
    assert h["generation"] == h_before["generation"]
    assert h["plugins"] == h_before["plugins"]
    assert srv.alive()
    assert (ctx.canary / "keep.txt").read_text() == "must survive\n"
    assert SECRET not in srv.log()


async def test_bad_input_server_still_serves(bad_ctx: Ctx, http: aiohttp.ClientSession) -> None:
    """After all the refusals, the demo plugins still have PVs and a job still runs."""
    srv = bad_ctx.srv
    assert await pva_answers(srv, srv.pv(bad_ctx.demo_task, "STATUS"))
    assert await ca_value(srv.pv(bad_ctx.demo_job, "STATUS"), datatype=str) in ("IDLE", "SUCCESS")
    r = await call(http, "POST", f"{srv.url}/jobs/{bad_ctx.demo_job}/run")
    assert r.status == 200 and r.body["success"] is True, r.text
    assert (await health(http, srv))["generation"] == 1


async def test_openapi(bad_ctx: Ctx, http: aiohttp.ClientSession) -> None:
    r = await call(http, "GET", f"{bad_ctx.srv.url}/openapi.json")
    assert r.status == 200 and r.content_type == "application/json"
    doc = r.body
    assert doc["openapi"].startswith("3.")
    for path in (
        "/api/v1/tasks",
        "/api/v1/jobs",
        "/api/v1/plugins",
        "/api/v1/tasks/{name}",
        "/api/v1/jobs/{name}/run",
        "/api/v1/plugins/{name}/restart",
        "/api/v1/health",
    ):
        assert path in doc["paths"], path
    assert "post" in doc["paths"]["/api/v1/tasks"]
    add_schema = doc["components"]["schemas"]["AddPlugin"]
    assert {"name", "git_url", "pat", "branch", "path", "parameters"} <= set(
        add_schema["properties"]
    )
    assert "pat" not in json.dumps(doc.get("examples", {}))


def test_bad_setting_exits_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOCMNG_")}
    env.update(loopback_env())
    env.update(
        {
            "IOCMNG_PORT": "abc",
            "IOCMNG_HOST": "127.0.0.1",
            "IOCMNG_PLUGINS_DIR": str(tmp_path / "data"),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "iocmng"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "IOCMNG_PORT" in proc.stderr and "abc" in proc.stderr, proc.stderr
    assert not (tmp_path / "data" / "registry.json").exists()
