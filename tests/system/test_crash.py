"""Crash consistency (issue 7, item 2): SIGKILL the service anywhere, restart it, lose nothing.

One data directory, one server restarted again and again. Each round sends
a request (an add from a ``file://`` git repo or a local path, a removal, a
job run, or nothing), kills the service with SIGKILL after a random delay
or at a chosen instant (while the child import check of a slow plugin runs,
right after the 201, during the reload that follows), starts it again and
checks:

* ``registry.json`` parses and holds either the state before the request or
  the state after it (the set of plugins and each entry), never a mix;
* the service comes up (``/health`` answers) and every registered plugin is
  running/idle/paused, or ``failed`` with a ``last_error``;
* every clone the registry points to is complete (holds its ``config.yaml``),
  and ``repos/``, ``deps/`` hold only what the registry points to;
* orphans left by the interrupted operation, and canaries planted by the test
  (a half-made clone directory, a requirements directory, registry and
  autosave temp files), are removed at start.

Bounded: ``IOCMNG_CRASH_ROUNDS`` random rounds (default 14) after the fixed
ones (default 24), about 60 s on 2 cores; and 60 kills of a process that
does nothing but registry writes, to hit the write itself.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, wait_for_sync

from .conftest import Reply, Server, make_repo

pytestmark = pytest.mark.timeout(300)

ROUNDS = int(os.environ.get("IOCMNG_CRASH_ROUNDS", "24"))
LIVE = {"running", "idle", "paused"}

SLOW_IMPORT = """
import time
from iocmng import TaskBase

time.sleep(4)  # the validation's child import takes this long


class Slow(TaskBase):
    def initialize(self): pass
    def execute(self): pass
    def cleanup(self): pass
"""

SLEEPY_JOB = """
import time
from iocmng import JobBase, JobResult


class Sleepy(JobBase):
    def initialize(self): pass
    def execute(self):
        time.sleep(float(self.parameters.get("sleep", 0)))
        return JobResult(success=True, data={}, message="slept")
"""


# -- requests in threads while the test kills ---------------------------------------------------
class Background:
    """A request in a thread; its outcome (or the connection error) is kept."""

    def __init__(self, srv: Server, method: str, path: str, body: Any = None) -> None:
        self.result: Reply | BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = srv.call(method, path, body, timeout=30)
            except BaseException as exc:  # the kill cuts the connection: expected
                self.result = exc
            self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(35)


# -- the checks ----------------------------------------------------------------------------------
def registry(data: Path) -> dict[str, Any]:
    path = data / "registry.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())["plugins"]


def comparable(plugins: dict[str, Any]) -> dict[str, Any]:
    return {n: {k: v for k, v in e.items() if k != "added_at"} for n, e in plugins.items()}


def plant_canaries(data: Path) -> list[Path]:
    """What an interrupted operation can leave behind, made by the test itself."""
    made = [
        data / "repos" / "canary-0badc0de",
        data / "deps" / "canary-0badc0de",
        data / ".registry.json.canary.tmp",
        data / ".autosave.json.canary.tmp",
    ]
    for d in made[:2]:
        d.mkdir(parents=True, exist_ok=True)
        (d / "half-written.py").write_text("# interrupted\n")
    for f in made[2:]:
        f.write_text("{ partial")
    return made


def check_after_restart(
    srv: Server, allowed: list[dict[str, Any]], canaries: list[Path]
) -> dict[str, Any]:
    data = srv.data_dir
    now = registry(data)
    assert any(comparable(now) == comparable(a) for a in allowed), (
        f"registry is neither the old nor the new state: {sorted(now)} vs {[sorted(a) for a in allowed]}"
    )
    for c in canaries:
        assert not c.exists(), f"orphan {c} was not removed at start"
    # (paths in the data directory are relative to it on disk: registry version 2)
    owned = {str((data / e["owned_dir"]).resolve()) for e in now.values() if e.get("owned_dir")}
    deps = {str((data / e["deps_dir"]).resolve()) for e in now.values() if e.get("deps_dir")}
    for sub, keep in (("repos", owned), ("deps", deps)):
        folder = data / sub
        present = {str(p.resolve()) for p in folder.iterdir()} if folder.is_dir() else set()
        assert present == keep, (
            f"{sub}/ holds {present - keep} not in the registry (or misses {keep - present})"
        )
    for e in now.values():  # no half-cloned directory is used
        assert (data / e["plugin_dir"] / "config.yaml").is_file(), e

    def settled() -> tuple[list[dict[str, Any]]] | None:
        r = srv.call("GET", "/plugins", timeout=30)
        assert r.status == 200
        items = r.body["plugins"]
        return None if any(i["state"] in ("starting", "pending") for i in items) else (items,)

    (items,) = wait_for_sync(settled, timeout=30, interval=0.2, what="plugins settled")
    assert {i["name"] for i in items} == set(now)
    for i in items:
        assert i["state"] in LIVE or (i["state"] == "failed" and i["last_error"]), i
    return now


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Any]:
    return {
        "monitor": make_repo(tmp_path / "git" / "monitor", {".": EXAMPLES / "sync_monitor"}),
        "wave": make_repo(tmp_path / "git" / "wave", {"sub/wave": EXAMPLES / "async_monitor"}),
        "slow": make_repo(
            tmp_path / "git" / "slow",
            {"slow.py": SLOW_IMPORT, "config.yaml": "parameters: {interval: 0.5}\n"},
        ),
        "job": make_repo(
            tmp_path / "git" / "job",
            {"job.py": SLEEPY_JOB, "config.yaml": "parameters: {sleep: 0}\n"},
        ),
        "local": str(EXAMPLES / "triggered_scan"),
    }


def add_body(kind: str, name: str, sources: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if kind == "monitor":
        return "/tasks", {
            "name": name,
            "git_url": sources["monitor"],
            "parameters": {"interval": 0.2},
        }
    if kind == "wave":
        return "/tasks", {"name": name, "git_url": sources["wave"], "path": "sub/wave"}
    if kind == "job":
        return "/jobs", {"name": name, "git_url": sources["job"]}
    return "/tasks", {"name": name, "local_path": sources["local"]}


@pytest.mark.server(env={"IOCMNG_RELOAD_DELAY": "0.1", "IOCMNG_IMPORT_TIMEOUT": "20"}, start=False)
def test_kill_anywhere(server: Server, sources: dict[str, Any], tmp_path: Path) -> None:
    srv = server
    rng = random.Random(int(os.environ.get("IOCMNG_CRASH_SEED", "7")))
    srv.start()
    stats = {"kills": 0, "old": 0, "new": 0}

    def round_(label: str, method: str, path: str, body: Any, kill_at: Any) -> None:
        before = registry(srv.data_dir)
        bg = Background(srv, method, path, body)
        kill_at(bg)
        srv.kill_tree()  # the service and the children it left (a child import check)
        bg.join()
        stats["kills"] += 1
        canaries = plant_canaries(srv.data_dir)
        on_disk = registry(srv.data_dir)
        # The state the request would commit (its entry as written, if it was).
        if method == "POST" and path in ("/tasks", "/jobs"):
            new = (
                {**before, body["name"]: on_disk[body["name"]]}
                if body["name"] in on_disk
                else before
            )
        elif method == "DELETE":
            new = {k: v for k, v in before.items() if k != path.rsplit("/", 1)[1]}
        else:
            new = before
        answered = isinstance(bg.result, Reply) and bg.result.status in (200, 201)
        # A change that was answered is durable: only the new state is allowed.
        allowed = [new] if answered else [before, new]
        srv.start()
        now = check_after_restart(srv, allowed, canaries)
        stats["new" if comparable(now) != comparable(before) else "old"] += 1
        print(
            f"{label}: {bg.result if not isinstance(bg.result, Reply) else bg.result.status} -> "
            f"{'new' if comparable(now) != comparable(before) else 'old'} state, {len(now)} plugin(s)"
        )

    def after(seconds: float) -> Any:
        # a kill at a chosen (random) instant: the delay is the test, not a wait for something
        return lambda bg: time.sleep(seconds)

    def during_import(bg: Background) -> None:
        wait_for_sync(
            lambda: srv.importing("slow"),
            timeout=20,
            interval=0.02,
            what="the child import check of slow",
        )

    def during_job_run(bg: Background) -> None:
        wait_for_sync(
            lambda: srv.call("GET", "/jobs/j0", timeout=5).body["state"] == "running",
            timeout=20,
            interval=0.02,
            what="j0 running",
        )

    def on_reply(bg: Background) -> None:
        bg.done.wait(30)

    def in_reload(bg: Background) -> None:
        bg.done.wait(30)
        time.sleep(
            0.1 + rng.uniform(0, 0.5)
        )  # a random instant of the reload (the test): delay 0.1 s, stop, exec, boot

    # -- fixed points --------------------------------------------------------------------------
    path, body = "/tasks", {"name": "slow", "git_url": sources["slow"]}
    round_("kill during the child import check", "POST", path, body, during_import)
    assert "slow" not in registry(srv.data_dir)
    round_("kill right after the 201", "POST", *add_body("monitor", "m0", sources), on_reply)
    assert "m0" in registry(srv.data_dir)
    round_("kill during the reload", "POST", *add_body("job", "j0", sources), in_reload)
    assert "j0" in registry(srv.data_dir)
    # A job run in progress (the job sleeps 3 s): killed mid-run, it comes back idle.
    assert srv.call("POST", "/jobs/j0/run", {"parameters": {"sleep": 0}}, timeout=30).status == 200
    round_(
        "kill during a job run",
        "POST",
        "/jobs/j0/run",
        {"parameters": {"sleep": 3}},
        during_job_run,
    )
    round_("kill right after a removal", "DELETE", "/tasks/m0", None, on_reply)
    assert "m0" not in registry(srv.data_dir)

    # -- random points ---------------------------------------------------------------------------
    serial = 0
    for i in range(ROUNDS):
        names = sorted(registry(srv.data_dir))
        if names and (len(names) >= 4 or rng.random() < 0.35):
            name = rng.choice(names)
            coll = "/jobs" if registry(srv.data_dir)[name]["kind"] == "job" else "/tasks"
            method, path, body = "DELETE", f"{coll}/{name}", None
        else:
            serial += 1
            kind = rng.choice(["monitor", "wave", "job", "local"])
            method, (path, body) = "POST", add_body(kind, f"r{serial}-{kind}", sources)
        delay = rng.uniform(0, 0.5)
        round_(
            f"random {i}: {method} {path} kill at {delay:.2f}s", method, path, body, after(delay)
        )
    print(
        f"\ncrash: {stats['kills']} SIGKILLs survived; registry old state {stats['old']}, "
        f"new state {stats['new']}"
    )
    (tmp_path / "crash.json").write_text(json.dumps(stats))
    assert srv.health()["status"] == "ok"


WRITER = """
import sys, time
from pathlib import Path
from iocmng.service.registry import Entry, Registry, Source
reg = Registry(Path(sys.argv[1]))
reg.load()
i = len(reg.plugins)
while True:  # grow to 300 entries (a write of ~200 kB), then shrink, and again
    i += 1
    name = f"p{i % 300}"
    if name in reg.plugins:
        reg.commit(remove=name, bump=True)
    else:
        reg.commit(add=Entry(name=name, kind="task", source=Source(type="local", local_path="/x"),
                             plugin_dir="/x", records=[f"P:{name.upper()}:R{k}" for k in range(20)]), bump=True)
    print(reg.state.generation, flush=True)
"""


def test_kill_during_registry_writes(tmp_path: Path) -> None:
    """SIGKILL a process that only writes the registry: the file is always whole."""
    from iocmng.service.registry import State

    rng = random.Random(11)
    data = tmp_path / "data"
    data.mkdir()
    last_generation = 0
    leftovers = 0
    for _ in range(60):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # it is writing now
        assert first, "the writer did not start"
        time.sleep(rng.uniform(0, 0.05))  # a random instant of the writes to kill at: the test
        proc.kill()
        out, _ = proc.communicate(10)
        printed = [int(x) for x in (first + out).split()]
        state = State.model_validate_json((data / "registry.json").read_bytes())
        # The file is the last acknowledged commit or the one being written.
        assert printed[-1] <= state.generation <= printed[-1] + 1, (printed[-1], state.generation)
        assert state.generation > last_generation
        last_generation = state.generation
    leftovers = len(list(data.glob(".*.tmp")))
    print(
        f"\nregistry writes: 60 SIGKILLs mid-write, file whole each time; {leftovers} temp file(s) "
        "left (removed by the service at start)"
    )
    assert all(p.name.startswith(".registry.json.") for p in data.glob(".*.tmp"))
