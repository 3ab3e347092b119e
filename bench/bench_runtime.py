"""Benchmark of the plugin runtime (issue 2, item 9). Not a test: it prints figures.

Every configuration runs in its own child process (``iocInit`` can run only
once per process), one after the other, on loopback-only EPICS with private
ports. The driver prints one table with each figure as a ratio to the floor
of the same N.

Configurations (N = 100 and 1000 by default, 10 Hz, one record update
per task per cycle):

``floor``    the issue's floor: N bare pythonSoftIOC ``aIn`` records, no
             framework: one coroutine on the IOC's loop wakes 100 times per
             period and calls ``.set()`` on N/100 records each time (phases
             spread over the period). ``.set()`` queues an I/O interrupt;
             EPICS's ``cbLow`` thread processes the record by calling back
             into Python under the GIL.
``ffloor``   the same with N plain ``ai`` records (``builder.records.ai``)
             written through :class:`iocmng.epics.ioc.FastRecord` (attached after
             iocInit): ``dbPut`` + ``dbProcess`` in the calling thread, the
             path iocmng's read-only records take since cb8298d.
``async``    N continuous plugins (``async def execute``: one ``set_pv`` on
             an output, i.e. a ``FastRecord``) through the real
             :class:`~iocmng.runtime.runtime.Runtime` and
             :class:`~iocmng.epics.ioc.IocBridge` (all default records, iocInit).
``sync``     the same with ``def execute`` (worker threads).
``threads``  the old iocmng's design: one thread per task doing
             ``time.sleep(interval)`` then ``record.set()`` (pythonSoftIOC
             ``aIn``, as the old iocmng did).
``trigger``  latency from a CA put on RUN (aioca, a separate process) to
             ``execute()`` starting, for an async and a sync triggered
             plugin, with N async continuous plugins running alongside.

Usage::

    python bench/bench_runtime.py                     # everything, ~6 min
    python bench/bench_runtime.py --n 1000 --configs floor,async --seconds 20
    python bench/bench_runtime.py --child async --n 1000   # one child, JSON out

Figures per configuration, over a steady window after a warm-up:
rate per task (min / median over tasks), CPU % of one core (``os.times``
of the process: user + system, all threads), RSS (psutil), tick jitter
(start lateness against the task's fixed grid, median and p99 over every
cycle of every task; the runtime keeps it in ``PluginHandle.lateness``; for
``threads``, which has no grid, the error of each period against
``interval``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
INTERVAL = 0.1  # 10 Hz

ASYNC_PLUGIN = """
from iocmng import TaskBase

class BenchAsync(TaskBase):
    async def initialize(self):
        self.n = 0
    async def execute(self):
        self.n += 1
        self.set_pv("VALUE", self.n)
    async def cleanup(self):
        pass
"""

SYNC_PLUGIN = """
from iocmng import TaskBase

class BenchSync(TaskBase):
    def initialize(self):
        self.n = 0
    def execute(self):
        self.n += 1
        self.set_pv("VALUE", self.n)
    def cleanup(self):
        pass
"""

TRIGGER_PLUGIN = """
import time
from iocmng import TaskBase

class BenchTrigger(TaskBase):
    {a}def initialize(self):
        pass
    {a}def execute(self):
        self.set_pv("T", time.monotonic())   # first thing: when execute() started
    {a}def cleanup(self):
        pass
"""

CONTINUOUS_CONFIG = f"""
parameters:
  mode: continuous
  interval: {INTERVAL}
pvs:
  outputs:
    VALUE: {{type: float, value: 0.0}}
"""

TRIGGER_CONFIG = """
parameters:
  mode: triggered
pvs:
  outputs:
    T: {type: float, value: 0.0, prec: 6}
"""


# -- environment ----------------------------------------------------------------------
def epics_env(base_port: int) -> dict[str, str]:
    """Loopback-only EPICS with private ports (no traffic leaves the machine)."""
    return {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_SERVER_PORT": str(base_port),
        "EPICS_CA_REPEATER_PORT": str(base_port + 1),
        "EPICS_PVA_SERVER_PORT": str(base_port + 2),
        "EPICS_PVA_BROADCAST_PORT": str(base_port + 3),
    }


def write_plugin(root: Path, name: str, code: str, config: str) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "plugin.py").write_text(textwrap.dedent(code))
    (d / "config.yaml").write_text(textwrap.dedent(config))
    return d


# -- statistics -----------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def process_figures(
    t0: float, c0: float, t1: float, c1: float, s0: float | None = None, s1: float | None = None
) -> dict[str, float]:
    import psutil

    out = {
        "cpu_pct": 100 * (c1 - c0) / (t1 - t0),
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
        "threads": threading.active_count(),
    }
    if s0 is not None and s1 is not None:
        # everything else on the machine over the same window (other users'
        # test suites; for ``trigger`` also the bench's own CA client)
        out["others_pct"] = 100 * (s1 - s0) / (t1 - t0) - out["cpu_pct"]
        out["load1"] = os.getloadavg()[0]
    return out


def system_busy() -> float:
    """Busy CPU seconds of the whole machine, all cores (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name (threads of the same name summed)."""
    import psutil

    out: dict[str, float] = {}
    for t in psutil.Process().threads():
        try:
            name = Path(f"/proc/self/task/{t.id}/comm").read_text().strip()
        except OSError:
            continue
        name = name.rstrip("0123456789-") or name
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out


def thread_figures(
    before: dict[str, float], after: dict[str, float], window: float
) -> dict[str, float]:
    """CPU % per thread group over the window, largest first (top 5)."""
    diff = {k: 100 * (v - before.get(k, 0.0)) / window for k, v in after.items()}
    return {k: round(v, 1) for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[:5]}


def rate_figures(counts: list[float], window: float) -> dict[str, float]:
    rates = [c / window for c in counts]
    return {
        "rate_min": min(rates) if rates else 0.0,
        "rate_median": statistics.median(rates) if rates else 0.0,
        "holding": sum(r >= 0.98 / INTERVAL for r in rates) / max(1, len(rates)),
    }


def jitter_figures(late: list[float]) -> dict[str, float]:
    return {
        "jitter_med_ms": 1e3 * pct(late, 0.5),
        "jitter_p99_ms": 1e3 * pct(late, 0.99),
        "samples": len(late),
    }


# -- children -------------------------------------------------------------------------
async def child_floor(
    n: int, warmup: float, seconds: float, prefix: str, fast: bool = False
) -> dict:
    """Bare record updates, no framework: pythonSoftIOC ``aIn.set()`` or ``FastRecord.set()``."""
    from softioc import asyncio_dispatcher, builder, softioc

    names = [f"{prefix}:F{i:04d}:VALUE" for i in range(n)]
    if fast:
        from iocmng.epics.ioc import FastRecord

        for name in names:  # as IocBridge._in_record builds a float output
            builder.records.ai(name, VAL=0.0, UDF=0, DISP=1)
        records: list = [FastRecord(name, "float", 0.0) for name in names]
    else:
        records = [builder.aIn(name, initial_value=0.0, DISP=1) for name in names]
    loop = asyncio.get_running_loop()
    dispatcher = asyncio_dispatcher.AsyncioDispatcher(loop=loop)
    builder.LoadDatabase()
    softioc.iocInit(dispatcher)
    if fast:
        for rec in records:
            rec.attach()
    slots = 100
    groups = [records[k::slots] for k in range(slots)]
    state = {"sets": 0, "late": [], "measure": False}

    async def spread_timer() -> None:
        next_t = loop.time()
        value = 0.0
        while True:
            for group in groups:
                delay = next_t - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if state["measure"]:
                    state["late"].append(loop.time() - next_t)
                value += 1
                for rec in group:
                    rec.set(value)
                state["sets"] += len(group)
                next_t += INTERVAL / slots

    task = loop.create_task(spread_timer())
    await asyncio.sleep(warmup)
    state["measure"] = True
    s0, t0, c0, th0, y0 = state["sets"], time.monotonic(), cpu_now(), thread_cpu(), system_busy()
    await asyncio.sleep(seconds)
    s1, t1, c1, th1, y1 = state["sets"], time.monotonic(), cpu_now(), thread_cpu(), system_busy()
    state["measure"] = False
    task.cancel()
    window = t1 - t0
    per_task = (s1 - s0) / n
    out = {
        "config": "ffloor" if fast else "floor",
        "n": n,
        "window_s": window,
        "record": type(records[0]).__name__,
        **rate_figures([per_task] * n, window),
    }
    out.update(jitter_figures(state["late"]))
    out.update(process_figures(t0, c0, t1, c1, y0, y1))
    out["thread_cpu"] = thread_figures(th0, th1, window)
    return out


def child_threads(n: int, warmup: float, seconds: float, prefix: str) -> dict:
    """The old iocmng: a thread per task, time.sleep(interval), then the work."""
    from softioc import asyncio_dispatcher, builder, softioc

    records = [builder.aIn(f"{prefix}:T{i:04d}:VALUE", initial_value=0.0, DISP=1) for i in range(n)]
    dispatcher = asyncio_dispatcher.AsyncioDispatcher()  # its own loop thread, as before
    builder.LoadDatabase()
    softioc.iocInit(dispatcher)
    counts = [0] * n
    errors: list[list[float]] = [[] for _ in range(n)]
    flags = {"stop": False, "measure": False}

    def worker(i: int) -> None:
        rec = records[i]
        last = time.monotonic()
        while not flags["stop"]:
            time.sleep(INTERVAL)
            now = time.monotonic()
            if flags["measure"]:
                errors[i].append(now - last - INTERVAL)
            last = now
            counts[i] += 1
            rec.set(float(counts[i]))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    flags["measure"] = True
    k0, t0, c0, th0, y0 = list(counts), time.monotonic(), cpu_now(), thread_cpu(), system_busy()
    time.sleep(seconds)
    k1, t1, c1, th1, y1 = list(counts), time.monotonic(), cpu_now(), thread_cpu(), system_busy()
    flags["measure"] = False
    window = t1 - t0
    out = {
        "config": "threads",
        "n": n,
        "window_s": window,
        **rate_figures([b - a for a, b in zip(k0, k1, strict=True)], window),
    }
    out.update(process_figures(t0, c0, t1, c1, y0, y1))
    out.update(jitter_figures([e for errs in errors for e in errs]))
    out["thread_cpu"] = thread_figures(th0, th1, window)
    flags["stop"] = True
    return out


async def child_runtime(
    kind: str, n: int, warmup: float, seconds: float, prefix: str, freeze: bool, trigger_count: int
) -> dict:
    from iocmng.epics.ioc import IocBridge
    from iocmng.runtime.runtime import PluginSpec, Runtime, State

    root = Path(tempfile.mkdtemp(prefix="iocmng-bench-"))
    code = SYNC_PLUGIN if kind == "sync" else ASYNC_PLUGIN
    cont_dir = write_plugin(root, "cont", code, CONTINUOUS_CONFIG)
    bridge = IocBridge(prefix)
    runtime = Runtime(bridge)
    t_load = time.monotonic()
    names = [f"t{i:04d}" for i in range(n)]
    for name in names:
        h = runtime.prepare(PluginSpec(name, cont_dir))
        assert h.state != State.FAILED, h.last_error
    if kind == "trigger":
        for a in ("async", "sync"):
            d = write_plugin(
                root,
                f"trig_{a}",
                TRIGGER_PLUGIN.format(a="async " if a == "async" else ""),
                TRIGGER_CONFIG,
            )
            h = runtime.prepare(PluginSpec(f"trig-{a}", d))
            assert h.state != State.FAILED, h.last_error
    loop = asyncio.get_running_loop()
    bridge.start(loop)
    await runtime.start()
    load_s = time.monotonic() - t_load
    if freeze:  # what the runner does after start-up (iocmng.runtime.local.run_plugins)
        gc.freeze()
    await asyncio.sleep(warmup)
    handles = [runtime.handles[name] for name in names]
    for h in handles:
        h.lateness.clear()
    k0, t0, c0, th0, y0 = (
        [h.cycle_count for h in handles],
        time.monotonic(),
        cpu_now(),
        thread_cpu(),
        system_busy(),
    )
    o0 = sum(h.overruns for h in handles)
    latency: dict[str, list[float]] = {}
    if kind == "trigger":
        for a in ("async", "sync"):
            pv = f"{bridge.prefix}:TRIG-{a.upper()}"
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(HERE),
                "--client",
                pv,
                "--count",
                str(trigger_count),
                stdout=asyncio.subprocess.PIPE,
            )
            stdout, _ = await proc.communicate()
            latency[a] = json.loads(stdout.decode().strip().splitlines()[-1])
        rest = seconds - (time.monotonic() - t0)
        if rest > 0:
            await asyncio.sleep(rest)
    else:
        await asyncio.sleep(seconds)
    k1, t1, c1, th1, y1 = (
        [h.cycle_count for h in handles],
        time.monotonic(),
        cpu_now(),
        thread_cpu(),
        system_busy(),
    )
    window = t1 - t0
    out = {
        "config": kind,
        "n": n,
        "window_s": window,
        "load_s": load_s,
        "gc_freeze": freeze,
        "overruns": sum(h.overruns for h in handles) - o0,
        "errors": sum(h.error_count for h in handles),
        "workers": runtime.pool.size if runtime.pool else 0,
        # what a set_pv on an output writes (FastRecord since cb8298d)
        "record": type(handles[0].records.records["VALUE"]).__name__ if handles else None,
    }
    if n:
        out.update(rate_figures([b - a for a, b in zip(k0, k1, strict=True)], window))
        out.update(jitter_figures([x for h in handles for x in h.lateness]))
    out.update(process_figures(t0, c0, t1, c1, y0, y1))
    out["thread_cpu"] = thread_figures(th0, th1, window)
    for a, lat in latency.items():
        out[f"run_{a}_med_ms"] = 1e3 * pct(lat, 0.5)
        out[f"run_{a}_p99_ms"] = 1e3 * pct(lat, 0.99)
        out[f"run_{a}_max_ms"] = 1e3 * max(lat)
        out[f"run_{a}_samples"] = len(lat)
    await asyncio.wait_for(runtime.stop(), 30)
    return out


async def client(pv_base: str, count: int) -> list[float]:
    """CA put (with callback) on RUN; the plugin stamps T at execute() start."""
    from aioca import caget, caput, connect

    await connect([f"{pv_base}:RUN", f"{pv_base}:T"], timeout=10)
    lat = []
    for i in range(count + 5):
        await asyncio.sleep(random.uniform(0.01, 0.03))  # a random phase against the tasks
        t0 = time.monotonic()
        await caput(f"{pv_base}:RUN", 1, wait=True, timeout=10)
        t_exec = await caget(f"{pv_base}:T", timeout=10)
        if i >= 5:  # the first puts warm up the channel
            lat.append(float(t_exec) - t0)
    return lat


# -- driver ---------------------------------------------------------------------------
def wait_for_quiet(limit: float, max_wait: float) -> tuple[float, float]:
    """Wait (up to ``max_wait`` s) for the 1-min load average to fall under ``limit``.

    The machine is shared; returns (load when the child starts, seconds waited).
    """
    t0 = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < max_wait:
        time.sleep(5)
    return os.getloadavg()[0], time.monotonic() - t0


def run_child(config: str, n: int, args: argparse.Namespace) -> dict:
    load_before, waited = (
        wait_for_quiet(args.quiet_load, args.quiet_wait)
        if args.quiet_wait > 0
        else (os.getloadavg()[0], 0.0)
    )
    env = dict(os.environ)
    env.update(epics_env(random.randrange(20000, 60000, 4)))
    cmd = [
        sys.executable,
        str(HERE),
        "--child",
        config,
        "--n",
        str(n),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--trigger-count",
        str(args.trigger_count),
    ]
    if args.gc_freeze:
        cmd.append("--gc-freeze")
    if args.switch_interval:
        cmd += ["--switch-interval", str(args.switch_interval)]
    print(
        f"  $ {' '.join(cmd[1:])}   (load {load_before:.2f} after waiting {waited:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"child {config} N={n} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load_before"] = load_before
    return out


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None or v != v else format(v, spec)


def print_table(results: list[dict]) -> None:
    """Ratios to both floors of the same N: the issue's (``aIn.set()``) and FastRecord's."""
    floors = {r["n"]: r for r in results if r["config"] == "floor"}
    ffloors = {r["n"]: r for r in results if r["config"] == "ffloor"}

    def ratio(r: dict, base: dict | None, key: str) -> float | None:
        return r[key] / base[key] if base and base[key] > 0 else None

    print()
    print(
        f"{'config':9} {'N':>5} {'rate min/med Hz':>16} {'hold':>5} {'CPU %':>6} {'xfloor':>6} {'xffloor':>7} "
        f"{'RSS MB':>7} {'xfloor':>6} {'jit med ms':>10} {'jit p99 ms':>10} {'xfloor':>6} "
        f"{'load':>5} {'others%':>7}"
    )
    for r in results:
        if "rate_min" not in r:
            continue
        f, ff = floors.get(r["n"]), ffloors.get(r["n"])
        print(
            f"{r['config']:9} {r['n']:>5} {fmt(r['rate_min'], '.2f'):>7}/{fmt(r['rate_median'], '.2f'):<8} "
            f"{100 * r['holding']:>4.0f}% {r['cpu_pct']:>6.1f} {fmt(ratio(r, f, 'cpu_pct'), '.2f'):>6} "
            f"{fmt(ratio(r, ff, 'cpu_pct'), '.2f'):>7} {r['rss_mb']:>7.0f} {fmt(ratio(r, f, 'rss_mb'), '.2f'):>6} "
            f"{r['jitter_med_ms']:>10.2f} {r['jitter_p99_ms']:>10.2f} {fmt(ratio(r, f, 'jitter_p99_ms'), '.1f'):>6} "
            f"{fmt(r.get('load_before'), '.2f'):>5} {fmt(r.get('others_pct')):>7}"
        )
    for r in results:
        for a in ("async", "sync"):
            if f"run_{a}_med_ms" in r:
                print(
                    f"RUN put -> execute() start ({a:5}, {r['n']:>4} async tasks alongside): "
                    f"median {r[f'run_{a}_med_ms']:.2f} ms, p99 {r[f'run_{a}_p99_ms']:.2f} ms, "
                    f"max {r[f'run_{a}_max_ms']:.2f} ms ({r[f'run_{a}_samples']} puts)"
                )
    print(
        "load: 1-min load average when the child started; others%: CPU % of one core used by every other "
        "process during the window (for trigger it includes the bench's CA client)"
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", default="100,1000", help="comma-separated task counts")
    p.add_argument("--configs", default="floor,ffloor,async,sync,threads,trigger")
    p.add_argument("--seconds", type=float, default=20.0, help="steady window per configuration")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--trigger-count", type=int, default=300, help="RUN puts per triggered plugin")
    p.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() after start-up, as the runner does"
    )
    p.add_argument(
        "--switch-interval", type=float, help="sys.setswitchinterval() in the children (s)"
    )
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument(
        "--quiet-load",
        type=float,
        default=0.7,
        help="before each child, wait for the 1-min load average to fall under this",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=180.0,
        help="longest wait (s) for --quiet-load; 0 = do not wait",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=300, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.client:
        print(json.dumps(asyncio.run(client(args.client, args.count))))
        return 0
    if args.child:
        if args.switch_interval:
            sys.setswitchinterval(args.switch_interval)
        n = int(args.n)
        prefix = f"BENCH{random.randrange(10**6):06d}"
        if args.child in ("floor", "ffloor"):
            out = asyncio.run(
                child_floor(n, args.warmup, args.seconds, prefix, fast=args.child == "ffloor")
            )
        elif args.child == "threads":
            out = child_threads(n, args.warmup, args.seconds, prefix)
        else:
            out = asyncio.run(
                child_runtime(
                    args.child,
                    n,
                    args.warmup,
                    args.seconds,
                    prefix,
                    args.gc_freeze,
                    args.trigger_count,
                )
            )
        print(json.dumps(out), flush=True)
        os._exit(0)  # EPICS threads (and the old design's sleepers) do not join

    import platform

    print(
        f"python {platform.python_version()}, nproc {os.cpu_count()}, {platform.platform()}",
        file=sys.stderr,
    )
    results = []
    for n in [int(x) for x in args.n.split(",")]:
        for config in args.configs.split(","):
            r = run_child(config, n, args)
            results.append(r)
            print("  ", json.dumps(r), file=sys.stderr, flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
