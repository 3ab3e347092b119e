"""System tests of ``iocmng-server``: the real process, over HTTP, Channel Access and PV Access.

(The life of one server with plugins from git repos is in ``test_lifecycle.py``.)

* ``test_bad_input``: one server (module scope) answers every bad request of
  the issue with a 4xx problem+json naming the problem, leaves nothing behind
  and stays healthy. None of those requests reaches a reload.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import loopback_env

from .conftest import (
    Server,
    ServerFactory,
    ca_value,
    closed_port,
    git,
    make_repo,
    pva_answers,
)

pytestmark = pytest.mark.timeout(150)

PROBLEM = "application/problem+json"
SECRET = "ghp_SECRET123"


async def health(srv: Server) -> dict[str, Any]:
    r = await srv.acall("GET", "/health", timeout=10)
    assert r.status == 200, r.text
    return r.body


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
def bad_ctx(
    tmp_path_factory: pytest.TempPathFactory, module_server_factory: ServerFactory
) -> Iterator[Ctx]:
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

    srv = module_server_factory(
        "bad",
        demo=True,
        env={
            "IOCMNG_IMPORT_TIMEOUT": "3",
            "IOCMNG_MAX_BODY": "4096",
            "IOCMNG_GIT_TIMEOUT": "20",
        },
        start=False,
    )
    h = srv.start()
    assert h["plugins"].get("failed", 0) == 0, h
    listing = srv.call("GET", "/plugins", timeout=5).body["plugins"]
    demo_task = next(p["name"] for p in listing if p["kind"] == "task")
    demo_job = next(p["name"] for p in listing if p["kind"] == "job")
    yield Ctx(srv, repos, canary, demo_task, demo_job, closed_port())
    assert srv.alive(), f"the server died:\n{srv.log()[-4000:]}"
    rc = srv.stop(signal.SIGTERM)
    log = srv.log()
    assert rc == 0, log[-4000:]
    assert SECRET not in log, "the token reached the server log"
    assert "internal error" not in log.lower(), log[-4000:]


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
async def test_bad_input(case: Case, bad_ctx: Ctx) -> None:
    ctx, srv = bad_ctx, bad_ctx.srv
    before = snapshot(srv.data_dir)
    h_before = await health(srv)
    path, body = case.resolve(ctx)
    if isinstance(body, dict):
        r = await srv.acall(case.method, path, body)
    else:
        r = await srv.acall(case.method, path, raw=body)

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
    h = await health(srv)
    assert h["status"] == "ok" and h["pending_generation"] is None
    assert h["generation"] == h_before["generation"]
    assert h["plugins"] == h_before["plugins"]
    assert srv.alive()
    assert (ctx.canary / "keep.txt").read_text() == "must survive\n"
    assert SECRET not in srv.log()


async def test_bad_input_server_still_serves(bad_ctx: Ctx) -> None:
    """After all the refusals, the demo plugins still have PVs and a job still runs."""
    srv = bad_ctx.srv
    assert await pva_answers(srv, srv.pv(bad_ctx.demo_task, "STATUS"))
    assert await ca_value(srv.pv(bad_ctx.demo_job, "STATUS"), datatype=str) in ("IDLE", "SUCCESS")
    r = await srv.acall("POST", f"/jobs/{bad_ctx.demo_job}/run")
    assert r.status == 200 and r.body["success"] is True, r.text
    assert (await health(srv))["generation"] == 1


async def test_openapi(bad_ctx: Ctx) -> None:
    r = await bad_ctx.srv.acall("GET", "/openapi.json")
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
