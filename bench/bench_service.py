"""Benchmark of the service (issue 3, item 11). Not a test: it prints figures.

Everything runs against the real ``iocmng-server`` process (``python -m
iocmng``) over real sockets: HTTP on loopback, EPICS on loopback only with
private ports (every process started here gets the loopback EPICS variables
and its own CA/PVA ports; this process's CA client searches only the add-to-
live server's port). Data directories are temporary and removed at the end;
every process started here is killed at the end.

Figures:

``add``    add-to-live: POST /api/v1/tasks of a small git repo (``git init``
           in a temp dir, ``file://`` URL, a copy of
           ``plugins_examples/sync_monitor``) until a ``caget`` of its
           READING PV answers. Phases: validation (until the 201), reload
           (201 until /health reports the pending generation; includes the
           ``reload_delay`` of 0.3 s that coalesces changes), first caget
           (until aioca gets a value, a new channel each time). Target < 3 s.
``gap``    the reload gap with N registered plugins (sync_monitor, 9 records
           each): a client polls GET /health (keep-alive, 1 ms pause between
           answers) and records the last answer of the old generation and the
           first of the new one; triggers alternate an add (local_path) and a
           delete of one probe plugin. Beside it, in the same run and
           interleaved trial by trial, the floor: ``bench/floor_reload.py``,
           a bare softioc + aiohttp process with the same records as the new
           generation ((N+1) × 9), re-executing itself on the inherited
           socket, measured by the same poller. Target: gap ≤ 1.5 × floor.
``job``    POST /api/v1/jobs/{name}/run of a trivial job (async and sync
           ``execute``), sequential, keep-alive: round trip median / p99, and
           its overhead = round trip − the job's own ``duration_s``.
           Target: overhead p99 < 5 ms.
``load``   200 continuous tasks at 10 Hz (an async bench plugin, 1 output PV
           + the 4 default PVs = 5 records each): GET /api/v1/tasks
           throughput from C concurrent keep-alive clients, and the tasks'
           tick lateness measured from inside the plugin (it records
           ``time.monotonic()`` at each ``execute()`` start and writes them
           out in ``cleanup()``; lateness = start − the task's fixed grid,
           the grid anchored at the task's least-late start) in three
           windows: idle, under HTTP load, idle again.
           Target: load moves p99 lateness by < 5 ms.

Usage::

    python bench/bench_service.py            # everything, ~8 min on 2 cores
    python bench/bench_service.py --quick    # a short run (~2 min)
    python bench/bench_service.py --only gap,job --json /tmp/figures.json
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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FLOOR = HERE / "floor_reload.py"
INTERVAL = 0.1

from loopback import Ports, free_port  # noqa: E402  (sibling bench module)

# This process's CA client (aioca reads the environment at its first call):
# loopback, and only the add-to-live server's CA port.
ADD_PORTS = Ports()
os.environ.update(ADD_PORTS.env())

PROCS: list[subprocess.Popen[bytes]] = []
TEMP = Path(tempfile.mkdtemp(prefix="iocmng-bench-service-"))
#: Where the server's code comes from: a ``git archive`` of a commit (default
#: HEAD, so edits in progress in the work tree do not reach the figures), put
#: first on the server's PYTHONPATH; or the work tree itself (``--src tree``).
SRC: dict[str, Any] = {"dir": REPO, "commit": "work tree"}


def snapshot(rev: str) -> None:
    dest = TEMP / "src"
    dest.mkdir()
    commit = subprocess.run(
        ["git", "rev-parse", rev], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "iocmng", "plugins_examples"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    SRC.update(dir=dest, commit=commit)


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = {
        **env,
        "PYTHONPATH": os.pathsep.join([str(SRC["dir"]), *filter(None, [env.get("PYTHONPATH")])]),
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=SRC["dir"], stdout=out, stderr=out, stdin=subprocess.DEVNULL
        )
    PROCS.append(proc)
    return proc


def cleanup_all() -> None:
    for proc in PROCS:
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
    shutil.rmtree(TEMP, ignore_errors=True)


# -- plugins -------------------------------------------------------------------------------
TICK_TASK = '''
import json, os, time
from iocmng import TaskBase

class BenchTick(TaskBase):
    """Records when each execute() starts; writes them out at cleanup."""
    async def initialize(self):
        self.starts = []
    async def execute(self):
        self.starts.append(time.monotonic())   # first thing: the cycle's start
        self.set_pv("VALUE", len(self.starts))
    async def cleanup(self):
        out = self.parameters.get("out_dir")
        if out:
            with open(os.path.join(out, self.name + ".json"), "w") as f:
                json.dump(self.starts, f)
'''

TICK_CONFIG = f"""
parameters:
  mode: continuous
  interval: {INTERVAL}
  out_dir: ""
pvs:
  outputs:
    VALUE: {{type: int, value: 0}}
"""

JOB_ASYNC = """
from iocmng import JobBase, JobResult

class BenchJobAsync(JobBase):
    async def initialize(self):
        pass
    async def execute(self):
        return JobResult(success=True, data={"x": 1}, message="ok")
"""

JOB_SYNC = """
from iocmng import JobBase, JobResult

class BenchJobSync(JobBase):
    def initialize(self):
        pass
    def execute(self):
        return JobResult(success=True, data={"x": 1}, message="ok")
"""

JOB_CONFIG = "parameters: {}\npvs: {}\n"


def write_plugin(root: Path, code: str, config: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "plugin.py").write_text(textwrap.dedent(code))
    (root / "config.yaml").write_text(textwrap.dedent(config))
    return root


def copy_sync_monitor(dest: Path) -> Path:
    shutil.copytree(
        Path(SRC["dir"]) / "plugins_examples" / "sync_monitor",
        dest,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return dest


def git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_SYSTEM": os.devnull,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def make_repo(root: Path) -> str:
    copy_sync_monitor(root)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "plugin")
    return root.as_uri()


# -- statistics ----------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- the server ----------------------------------------------------------------------------
class Server:
    """One iocmng-server (same data dir, ports and prefix across restarts)."""

    def __init__(self, label: str, ports: Ports | None = None) -> None:
        self.label = label
        self.data_dir = TEMP / label / "data"
        self.data_dir.mkdir(parents=True)
        self.log = TEMP / label / "server.log"
        self.ports = ports or Ports()
        self.http_port = free_port()
        self.prefix = f"BENCH{label.upper().replace('-', '')}"[:20]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/v1"

    def env(self, **extra: str) -> dict[str, str]:
        env = self.ports.env()
        env.update(
            {
                "IOCMNG_PLUGINS_DIR": str(self.data_dir),
                "IOCMNG_HOST": "127.0.0.1",
                "IOCMNG_PORT": str(self.http_port),
                "IOCMNG_PREFIX": self.prefix,
                "IOCMNG_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "warning"),
            }
        )
        env.update(extra)
        return env

    async def start(self, session: Any, **extra: str) -> dict[str, Any]:
        self.proc = spawn([sys.executable, "-m", "iocmng"], self.env(**extra), self.log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"{self.label}: server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                return await get_json(session, f"{self.url}/health")
            except Exception:
                await asyncio.sleep(0.05)
        raise SystemExit(f"{self.label}: server did not answer in 120 s")

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(self.proc.wait, 60)
        if rc != 0:
            print(f"  ({self.label}: exit code {rc})", file=sys.stderr)


async def get_json(session: Any, url: str) -> Any:
    async with session.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


async def post(
    session: Any, url: str, body: dict[str, Any] | None = None, expect: int = 201
) -> Any:
    async with session.post(url, json=body) as resp:
        data = await resp.json(content_type=None)
        if resp.status != expect:
            raise SystemExit(f"POST {url} -> {resp.status}: {data}")
        return data


async def wait_generation(session: Any, url: str, gen: int, timeout: float = 120) -> float:
    """Poll /health until it serves ``gen``; return perf_counter() of that answer."""
    import aiohttp

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            h = await get_json(session, f"{url}/health")
            if h["generation"] >= gen:
                return time.perf_counter()
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.001)
    raise SystemExit(f"generation {gen} not served within {timeout} s")


async def wait_running(session: Any, url: str, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = await get_json(session, f"{url}/health")
        running = h["plugins"].get("running", 0) + h["plugins"].get("idle", 0)
        if running >= n and not h.get("pending_generation"):
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"{n} plugins not running within {timeout} s: {h}")


async def register(
    session: Any, server: Server, items: list[tuple[str, dict[str, Any]]], concurrency: int = 3
) -> float:
    """POST every (collection, body); return the seconds it took."""
    t0 = time.monotonic()
    queue = list(items)

    async def worker() -> None:
        while queue:
            coll, body = queue.pop(0)
            await post(session, f"{server.url}/{coll}", body)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.monotonic() - t0


async def populate(
    session: Any, server: Server, items: list[tuple[str, dict[str, Any]]], n_live: int
) -> float:
    """Register many plugins without a reload per add (long reload_delay), then
    restart the server so that one generation builds them all."""
    await server.start(session, IOCMNG_RELOAD_DELAY="3600")
    took = await register(session, server, items)
    await server.stop()
    await server.start(session)
    await wait_running(session, server.url, n_live)
    return took


# -- 1. add to live ------------------------------------------------------------------------
async def bench_add(session: Any, reps: int) -> dict[str, Any]:
    from aioca import caget

    server = Server("add", ADD_PORTS)
    await server.start(session)
    # Warm-up: one plugin live, and this process's CA context created on it.
    warm = copy_sync_monitor(TEMP / "add" / "warm")
    r = await post(session, f"{server.url}/tasks", {"name": "warm", "local_path": str(warm)})
    await wait_generation(session, server.url, r["generation"])
    await caget(f"{server.prefix}:WARM:READING", timeout=10)
    rows = []
    for k in range(reps):
        url = make_repo(TEMP / "add" / f"repo{k}")
        name = f"live{k}"
        t0 = time.perf_counter()
        r = await post(session, f"{server.url}/tasks", {"name": name, "git_url": url})
        t1 = time.perf_counter()
        t2 = await wait_generation(session, server.url, r["generation"])
        pv = f"{server.prefix}:{name.upper()}:READING"
        while True:
            try:
                await caget(pv, timeout=0.5)
                break
            except Exception:
                if time.perf_counter() - t2 > 30:
                    raise SystemExit(f"{pv} never answered") from None
        t3 = time.perf_counter()
        rows.append(
            {"validation_s": t1 - t0, "reload_s": t2 - t1, "caget_s": t3 - t2, "total_s": t3 - t0}
        )
        print(
            f"  add {k}: validation {t1 - t0:.3f} s, reload {t2 - t1:.3f} s, first caget {t3 - t2:.3f} s,"
            f" total {t3 - t0:.3f} s",
            file=sys.stderr,
        )
    await server.stop()
    out: dict[str, Any] = {"reps": reps, "plugins_before": 1}
    for key in ("validation_s", "reload_s", "caget_s", "total_s"):
        out[key] = med([row[key] for row in rows])
    out["total_max_s"] = max(row["total_s"] for row in rows)
    return out


# -- 2. the reload gap ---------------------------------------------------------------------
#: --profile: a directory for py-spy profiles of the server (load figure).
PROFILE: dict[str, Any] = {"dir": None}

#: The /health poller's connections: keep-alive (one connection, as a
#: ``requests.Session`` or aiohttp client would) or a new one per request.
POLL: dict[str, Any] = {"keepalive": True, "fresh": None}


async def measure_gap(session: Any, url: str, old_gen: int, trigger: Any) -> tuple[float, int]:
    """Poll /health (keep-alive, 1 ms pause); fire ``trigger``; return the gap between the
    last answer of ``old_gen`` and the first of a newer generation, and the new generation."""
    import aiohttp

    last_old = None
    task = None
    deadline = time.monotonic() + 180
    poll_session = session if POLL["keepalive"] else POLL["fresh"]
    while time.monotonic() < deadline:
        try:
            async with poll_session.get(f"{url}/health") as resp:
                h = await resp.json()
            now = time.perf_counter()
        except (aiohttp.ClientError, OSError):
            continue  # the old generation closed our keep-alive connection: reconnect at once
        if h["generation"] == old_gen:
            last_old = now
            if task is None:
                task = asyncio.ensure_future(trigger())
        elif h["generation"] > old_gen and last_old is not None:
            if task is not None:
                await task
            return now - last_old, h["generation"]
        await asyncio.sleep(0.001)
    raise SystemExit("no new generation within 180 s")


class Floor:
    def __init__(self, plugins: int, label: str) -> None:
        self.port = free_port()
        self.ports = Ports()
        self.log = TEMP / f"{label}.log"
        self.proc = spawn(
            [
                sys.executable,
                str(FLOOR),
                "--port",
                str(self.port),
                "--plugins",
                str(plugins),
                "--prefix",
                f"FLOOR{label.upper()}"[:20],
            ],
            self.ports.env(),
            self.log,
        )
        self.gen = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    async def ready(self, session: Any) -> None:
        await wait_generation(session, self.url, 1, timeout=60)

    async def gap(self, session: Any) -> float:
        async def trigger() -> None:
            await post(session, f"http://127.0.0.1:{self.port}/reload", expect=200)

        gap, self.gen = await measure_gap(session, self.url, self.gen, trigger)
        return gap

    def phases(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def bench_gap(session: Any, n: int, trials: int) -> dict[str, Any]:
    label = f"gap{n}"
    server = Server(label)
    src = TEMP / label / "src"
    items = []
    for i in range(n):
        d = copy_sync_monitor(src / f"p{i:03d}")
        items.append(("tasks", {"name": f"p{i:03d}", "local_path": str(d)}))
    took = await populate(session, server, items, n)
    print(f"  gap N={n}: registered in {took:.1f} s", file=sys.stderr)
    probe = copy_sync_monitor(src / "probe")
    floor = Floor(n + 1, label + "floor")
    await floor.ready(session)
    gaps: list[float] = []
    floors: list[float] = []
    for t in range(trials):
        for action in ("add", "delete"):
            gen = (await get_json(session, f"{server.url}/health"))["generation"]

            async def trigger(action: str = action) -> None:
                if action == "add":
                    await post(
                        session, f"{server.url}/tasks", {"name": "probe", "local_path": str(probe)}
                    )
                else:
                    async with session.delete(f"{server.url}/tasks/probe") as resp:
                        assert resp.status == 200, await resp.text()

            g, _ = await measure_gap(session, server.url, gen, trigger)
            await wait_running(session, server.url, n + (action == "add"))
            gaps.append(g)
            f = await floor.gap(session)
            floors.append(f)
            print(
                f"  gap N={n} trial {t} {action}: iocmng {g:.3f} s, floor {f:.3f} s",
                file=sys.stderr,
            )
            await asyncio.sleep(0.5)
    phases = floor.phases()
    floor.kill()
    await server.stop()
    return {
        "n": n,
        "records_floor": (n + 1) * 9,
        "samples": len(gaps),
        "gap_med_s": med(gaps),
        "gap_max_s": max(gaps),
        "floor_med_s": med(floors),
        "floor_max_s": max(floors),
        "ratio": med(gaps) / med(floors),
        "floor_phases_med": {
            k: med([p[k] for p in phases[1:]])
            for k in ("imports", "records_built", "iocInit", "first_answer")
        },
    }


# -- 3. jobs ---------------------------------------------------------------------------------
async def bench_job(session: Any, runs: int) -> dict[str, Any]:
    server = Server("job")
    root = TEMP / "job" / "src"
    a = write_plugin(root / "ja", JOB_ASYNC, JOB_CONFIG)
    s = write_plugin(root / "js", JOB_SYNC, JOB_CONFIG)
    await server.start(session)
    r = await post(session, f"{server.url}/jobs", {"name": "ja", "local_path": str(a)})
    r = await post(session, f"{server.url}/jobs", {"name": "js", "local_path": str(s)})
    await wait_generation(session, server.url, r["generation"])
    await wait_running(session, server.url, 2)
    out: dict[str, Any] = {"runs": runs}
    for name, kind in (("ja", "async"), ("js", "sync")):
        rtt, over, dur = [], [], []
        for i in range(runs + 20):
            t0 = time.perf_counter()
            async with session.post(f"{server.url}/jobs/{name}/run") as resp:
                body = await resp.json()
            t1 = time.perf_counter()
            assert resp.status == 200 and body["success"], body
            if i >= 20:  # warm-up
                rtt.append(t1 - t0)
                dur.append(body["duration_s"])
                over.append(t1 - t0 - body["duration_s"])
        out[kind] = {
            "rtt_med_ms": 1e3 * med(rtt),
            "rtt_p99_ms": 1e3 * pct(rtt, 0.99),
            "duration_med_ms": 1e3 * med(dur),
            "duration_p99_ms": 1e3 * pct(dur, 0.99),
            "overhead_med_ms": 1e3 * med(over),
            "overhead_p99_ms": 1e3 * pct(over, 0.99),
            "overhead_max_ms": 1e3 * max(over),
        }
        print(f"  job {kind}: {out[kind]}", file=sys.stderr)
    await server.stop()
    return out


# -- 4. GET /tasks under 200 tasks at 10 Hz ----------------------------------------------------
def lateness(starts: list[float], windows: list[tuple[float, float]]) -> list[list[float]]:
    """Per window: each cycle's start minus the task's fixed grid, anchored at its least-late
    start from the first window on (an overrun re-anchors the runtime's grid: one during the
    start-up burst must not shift every later cycle; there are none inside the windows, where
    lateness stays far below the interval)."""
    if len(starts) < 3:
        return [[] for _ in windows]
    base = min(
        (t - i * INTERVAL for i, t in enumerate(starts) if t >= windows[0][0]),
        default=min(t - i * INTERVAL for i, t in enumerate(starts)),
    )
    out: list[list[float]] = [[] for _ in windows]
    for i, t in enumerate(starts):
        late = t - i * INTERVAL - base
        for w, (a, b) in enumerate(windows):
            if a <= t < b:
                out[w].append(late)
    return out


async def bench_load(session: Any, n: int, seconds: float, clients: int) -> dict[str, Any]:
    import aiohttp

    server = Server("load")
    out_dir = TEMP / "load" / "ticks"
    out_dir.mkdir(parents=True)
    plugin = write_plugin(TEMP / "load" / "src" / "tick", TICK_TASK, TICK_CONFIG)
    items = [
        (
            "tasks",
            {
                "name": f"t{i:03d}",
                "local_path": str(plugin),
                "parameters": {"out_dir": str(out_dir)},
            },
        )
        for i in range(n)
    ]
    took = await populate(session, server, items, n)
    print(f"  load: {n} tasks registered in {took:.1f} s", file=sys.stderr)
    await asyncio.sleep(5)  # warm-up
    overruns_before = sum(
        x.get("overruns", 0) for x in (await get_json(session, f"{server.url}/tasks"))["plugins"]
    )
    windows = []
    t = time.monotonic()
    windows.append((t, t + seconds))
    await asyncio.sleep(seconds)

    # Under load: C clients, each its own keep-alive connection.
    stop = time.monotonic() + seconds
    counts = [0] * clients
    lat: list[float] = []

    async def client(k: int) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                async with s.get(f"{server.url}/tasks") as resp:
                    await resp.read()
                    assert resp.status == 200
                lat.append(time.perf_counter() - t0)
                counts[k] += 1

    spy = None
    if PROFILE["dir"]:  # py-spy on the server during the loaded window
        out = Path(PROFILE["dir"]) / "load_get_tasks.txt"
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(server.proc.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    t0 = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(clients)))
    t1 = time.monotonic()
    windows.append((t0, t1))
    if spy is not None:
        await spy.wait()
    rps = sum(counts) / (t1 - t0)
    print(f"  load: GET /tasks {rps:.1f} req/s ({clients} clients)", file=sys.stderr)
    await asyncio.sleep(0.5)
    t = time.monotonic()
    windows.append((t, t + seconds))
    await asyncio.sleep(seconds)
    tasks = (await get_json(session, f"{server.url}/tasks"))["plugins"]
    overruns = sum(x.get("overruns", 0) for x in tasks)
    errors = sum(x.get("error_count", 0) for x in tasks)
    await server.stop()  # cleanup() writes each task's start times
    per_window: list[list[float]] = [[], [], []]
    files = 0
    for f in out_dir.glob("*.json"):
        files += 1
        for w, vals in enumerate(lateness(json.loads(f.read_text()), windows)):
            per_window[w].extend(vals)
    res: dict[str, Any] = {
        "tasks": n,
        "files": files,
        "clients": clients,
        "window_s": seconds,
        "rps": rps,
        "get_med_ms": 1e3 * med(lat),
        "get_p99_ms": 1e3 * pct(lat, 0.99),
        "overruns": overruns,
        "overruns_in_windows": overruns - overruns_before,
        "errors": errors,
    }
    for w, key in enumerate(("idle", "load", "idle2")):
        res[key] = {
            "med_ms": 1e3 * med(per_window[w]),
            "p99_ms": 1e3 * pct(per_window[w], 0.99),
            "max_ms": 1e3 * max(per_window[w], default=float("nan")),
            "samples": len(per_window[w]),
        }
    idle_p99 = max(res["idle"]["p99_ms"], res["idle2"]["p99_ms"])
    res["p99_shift_ms"] = res["load"]["p99_ms"] - idle_p99
    return res


# -- driver ----------------------------------------------------------------------------------
#: --quiet-load / --quiet-wait: before each figure (and each plugin count of the
#: gap), wait for the 1-min load average to fall under the limit (the machine is shared).
QUIET: dict[str, float] = {"load": 1.0, "wait": 180.0}


async def quiet(label: str) -> dict[str, Any]:
    """Wait (bounded) for a quiet machine; return the load when the figure starts."""
    t0 = time.monotonic()
    for _ in range(int(QUIET["wait"] // 5) + 1):  # polled every 5 s
        if os.getloadavg()[0] < QUIET["load"] or time.monotonic() - t0 >= QUIET["wait"]:
            break
        await asyncio.sleep(5)
    load, waited = os.getloadavg()[0], time.monotonic() - t0
    print(f"  [{label}: load {load:.2f} after waiting {waited:.0f} s]", file=sys.stderr, flush=True)
    return {
        "load_before": round(load, 2),
        "waited_s": round(waited),
        "start": time.strftime("%H:%M:%S"),
    }


def done(q: dict[str, Any]) -> dict[str, Any]:
    q.update(load_after=round(os.getloadavg()[0], 2), end=time.strftime("%H:%M:%S"))
    return q


def loadinfo(r: dict[str, Any]) -> str:
    q = r.get("quiet")
    return (
        f"  [load {q['load_before']:.2f} -> {q['load_after']:.2f}, {q['start']}-{q['end']}]"
        if q
        else ""
    )


def report(results: dict[str, Any]) -> None:
    print()
    if "add" in results:
        a = results["add"]
        ok = "met" if a["total_max_s"] < 3 else "MISSED"
        print(
            f"add-to-live (median of {a['reps']}): validation {a['validation_s']:.3f} s + reload {a['reload_s']:.3f} s"
            f" + first caget {a['caget_s']:.3f} s = {a['total_s']:.3f} s (max {a['total_max_s']:.3f} s)"
            f"  target < 3 s: {ok}{loadinfo(a)}"
        )
    for g in results.get("gap", []):
        ok = "met" if g["ratio"] <= 1.5 else "MISSED"
        print(
            f"reload gap N={g['n']:>3}: iocmng {g['gap_med_s']:.3f} s (max {g['gap_max_s']:.3f}),"
            f" floor {g['floor_med_s']:.3f} s (max {g['floor_max_s']:.3f}), ratio {g['ratio']:.2f}"
            f"  target <= 1.5: {ok}  [{g['samples']} samples]{loadinfo(g)}"
        )
    if "job" in results:
        for kind in ("async", "sync"):
            j = results["job"][kind]
            ok = "met" if j["overhead_p99_ms"] < 5 else "MISSED"
            print(
                f"job round trip ({kind}, {results['job']['runs']} runs): median {j['rtt_med_ms']:.2f} ms,"
                f" p99 {j['rtt_p99_ms']:.2f} ms; duration_s median {j['duration_med_ms']:.3f} ms;"
                f" overhead median {j['overhead_med_ms']:.2f} ms, p99 {j['overhead_p99_ms']:.2f} ms"
                f"  target p99 < 5 ms: {ok}{loadinfo(results['job'])}"
            )
    if "load" in results:
        lo = results["load"]
        ok = "met" if lo["p99_shift_ms"] < 5 else "MISSED"
        print(
            f"GET /tasks with {lo['tasks']} tasks at 10 Hz: {lo['rps']:.1f} req/s ({lo['clients']} clients,"
            f" {lo['window_s']:.0f} s; per request median {lo['get_med_ms']:.1f} ms, p99 {lo['get_p99_ms']:.1f} ms)"
        )
        for key in ("idle", "load", "idle2"):
            w = lo[key]
            print(
                f"  task lateness {key:5}: median {w['med_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms,"
                f" max {w['max_ms']:.2f} ms ({w['samples']} cycles)"
            )
        print(
            f"  p99 shift under load: {lo['p99_shift_ms']:+.2f} ms  target < 5 ms: {ok}"
            f"  (overruns {lo['overruns']}, {lo.get('overruns_in_windows', '?')} in the windows; errors {lo['errors']})"
            f"{loadinfo(lo)}"
        )


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    only = set(args.only.split(",")) if args.only else {"add", "gap", "job", "load"}
    results: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "commit": SRC["commit"],
        "loadavg_start": os.getloadavg(),
    }
    timeout = aiohttp.ClientTimeout(total=180)
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=4)) as session,
        aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
        ) as fresh,
    ):
        POLL.update(keepalive=args.poll == "keepalive", fresh=fresh)
        results["poll"] = args.poll
        if "add" in only:
            print("add-to-live", file=sys.stderr)
            q = await quiet("add")
            results["add"] = await bench_add(session, 2 if args.quick else 5)
            results["add"]["quiet"] = done(q)
        if "gap" in only:
            results["gap"] = []
            counts = (
                [int(x) for x in args.gaps.split(",")]
                if args.gaps
                else ([1, 20] if args.quick else [1, 20, 100])
            )
            for n in counts:
                print(f"reload gap N={n}", file=sys.stderr)
                q = await quiet(f"gap N={n}")
                results["gap"].append(
                    await bench_gap(session, n, args.trials or (1 if args.quick else 3))
                )
                results["gap"][-1]["quiet"] = done(q)
        if "job" in only:
            print("job round trip", file=sys.stderr)
            q = await quiet("job")
            results["job"] = await bench_job(session, 100 if args.quick else 500)
            results["job"]["quiet"] = done(q)
        if "load" in only:
            print("GET /tasks under load", file=sys.stderr)
            q = await quiet("load")
            results["load"] = await bench_load(
                session, 50 if args.quick else args.tasks, 4.0 if args.quick else 10.0, args.clients
            )
            results["load"]["quiet"] = done(q)
    results["loadavg_end"] = os.getloadavg()
    print(
        f"load average: start {results['loadavg_start']}, end {results['loadavg_end']}",
        file=sys.stderr,
    )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="a short run (fewer plugins, runs and seconds)"
    )
    ap.add_argument("--only", default="", help="comma list of: add, gap, job, load")
    ap.add_argument(
        "--tasks", type=int, default=200, help="tasks for the load figure (default 200)"
    )
    ap.add_argument(
        "--clients", type=int, default=4, help="concurrent HTTP clients for the load figure"
    )
    ap.add_argument(
        "--poll",
        choices=["keepalive", "fresh"],
        default="keepalive",
        help="the /health poller's connections (gap figure): one keep-alive connection, or one per request",
    )
    ap.add_argument(
        "--gaps",
        default="",
        help="comma list of plugin counts for the gap figure (default 1,20,100)",
    )
    ap.add_argument(
        "--trials", type=int, default=0, help="add+delete pairs per plugin count (default 3)"
    )
    ap.add_argument(
        "--profile", help="directory: py-spy profile (raw stacks) of the server under the GET load"
    )
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument(
        "--src",
        default="HEAD",
        help="commit whose iocmng/ the server runs (git archive; default HEAD), or 'tree' for the work tree, or a directory holding iocmng/ and plugins_examples/",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for inspection")
    ap.add_argument(
        "--quiet-load",
        type=float,
        default=1.0,
        help="before each figure (each N of the gap), wait for the 1-min load average to fall under this",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=180.0,
        help="longest wait (s) for --quiet-load; 0 = do not wait",
    )
    args = ap.parse_args()
    QUIET.update(load=args.quiet_load, wait=args.quiet_wait)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        PROFILE["dir"] = str(Path(args.profile).resolve())
    if os.path.isdir(
        args.src
    ):  # an already prepared copy (e.g. a patched snapshot, for an experiment)
        SRC.update(dir=Path(args.src).resolve(), commit=f"dir {args.src}")
    elif args.src != "tree":
        snapshot(args.src)
    print(f"server code: {SRC['commit']} ({SRC['dir']})", file=sys.stderr)
    try:
        results = asyncio.run(amain(args))
    finally:
        keep = TEMP if args.keep else None
        if keep:
            for proc in PROCS:
                if proc.poll() is None:
                    proc.kill()
            print(f"kept {keep}", file=sys.stderr)
        else:
            cleanup_all()
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
