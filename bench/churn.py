"""Churn (issue 7, item 4): add, restart and remove plugins while tasks run and clients watch.

A bounded run on loopback only. One real ``iocmng-server`` (``python -m
iocmng``, data directory in a temporary directory, private HTTP/CA/PVA ports,
EPICS forced to 127.0.0.1) with ``--tasks`` continuous tasks at 10 Hz (a tiny
async plugin with one output PV ``VALUE``, registered by ``local_path``).
Then, until ``--minutes`` have passed (or ``--cycles`` were done), one cycle:

1. ``POST /tasks`` a plugin from a ``file://`` git repository (a clone lands
   in the data directory) -> a reload; wait until it runs;
2. ``POST /plugins/{name}/restart`` -> live (no reload); wait until it runs
   (``--restarts N`` times; with N > 1 a verdict on growth within the generation);
3. ``DELETE /tasks/{name}`` -> a reload.

After each reload the loop waits (up to ``--resume-timeout`` s) until every
monitor delivered an update again. Meanwhile, as asyncio tasks of this
process: CA monitors (aioca ``camonitor``) and PVA monitors (p4p asyncio
``Context.monitor``) on ``VALUE`` of a few of the tasks, and two pollers,
``GET /api/v1/tasks`` and ``GET /api/v1/health`` (each 10 per second).

Recorded: every HTTP request's outcome (the churn loop's and the pollers');
per reload and monitor the outage (disconnect -> first update) and the first
update after the new generation answered HTTP; the server process's open
fds, threads and RSS (psutil; the PID stays across reloads, a reload is
``os.execv``) and the data directory's bytes and file count, at the start
(after the tasks run and one warm-up cycle) and at the end (after the last
removal), plus after each phase of each cycle.

Tolerances (verdicts; the exit status is 1 if one fails): fds and threads
within +-10 and +-5 of the start, RSS at most +30 %, the data directory's
bytes within +-10 % and its file count within +-10 % of the start; no request
failed (a failure: an exception or an unexpected status; iocmng documents no
failure during a reload: new connections wait in the backlog, responses carry
``Connection: close`` while a reload is pending), every reload followed by an
update on every CA and PVA monitor, every restart live, the same PID
throughout, every task running at the end, exit code 0 on SIGTERM; with
``--restarts N`` > 1, no fd or thread growth and at most +5 % RSS from a
cycle's first live restart to its last (a reload resets the process image,
a live restart does not, so this is where a leak would accumulate).

The start/end comparison is between two generations in the same state; since
every reload re-executes the process, what it catches is what survives
``execv``: inherited (non close-on-exec) fds, files left in the data directory.

Usage::

    python bench/churn.py                       # 3 minutes, 50 tasks
    python bench/churn.py --tasks 10 --cycles 3 --json /tmp/churn.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
INTERVAL = 0.1

#: Where the server's code comes from: a ``git archive`` of a commit (default HEAD:
#: others' edits in progress in the work tree would otherwise reach the server at
#: its next reload, as a reload re-imports everything), or the work tree (``--src tree``).
SRC: dict[str, Any] = {"dir": REPO, "commit": "work tree"}

TOL_FDS = 10
TOL_THREADS = 5
TOL_RSS = 0.30
TOL_DATA = 0.10

from loopback import Ports as EpicsPorts  # noqa: E402  (sibling bench module)
from loopback import free_port  # noqa: E402


@dataclass(frozen=True)
class Ports(EpicsPorts):
    """The server's EPICS ports and its HTTP port."""

    http: int = field(default_factory=free_port)


# -- the plugins -------------------------------------------------------------------------------
TASK_CODE = '''
from iocmng import TaskBase

class ChurnTick(TaskBase):
    """Counts its cycles into VALUE."""
    async def initialize(self):
        self.n = 0
    async def execute(self):
        self.n += 1
        self.set_pv("VALUE", self.n)
    async def cleanup(self):
        pass
'''

TASK_CONFIG = f"""
parameters:
  mode: continuous
  interval: {INTERVAL}
pvs:
  outputs:
    VALUE: {{type: int, value: 0}}
"""


def write_plugin(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "plugin.py").write_text(textwrap.dedent(TASK_CODE))
    (root / "config.yaml").write_text(textwrap.dedent(TASK_CONFIG))
    return root


def git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_SYSTEM": os.devnull,
        "GIT_AUTHOR_NAME": "churn",
        "GIT_AUTHOR_EMAIL": "churn@example.invalid",
        "GIT_COMMITTER_NAME": "churn",
        "GIT_COMMITTER_EMAIL": "churn@example.invalid",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def make_repo(root: Path) -> str:
    write_plugin(root)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "plugin")
    return root.as_uri()


def snapshot(rev: str, dest: Path) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", rev], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "iocmng"], cwd=REPO, check=True, capture_output=True
    ).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    SRC.update(dir=dest, commit=commit)


# -- measurements -------------------------------------------------------------------------------
def dir_usage(path: Path) -> tuple[int, int]:
    """(bytes, files) under ``path``."""
    total = files = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_size
                files += 1
            except OSError:
                pass
    return total, files


def fd_targets(pid: int) -> list[str]:
    out = []
    base = f"/proc/{pid}/fd"
    try:
        for fd in os.listdir(base):
            try:
                out.append(os.readlink(f"{base}/{fd}"))
            except OSError:
                pass
    except OSError:
        pass
    return sorted(out)


def fd_kinds(targets: list[str]) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for t in targets:
        kinds[
            t.split(":", 1)[0] if t.startswith(("socket:", "pipe:", "anon_inode:")) else "file"
        ] += 1
    return dict(kinds)


def sample(pid: int, data_dir: Path, label: str) -> dict[str, Any]:
    import psutil

    p = psutil.Process(pid)
    with p.oneshot():
        s = {
            "label": label,
            "t": time.monotonic(),
            "fds": p.num_fds(),
            "threads": p.num_threads(),
            "rss": p.memory_info().rss,
            "create_time": p.create_time(),
        }
    s["data_bytes"], s["data_files"] = dir_usage(data_dir)
    return s


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- HTTP with every outcome recorded --------------------------------------------------------------
@dataclass
class Outcome:
    t: float
    who: str
    method: str
    what: str
    status: int | None
    error: str | None
    ok: bool
    seconds: float


class Http:
    def __init__(self, base: str, gen_seen: dict[int, float]) -> None:
        self.base = base
        self.outcomes: list[Outcome] = []
        self.gen_seen = gen_seen

    async def call(
        self,
        session: Any,
        who: str,
        method: str,
        path: str,
        what: str,
        expect: tuple[int, ...] = (200,),
        body: Any = None,
    ) -> tuple[int | None, Any]:
        import aiohttp

        t0 = time.monotonic()
        status = data = err = None
        try:
            async with session.request(
                method, self.base + path, json=body, timeout=aiohttp.ClientTimeout(total=90)
            ) as resp:
                status = resp.status
                text = await resp.text()
                try:
                    data = json.loads(text) if text else None
                except ValueError:
                    data = text
        except Exception as exc:  # recorded, the caller decides what to do
            err = f"{type(exc).__name__}: {exc}"
        t1 = time.monotonic()
        ok = err is None and status in expect
        self.outcomes.append(Outcome(t1, who, method, what, status, err, ok, t1 - t0))
        if ok and what == "health" and isinstance(data, dict):
            self.gen_seen.setdefault(int(data["generation"]), t1)
        return status, data


# -- monitors ------------------------------------------------------------------------------------------
@dataclass
class Monitor:
    proto: str
    pv: str
    events: list[tuple[float, str]] = field(default_factory=list)  # (t, "u" | "d")

    def update(self) -> None:
        self.events.append((time.monotonic(), "u"))

    def disconnect(self) -> None:
        self.events.append((time.monotonic(), "d"))

    def updated_after(self, t: float) -> bool:
        return any(te > t and k == "u" for te, k in reversed(self.events[-50:]))

    def outage(self, t_from: float, t_to: float, t_new: float) -> dict[str, Any]:
        """In [t_from, t_to): the first disconnect, the first update after it."""
        ev = [(t, k) for t, k in self.events if t_from <= t < t_to]
        d = next((t for t, k in ev if k == "d"), None)
        after = d if d is not None else t_new
        u = next((t for t, k in ev if k == "u" and t > after), None)
        return {
            "disconnected": d is not None,
            "resumed": u is not None,
            "outage_s": (u - d) if (u is not None and d is not None) else None,
            "after_http_s": (u - t_new) if u is not None else None,
        }


# -- the run -----------------------------------------------------------------------------------------
class Churn:
    def __init__(self, args: argparse.Namespace, ports: Ports) -> None:
        self.args = args
        self.ports = ports
        self.tmp = Path(tempfile.mkdtemp(prefix="iocmng-churn-"))
        self.data_dir = self.tmp / "data"
        self.log = self.tmp / "server.log"
        self.prefix = "CHURN" + os.urandom(3).hex().upper()
        self.url = f"http://127.0.0.1:{ports.http}/api/v1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.gen_seen: dict[int, float] = {}
        self.http = Http(self.url, self.gen_seen)
        self.monitors: list[Monitor] = []
        self.reloads: list[dict[str, Any]] = []
        self.restarts: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = self.ports.env()
        env.update(
            {
                "IOCMNG_PLUGINS_DIR": str(self.data_dir),
                "IOCMNG_HOST": "127.0.0.1",
                "IOCMNG_PORT": str(self.ports.http),
                "IOCMNG_PREFIX": self.prefix,
                "IOCMNG_LOG_LEVEL": "warning",
            }
        )
        env.update(extra)
        return env

    def pv(self, plugin: str, short: str) -> str:
        return f"{self.prefix}:{plugin.upper()}:{short}"

    def spawn(self, **extra: str) -> None:
        env = self.env(**extra)
        src = str(SRC["dir"])
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iocmng"],
                env=env,
                cwd=src,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )

    async def start_server(self, session: Any, **extra: str) -> None:
        self.spawn(**extra)
        assert self.proc is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                async with session.get(f"{self.url}/health") as resp:
                    if resp.status == 200:
                        return
            except Exception:
                pass
            await asyncio.sleep(0.1)
        raise SystemExit("server did not answer within 120 s")

    def stop_server(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    # -- waits (their requests are recorded like any other) --------------------------------------
    async def wait_generation(self, session: Any, gen: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st, h = await self.http.call(session, "loop", "GET", "/health", "health")
            if st == 200 and h["generation"] >= gen and h["pending_generation"] is None:
                return
            await asyncio.sleep(0.05)
        raise SystemExit(f"generation {gen} not served within {timeout} s")

    async def wait_running(self, session: Any, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st, b = await self.http.call(session, "loop", "GET", f"/tasks/{name}", "task")
            if st == 200 and b["state"] == "running":
                return
            await asyncio.sleep(0.05)
        raise SystemExit(f"{name} not running within {timeout} s")

    async def wait_all_running(self, session: Any, n: int, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st, h = await self.http.call(session, "loop", "GET", "/health", "health")
            if (
                st == 200
                and h["plugins"].get("running", 0) >= n
                and h["pending_generation"] is None
            ):
                return
            await asyncio.sleep(0.2)
        raise SystemExit(f"{n} tasks not running within {timeout} s")

    async def wait_resumed(self, t_new: float) -> None:
        deadline = time.monotonic() + self.args.resume_timeout
        while time.monotonic() < deadline:
            if all(m.updated_after(t_new) for m in self.monitors):
                return
            await asyncio.sleep(0.05)

    # -- clients ----------------------------------------------------------------------------------------
    async def poller(self, path: str, what: str, stop: asyncio.Event) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                await self.http.call(session, f"poll-{what}", "GET", path, what)
                await asyncio.sleep(0.1)

    def start_monitors(self, names: list[str]) -> list[Any]:
        from aioca import camonitor
        from p4p.client.asyncio import Context

        subs: list[Any] = []
        for n in names:
            m = Monitor("ca", self.pv(n, "VALUE"))

            def ca_cb(value: Any, m: Monitor = m) -> None:
                (m.update if getattr(value, "ok", True) else m.disconnect)()

            subs.append(camonitor(m.pv, ca_cb, notify_disconnect=True))
            self.monitors.append(m)
        ctx = Context("pva", conf=self.ports.pva_conf(), useenv=False)
        subs.append(ctx)
        for n in names:
            m = Monitor("pva", self.pv(n, "VALUE"))

            async def pva_cb(value: Any, m: Monitor = m) -> None:
                (m.disconnect if isinstance(value, Exception) else m.update)()

            subs.append(ctx.monitor(m.pv, pva_cb, notify_disconnect=True))
            self.monitors.append(m)
        return subs

    # -- one reload, measured ------------------------------------------------------------------------
    async def reloaded(self, session: Any, gen: int, t_trigger: float, why: str) -> None:
        await self.wait_generation(session, gen)
        t_new = self.gen_seen.get(gen) or min(t for g, t in self.gen_seen.items() if g >= gen)
        await self.wait_resumed(t_new)
        t_end = time.monotonic()
        per = [
            {"proto": m.proto, "pv": m.pv, **m.outage(t_trigger, t_end, t_new)}
            for m in self.monitors
        ]
        self.reloads.append(
            {"generation": gen, "why": why, "http_gap_s": t_new - t_trigger, "monitors": per}
        )

    async def cycle(self, session: Any, i: int, url: str) -> None:
        name = f"churn{i:03d}"
        t0 = time.monotonic()
        st, b = await self.http.call(
            session,
            "loop",
            "POST",
            "/tasks",
            "add",
            (201,),
            {"name": name, "git_url": url, "branch": "main"},
        )
        if st != 201:
            raise SystemExit(f"add {name}: {st} {b}")
        await self.reloaded(session, b["generation"], t0, f"add {name}")
        await self.wait_running(session, name)
        self.samples.append(sample(self.proc.pid, self.data_dir, f"{i}:added"))

        for k in range(self.args.restarts):
            st, b = await self.http.call(
                session, "loop", "POST", f"/plugins/{name}/restart", "restart", (200,)
            )
            live = st == 200 and isinstance(b, dict) and b.get("reload_pending") is False
            self.restarts.append({"name": name, "status": st, "live": live})
            if not live and st == 200:
                await self.reloaded(session, b["generation"], t0, f"restart {name}")
            await self.wait_running(session, name)
            self.samples.append(sample(self.proc.pid, self.data_dir, f"{i}:restarted{k + 1}"))

        t0 = time.monotonic()
        st, b = await self.http.call(session, "loop", "DELETE", f"/tasks/{name}", "remove", (200,))
        if st != 200:
            raise SystemExit(f"remove {name}: {st} {b}")
        await self.reloaded(session, b["generation"], t0, f"remove {name}")
        self.samples.append(sample(self.proc.pid, self.data_dir, f"{i}:removed"))

    async def run(self) -> dict[str, Any]:
        import aiohttp

        a = self.args
        plugin = write_plugin(self.tmp / "plugin")
        url = make_repo(self.tmp / "git" / "churn")
        names = [f"t{i:03d}" for i in range(a.tasks)]
        async with aiohttp.ClientSession() as session:
            # Register the tasks without a reload per add, then one start builds them all.
            await self.start_server(session, IOCMNG_RELOAD_DELAY="3600")
            sem = asyncio.Semaphore(4)

            async def add(n: str) -> None:
                async with sem:
                    st, b = await self.http.call(
                        session,
                        "setup",
                        "POST",
                        "/tasks",
                        "add",
                        (201,),
                        {"name": n, "local_path": str(plugin)},
                    )
                    if st != 201:
                        raise SystemExit(f"add {n}: {st} {b}")

            await asyncio.gather(*(add(n) for n in names))
            self.stop_server()
            await self.start_server(session)
            await self.wait_all_running(session, a.tasks)
            pid = self.proc.pid
            watched = names[:: max(1, a.tasks // a.monitors)][: a.monitors]
            subs = self.start_monitors(watched)
            stop = asyncio.Event()
            pollers = [
                asyncio.create_task(self.poller("/tasks", "tasks", stop)),
                asyncio.create_task(self.poller("/health", "health", stop)),
            ]
            await asyncio.sleep(3)
            if not all(m.updated_after(time.monotonic() - 2) for m in self.monitors):
                raise SystemExit("monitors not delivering before the churn")

            # One warm-up cycle (first clone, first restart), then the start figures.
            await self.cycle(session, 0, url)
            await asyncio.sleep(a.settle)
            start = sample(pid, self.data_dir, "start")
            start_fds = fd_targets(pid)
            t_start = time.monotonic()
            i = 1
            while True:
                if a.cycles and i > a.cycles:
                    break
                if not a.cycles and time.monotonic() - t_start >= a.minutes * 60:
                    break
                await self.cycle(session, i, url)
                print(
                    f"  cycle {i} done at {time.monotonic() - t_start:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                i += 1
            await asyncio.sleep(a.settle)
            end = sample(pid, self.data_dir, "end")
            end_fds = fd_targets(pid)
            elapsed = time.monotonic() - t_start
            st, tasks = await self.http.call(session, "loop", "GET", "/tasks", "tasks")
            if isinstance(tasks, dict):  # {"plugins": [...], "count": N}
                tasks = tasks.get("plugins")
            stop.set()
            await asyncio.gather(*pollers)
            for s in subs:
                s.close()
        rc = self.stop_server()
        return self.summarize(i - 1, elapsed, start, end, start_fds, end_fds, pid, tasks, rc)

    # -- verdicts -----------------------------------------------------------------------------------------
    def summarize(
        self,
        cycles: int,
        elapsed: float,
        start: dict[str, Any],
        end: dict[str, Any],
        start_fds: list[str],
        end_fds: list[str],
        pid: int,
        tasks: Any,
        rc: int | None,
    ) -> dict[str, Any]:
        a = self.args
        churn_outcomes = [o for o in self.http.outcomes if o.who != "setup"]
        failures = [o for o in churn_outcomes if not o.ok]
        by_what = Counter(f"{o.method} {o.what}" for o in churn_outcomes)
        by_status = Counter(
            str(o.status) if o.error is None else o.error.split(":")[0] for o in churn_outcomes
        )
        mon = [(r, m) for r in self.reloads for m in r["monitors"]]

        def outages(proto: str, key: str) -> list[float]:
            return [m[key] for _r, m in mon if m["proto"] == proto and m[key] is not None]

        not_resumed = [
            f"gen {r['generation']} {m['proto']} {m['pv']}" for r, m in mon if not m["resumed"]
        ]
        running = (
            sorted(t["name"] for t in tasks if t["state"] == "running")
            if isinstance(tasks, list)
            else []
        )
        d_rss = (end["rss"] - start["rss"]) / start["rss"]
        d_bytes = (end["data_bytes"] - start["data_bytes"]) / max(1, start["data_bytes"])
        d_files = (end["data_files"] - start["data_files"]) / max(1, start["data_files"])
        # Repeated live restarts within one generation (a reload resets the process, a live
        # restart does not): growth from each cycle's first restart to its last.
        rs: dict[str, list[dict[str, Any]]] = {}
        for smp in self.samples:
            cyc, _, label = smp["label"].partition(":")
            if label.startswith("restarted"):
                rs.setdefault(cyc, []).append(smp)
        growth = {
            k: max((c[-1][k] - c[0][k] for c in rs.values()), default=0)
            for k in ("fds", "threads", "rss")
        }
        growth["rss_pct"] = round(
            100 * max((c[-1]["rss"] / c[0]["rss"] - 1 for c in rs.values()), default=0), 1
        )
        verdicts = {
            f"open fds within +-{TOL_FDS}": abs(end["fds"] - start["fds"]) <= TOL_FDS,
            f"threads within +-{TOL_THREADS}": abs(end["threads"] - start["threads"])
            <= TOL_THREADS,
            f"RSS at most +{TOL_RSS:.0%}": d_rss <= TOL_RSS,
            f"data dir bytes within +-{TOL_DATA:.0%}": abs(d_bytes) <= TOL_DATA,
            f"data dir files within +-{TOL_DATA:.0%}": abs(d_files) <= TOL_DATA,
            "no request failed": not failures,
            "CA and PVA monitors resumed after every reload": not not_resumed and bool(mon),
            "every restart live": all(r["live"] for r in self.restarts),
            "same PID throughout": end["create_time"] == start["create_time"]
            and end.get("pid", pid) == pid,
            "every task running at the end": len(running) == a.tasks,
            "SIGTERM exit code 0": rc == 0,
        }
        if a.restarts > 1:
            verdicts["repeated live restarts: fds, threads +0, RSS at most +5%"] = (
                growth["fds"] <= 0 and growth["threads"] <= 0 and growth["rss_pct"] <= 5
            )
        log = self.log.read_text(errors="replace")
        return {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "code": SRC["commit"],
            "tasks": a.tasks,
            "interval": INTERVAL,
            "cycles": cycles,
            "elapsed_s": round(elapsed, 1),
            "reloads": len(self.reloads),
            "monitors": {"ca": a.monitors, "pva": a.monitors},
            "requests": len(churn_outcomes),
            "by_request": dict(by_what),
            "by_status": dict(by_status),
            "failures": [vars(o) for o in failures[:20]],
            "failure_count": len(failures),
            "http_gap_s": {
                "median": statistics.median([r["http_gap_s"] for r in self.reloads]),
                "max": max(r["http_gap_s"] for r in self.reloads),
            },
            "outage_s": {
                p: {
                    "median": statistics.median(outages(p, "outage_s") or [float("nan")]),
                    "p95": pct(outages(p, "outage_s"), 0.95),
                    "max": max(outages(p, "outage_s"), default=float("nan")),
                }
                for p in ("ca", "pva")
            },
            "after_http_s": {
                p: {
                    "median": statistics.median(outages(p, "after_http_s") or [float("nan")]),
                    "max": max(outages(p, "after_http_s"), default=float("nan")),
                }
                for p in ("ca", "pva")
            },
            "not_resumed": not_resumed,
            "start": start,
            "end": end,
            "delta": {
                "fds": end["fds"] - start["fds"],
                "threads": end["threads"] - start["threads"],
                "rss_pct": round(100 * d_rss, 1),
                "data_bytes": end["data_bytes"] - start["data_bytes"],
                "data_files": end["data_files"] - start["data_files"],
            },
            "restarts_per_cycle": a.restarts,
            "restart_growth": growth,
            "fd_kinds": {"start": fd_kinds(start_fds), "end": fd_kinds(end_fds)},
            "fds_new": sorted(set(end_fds) - set(start_fds))[:20],
            "samples": self.samples,
            "reload_detail": self.reloads,
            "server_log_tracebacks": log.count("Traceback"),
            "verdicts": verdicts,
            "ok": all(verdicts.values()),
        }


def report(r: dict[str, Any]) -> None:
    s, e, d = r["start"], r["end"], r["delta"]
    mb = 1024 * 1024
    print(f"code: {r['code']}")
    print(
        f"churn: {r['tasks']} tasks at {1 / r['interval']:.0f} Hz, {r['cycles']} cycles "
        f"(add, live restart, remove) in {r['elapsed_s']} s, {r['reloads']} reloads measured "
        f"(warm-up cycle included)"
    )
    print(f"  requests: {r['requests']}, failed: {r['failure_count']}; by status {r['by_status']}")
    for f in r["failures"][:5]:
        print(f"    failed: {f['who']} {f['method']} {f['what']} -> {f['status']} {f['error']}")
    print(
        f"  reload gap (trigger -> new generation answers): median {r['http_gap_s']['median']:.2f} s, "
        f"max {r['http_gap_s']['max']:.2f} s"
    )
    for p in ("ca", "pva"):
        o, h = r["outage_s"][p], r["after_http_s"][p]
        print(
            f"  {p.upper():3} monitors ({r['monitors'][p]}): outage disconnect -> first update median "
            f"{o['median']:.2f} s, p95 {o['p95']:.2f} s, max {o['max']:.2f} s; after the new generation "
            f"answered HTTP: median {h['median']:.2f} s, max {h['max']:.2f} s"
        )
    if r["not_resumed"]:
        print(f"  not resumed: {r['not_resumed'][:10]}")
    print(
        f"  server (PID same across reloads): fds {s['fds']} -> {e['fds']} ({d['fds']:+d}), "
        f"threads {s['threads']} -> {e['threads']} ({d['threads']:+d}), "
        f"RSS {s['rss'] / mb:.1f} -> {e['rss'] / mb:.1f} MiB ({d['rss_pct']:+.1f} %)"
    )
    if r["restarts_per_cycle"] > 1:
        g = r["restart_growth"]
        print(
            f"  {r['restarts_per_cycle']} live restarts per cycle, first -> last (worst cycle): fds {g['fds']:+d}, "
            f"threads {g['threads']:+d}, RSS {g['rss_pct']:+.1f} %"
        )
    print(
        f"  data dir: {s['data_bytes']} -> {e['data_bytes']} bytes ({d['data_bytes']:+d}), "
        f"{s['data_files']} -> {e['data_files']} files ({d['data_files']:+d})"
    )
    if d["fds"] > 0:
        print(f"  fds new at the end: {r['fds_new']}")
    print(f"  server log tracebacks: {r['server_log_tracebacks']}")
    for k, v in r["verdicts"].items():
        print(f"  [{'PASS' if v else 'FAIL'}] {k}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--minutes", type=float, default=3.0, help="churn duration after warm-up (default 3)"
    )
    ap.add_argument(
        "--cycles", type=int, default=0, help="stop after N cycles instead (0: use --minutes)"
    )
    ap.add_argument("--tasks", type=int, default=50, help="continuous tasks at 10 Hz (default 50)")
    ap.add_argument("--restarts", type=int, default=1, help="live restarts per cycle (default 1)")
    ap.add_argument("--monitors", type=int, default=3, help="CA and PVA monitors each (default 3)")
    ap.add_argument(
        "--resume-timeout", type=float, default=30.0, help="wait for monitors after a reload (s)"
    )
    ap.add_argument(
        "--settle", type=float, default=5.0, help="pause before the start/end figures (s)"
    )
    ap.add_argument(
        "--src", default="HEAD", help="commit to run the server from, or 'tree' (default HEAD)"
    )
    ap.add_argument(
        "--ports", help="CA,CA-repeater,PVA,PVA-broadcast,HTTP ports (default: free ones)"
    )
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    ports = Ports(*map(int, args.ports.split(","))) if args.ports else Ports()
    os.environ.update(ports.env())  # this process's CA client: before aioca's first call
    churn = Churn(args, ports)
    if args.src != "tree":
        snapshot(args.src, churn.tmp / "src")
    try:
        result = asyncio.run(churn.run())
    finally:
        if churn.proc is not None and churn.proc.poll() is None:
            churn.proc.kill()
            churn.proc.wait(10)
        if args.keep:
            print(f"kept {churn.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(churn.tmp, ignore_errors=True)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
