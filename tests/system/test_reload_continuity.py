"""Reloads that other plugins do not notice: state and counters carried over, work in flight
finished, changes applied when chosen (IOCMNG_APPLY=manual), pending adds withdrawn.

Real server, real plugins from directories and git repositories made here, real CA
clients (aioca: a RUN put with callback in progress across the reload).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aioca import caget, caput
from conftest import wait_for

from .conftest import Server, ServerFactory, ca_value, make_repo

pytestmark = pytest.mark.timeout(180)

KEEPER_PY = '''
from iocmng import TaskBase


class Keeper(TaskBase):
    """Counts its cycles in memory; carries the count across reloads."""

    def cleanup(self):

        pass


    async def initialize(self):
        self.total = 0

    async def execute(self):
        self.total += 1
        self.set_pv("TOTAL", self.total)

    def save_state(self):
        return {"total": self.total}

    def restore_state(self, state, old_commit, new_commit):
        self.total = state["total"]
        self.set_pv("RESTORED", f"{(old_commit or '-')[:8]} {(new_commit or '-')[:8]}")
'''
KEEPER_YAML = """
parameters: {mode: continuous, interval: 0.1}
pvs:
  outputs:
    TOTAL: {type: int, value: 0}
    RESTORED: {type: string, value: ""}
"""

SLOW_PY = '''
import asyncio

from iocmng import TaskBase


class Slow(TaskBase):
    """A triggered cycle that takes its time."""

    def cleanup(self):

        pass


    async def initialize(self):
        self.done = 0

    async def execute(self):
        await asyncio.sleep(float(self.parameters["seconds"]))
        self.done += 1
        self.set_pv("DONE", self.done)
'''
SLOW_YAML = """
parameters: {mode: triggered, seconds: 3.0}
pvs:
  outputs:
    DONE: {type: int, value: 0}
"""

BAD_PY = """
from iocmng import TaskBase


class BadRestore(TaskBase):
    def cleanup(self):
        pass

    async def initialize(self):
        self.fresh = True

    async def execute(self):
        self.set_pv("FRESH", int(self.fresh))

    def save_state(self):
        return {"fresh": False}

    async def restore_state(self, state, old_commit, new_commit):
        raise ValueError("this state is not for me")
"""
BAD_YAML = """
parameters: {mode: continuous, interval: 0.2}
pvs:
  outputs:
    FRESH: {type: int, value: 0}
"""

TINY_PY = """
from iocmng import TaskBase


class Tiny(TaskBase):
    def cleanup(self):
        pass

    def initialize(self):
        pass

    def execute(self):
        pass
"""
TINY_YAML = "parameters: {mode: continuous, interval: 1.0}\n"


def plugin_dir(root: Path, name: str, py: str, yaml: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / f"{name}.py").write_text(py)
    (d / "config.yaml").write_text(yaml)
    return d


def added(srv: Server, name: str, **source: Any) -> dict[str, Any]:
    r = srv.call("POST", "/tasks", {"name": name, **source}, timeout=120)
    assert r.status == 201, r.text
    return r.body


def info(srv: Server, name: str) -> dict[str, Any]:
    r = srv.call("GET", f"/tasks/{name}")
    assert r.status == 200, r.text
    return r.body


async def test_a_reload_costs_other_plugins_nothing_but_a_pause(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    srv = server_factory()
    keeper_url = make_repo(
        tmp_path / "git" / "keeper", {"keeper.py": KEEPER_PY, "config.yaml": KEEPER_YAML}
    )
    added(srv, "keeper", git_url=keeper_url)
    added(srv, "slow", local_path=str(plugin_dir(tmp_path, "slow", SLOW_PY, SLOW_YAML)))
    last = added(srv, "bad", local_path=str(plugin_dir(tmp_path, "bad", BAD_PY, BAD_YAML)))
    srv.wait_generation(last["generation"])
    commit = info(srv, "keeper")["source"]["commit"]

    await wait_for(lambda: ca_value_above(srv.pv("keeper", "TOTAL"), 20), timeout=20)
    before = info(srv, "keeper")
    assert before["cycle_count"] >= 20 and before["first_started_at"] is not None

    # A RUN put (with callback) in progress when an unrelated add asks for a reload.
    run = asyncio.create_task(caput(srv.pv("slow", "RUN"), 1, wait=True, timeout=30))
    await wait_for(lambda: run_busy(srv), timeout=5)
    total_before = await caget(srv.pv("keeper", "TOTAL"), timeout=5)
    pid = srv.pid
    tiny = added(srv, "tiny", local_path=str(plugin_dir(tmp_path, "tiny", TINY_PY, TINY_YAML)))

    # While the reload waits, HTTP answers and /health says what it waits for.
    def waiting() -> bool:
        h = srv.call("GET", "/health", timeout=5).body
        return h["reload"]["state"] == "waiting" and [
            w["plugin"] for w in h["reload"]["waiting_for"]
        ] == ["slow"]

    await wait_for(lambda: asyncio.to_thread(waiting), timeout=10)
    await asyncio.wait_for(run, 30)  # the put returns: the cycle ran to its end
    assert srv.pid == pid  # same process (a re-exec keeps the pid)
    await asyncio.to_thread(srv.wait_generation, tiny["generation"])

    # The triggered cycle was not cut: it counted, with no error.
    slow = info(srv, "slow")
    # (its count was carried over: a triggered task has no CYCLE_COUNT PV)
    assert slow["cycle_count"] == 1 and slow["error_count"] == 0, slow

    # keeper goes on from its state: TOTAL never restarts at 1, RESTORED names the commits.
    after_total = await ca_value(srv.pv("keeper", "TOTAL"))
    assert after_total >= total_before, (after_total, total_before)
    assert (
        await ca_value(srv.pv("keeper", "RESTORED"), datatype=str) == f"{commit[:8]} {commit[:8]}"
    )
    after = info(srv, "keeper")
    assert after["cycle_count"] >= before["cycle_count"]
    assert await ca_value(srv.pv("keeper", "CYCLE_COUNT")) >= before["cycle_count"]
    assert after["first_started_at"] == before["first_started_at"]
    assert after["uptime_s"] >= before["uptime_s"]

    # bad: its restore_state raised: logged, it runs fresh (FRESH stays 1).
    bad = info(srv, "bad")
    assert bad["state"] == "running", bad
    assert "restore_state" in (bad["last_error"] or ""), bad
    assert await ca_value(srv.pv("bad", "FRESH")) == 1
    logs = srv.call("GET", "/tasks/bad/logs").body["records"]
    assert any("restore_state failed" in r["message"] for r in logs), logs


async def ca_value_above(pv: str, value: float) -> bool:
    return await caget(pv, timeout=2) > value


async def run_busy(srv: Server) -> bool:
    return await caget(srv.pv("slow", "RUN"), timeout=2) == 1


async def test_manual_apply_holds_changes_until_asked(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    srv = server_factory(env={"IOCMNG_APPLY": "manual"})
    gen = srv.health()["generation"]
    tiny = plugin_dir(tmp_path, "tiny", TINY_PY, TINY_YAML)
    url = make_repo(tmp_path / "git" / "other", {"tiny.py": TINY_PY, "config.yaml": TINY_YAML})

    a = added(srv, "first", local_path=str(tiny))
    assert a["reload_pending"] is True and a["apply"] == "manual"
    assert "POST /api/v1/apply" in a["message"]
    b = added(srv, "second", git_url=url)  # a clone in the data directory
    clones = list((srv.data_dir / "repos").iterdir())
    assert len(clones) == 1

    # Withdraw the pending git add: its clone and entry go, no reload for it.
    r = srv.call("DELETE", "/tasks/second")
    assert r.status == 200, r.text
    assert "withdrawn" in r.body["message"]
    assert not any(p.exists() for p in clones)
    assert "second" not in srv.call("GET", "/tasks").text
    h = srv.call("GET", "/health").body
    assert h["pending_changes"] == [{"change": "add", "plugin": "first", "kind": "task"}], h
    assert h["generation"] == gen and h["pending_generation"] == a["generation"] == b["generation"]

    # Nothing happens until apply: no reload, first stays pending.
    await asyncio.sleep(2.0)
    h = srv.call("GET", "/health").body
    assert h["generation"] == gen and h["reload"]["state"] == "none", h
    assert info(srv, "first")["state"] == "pending"

    # The CLI applies and waits for the new generation.
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "iocmng.cli", "apply", "--wait", "--server", srv.root],
        capture_output=True,
        text=True,
        timeout=90,
        env={k: v for k, v in os.environ.items() if not k.startswith("IOCMNG_")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "is live" in proc.stdout, proc.stdout
    h = srv.wait_generation(a["generation"])
    assert h["pending_changes"] == [] and h["pending_generation"] is None
    assert info(srv, "first")["state"] == "running"

    # Nothing pending: apply answers 200 and does not reload.
    r = srv.call("POST", "/apply")
    assert r.status == 200 and r.body["reload_pending"] is False, r.text

    # A lone pending add withdrawn: the generation goes back, no reload ever happens.
    started = h["uptime_s"]
    c = added(srv, "third", git_url=url)
    assert c["generation"] == h["generation"] + 1
    r = srv.call("DELETE", "/tasks/third")
    assert r.status == 200 and r.body["reload_pending"] is False, r.text
    assert r.body["generation"] == h["generation"]
    assert list((srv.data_dir / "repos").iterdir()) == []
    await asyncio.sleep(1.0)
    h2 = srv.call("GET", "/health").body
    assert h2["generation"] == h["generation"] and h2["pending_generation"] is None
    assert h2["uptime_s"] > started  # the same process generation: no reload happened


async def test_a_plain_restart_keeps_state_only_when_asked(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    srv = server_factory()
    keeper = plugin_dir(tmp_path, "keeper", KEEPER_PY, KEEPER_YAML)
    srv.wait_generation(added(srv, "keeper", local_path=str(keeper))["generation"])

    async def counted_past(n: int) -> int:
        await wait_for(lambda: ca_value_above(srv.pv("keeper", "TOTAL"), n), timeout=30)
        return info(srv, "keeper")["cycle_count"]

    # A stop and start of the service (SIGTERM): by default everything starts fresh.
    before = await counted_past(40)
    assert srv.stop() == 0
    srv.start()
    assert info(srv, "keeper")["cycle_count"] < before
    assert await ca_value(srv.pv("keeper", "RESTORED"), datatype=str) == ""

    # IOCMNG_KEEP_STATE=true: save_state runs on SIGTERM, the next start hands it back.
    srv.extra_env["IOCMNG_KEEP_STATE"] = "true"
    assert srv.stop() == 0
    srv.start()
    before = await counted_past(40)
    total = await caget(srv.pv("keeper", "TOTAL"), timeout=5)
    assert srv.stop() == 0
    srv.start()
    assert info(srv, "keeper")["cycle_count"] >= before
    assert await ca_value(srv.pv("keeper", "TOTAL")) >= total
    assert await ca_value(srv.pv("keeper", "RESTORED"), datatype=str) == "- -"


JOB_PY = """
from iocmng import JobBase


class Tiny(JobBase):
    def initialize(self):
        pass

    def execute(self):
        return {}
"""


async def test_code_broken_on_disk_fails_at_the_reload_with_pvs_that_say_so(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A plugin's code is imported while iocInit runs, after its records are built from
    config.yaml: code that no longer imports, or is no longer of the kind its PVs were
    made for, leaves the plugin failed with STATUS and MESSAGE saying why; others run."""
    srv = server_factory()
    broken = plugin_dir(tmp_path, "broken", TINY_PY, TINY_YAML)
    turned = plugin_dir(tmp_path, "turned", TINY_PY, TINY_YAML)
    added(srv, "broken", local_path=str(broken))
    srv.wait_generation(added(srv, "turned", local_path=str(turned))["generation"])
    assert info(srv, "broken")["state"] == "running"
    (broken / "broken.py").write_text("raise RuntimeError('broken on disk')\n")
    (turned / "turned.py").write_text(JOB_PY)
    later = added(srv, "later", local_path=str(plugin_dir(tmp_path, "later", TINY_PY, TINY_YAML)))
    await asyncio.to_thread(srv.wait_generation, later["generation"])

    b = info(srv, "broken")
    assert b["state"] == "failed" and "broken on disk" in b["last_error"], b
    assert await ca_value(srv.pv("broken", "STATUS"), datatype=str) == "ERROR"
    assert "import failed" in await ca_value(srv.pv("broken", "MESSAGE"), datatype=str)  # 39 bytes
    t = info(srv, "turned")
    assert t["state"] == "failed" and "is now a job" in t["last_error"], t
    assert await ca_value(srv.pv("turned", "STATUS"), datatype=str) == "ERROR"
    assert info(srv, "later")["state"] == "running"

    # mended, it restarts live: its PVs exist, no reload
    (broken / "broken.py").write_text(TINY_PY)
    r = srv.call("POST", "/tasks/broken/restart", timeout=60)
    assert r.status == 200 and r.body["reload_pending"] is False, r.text
    await wait_for(lambda: asyncio.to_thread(lambda: info(srv, "broken")["state"] == "running"))
    assert await ca_value(srv.pv("broken", "STATUS"), datatype=str) == "RUN"
    assert srv.call("GET", "/health").body["generation"] == later["generation"]
