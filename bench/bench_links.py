"""Benchmark of links (issue item: 1000 monitored links at 10 Hz across 20 plugins with rules).

Not a test: it prints figures. Three kinds of process, all on loopback-only
EPICS with private CA/PVA ports (bench/loopback.py):

``external IOC``  one pythonSoftIOC process serving G x M ``calc`` records
                  (``EXT:Ggg:Cmm``, CALC ``A+1`` on itself: a counter). No
                  Python runs per update: group g is a FLNK chain of M calc
                  records, its head processed by a ``seq`` record (SCAN .1
                  second) after a delay, so the G groups are spread evenly over
                  the 100 ms period (group g at about g x 100/G ms) and every
                  record of a group gets the same new value within ~0.1 ms.
``iocmng run``    the service under test: ``python -m iocmng.cli run <G dirs>
                  --prefix BENCH`` (no REST service), G declarative plugin
                  directories (a config.yaml, no .py), plugin g with M inputs
                  ``INmm`` wired (``link: ca://EXT:Ggg:Cmm``, ``link_mode:
                  monitor``, ``trigger: true``) and:

                  - a transform per input, ``OUTmm = INmm * 1`` (M outputs);
                  - ``SUM = IN00 + IN10 + IN20 + IN30 + IN40`` (a transform of 5 inputs);
                  - rule ``even``: ``IN00 % 2 == 0`` sets ``EVEN`` to 1 (default 0),
                    so EVEN toggles on every update;
                  - rule ``spread``: max - min of IN00, IN10, IN20, IN30, IN40 > 1
                    sets ``SPREAD`` (never, unless an evaluation saw a group half
                    updated by more than one step).
``this process``  an aioca client measuring (by default the PVs of every
                  plugin, ``--sample N``: of N plugins). On 2 cores it must
                  yield to what it measures: its main thread drops
                  CAP_SYS_NICE (as root, EPICS would run the client's CA
                  threads SCHED_FIFO, above the measured processes' asyncio
                  loops; ``--client-rt`` keeps it) and runs at
                  ``--client-nice`` 10. Nice values and capabilities are per
                  thread on Linux and inherited by the threads a thread
                  creates; the children are started from a thread created
                  before, so they run as the user would run them (as root:
                  EPICS threads SCHED_FIFO; ``--iocmng-no-rt`` starts iocmng
                  without CAP_SYS_NICE, as an unprivileged user gets it).

Configurations (``--configs``):

``reactive``            ``mode: reactive`` as above (the issue's case).
``reactive-notrigger``  the same without ``trigger: true`` (a reactive task
                        without trigger inputs evaluates on every wired input):
                        same evaluations, but no ``on_input_changed`` dispatch.
``reactive-pva``        ``reactive`` with ``pva://`` links (p4p monitors of the
                        external IOC's QSRV) instead of ``ca://`` (aioca).
``continuous``          ``mode: continuous``, ``interval: 0.1``: every rule and
                        transform evaluated every 100 ms whatever changed.

Figures, over a steady window (``--seconds``, after ``--warmup``):

- CPU (% of one core) of the iocmng process, by thread, and of the external
  IOC, from /proc/<pid>/stat and /proc/<pid>/task/*/stat (utime + stime);
  this process's own CPU, everything else on the machine (``others``,
  /proc/stat) and the hypervisor's steal over the same window; the 1-min
  load average (before each configuration the bench waits, up to
  ``--quiet-wait`` s, for it to fall under ``--quiet-load``).
- Latency from an external PV change to the dependent output changing:
  output record timestamp - external record timestamp of the same counter
  value. Both are processing timestamps (EPICS TIME, CLOCK_REALTIME of this
  one machine) carried by CA monitors (FORMAT_TIME, ``all_updates=True``) to
  this process, so this process's own delays do not enter. Sampled on 5
  inputs per plugin (positions 0, 10, 20, 30, 40 of the chain) and their
  OUT, on SUM (vs the last of its 5 external updates), on EVEN (a rule; vs
  IN00's external update), and on the wired input's own record (its mirror
  of the external PV, written in the link callback before the evaluation).
  An external update in the window with no output showing its value is
  ``missing`` (iocmng merged or lost it).
- The output update rate: of the monitored outputs (updates stamped in the
  window), and of every output (counter steps between a caget with
  timestamps at each end of the window); should be 10 Hz each. The
  evaluations per second per plugin (CYCLE_COUNT, published every 0.5 s).

Usage::

    python bench/bench_links.py                         # reactive + continuous, 20 s windows (~3 min)
    python bench/bench_links.py --quick                 # reactive only, 8 s window (~1 min)
    python bench/bench_links.py --configs reactive,reactive-notrigger,continuous --repeat 3 --json /tmp/links.json
    python bench/bench_links.py --configs reactive --events /tmp/ev   # also every sampled update, for a timeline

By default iocmng runs from a ``git archive`` of HEAD put first on its
PYTHONPATH (edits in progress in the work tree do not reach the figures);
``--src tree`` runs the work tree. Every process started here is killed at
the end (also on Ctrl-C or an exception); the temp dir is removed unless
``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PERIOD = 0.1  # the external counters' period (s)
PREFIXES = {
    "reactive": "BENCH",
    "reactive-notrigger": "BENCHN",
    "reactive-pva": "BENCHP",
    "continuous": "BENCHC",
}

from loopback import Ports  # noqa: E402  (sibling bench module)

PROCS: list[subprocess.Popen[bytes]] = []
TEMP = Path(tempfile.mkdtemp(prefix="iocmng-bench-links-"))
SRC: dict[str, Any] = {"dir": REPO, "commit": "work tree"}


def snapshot(rev: str) -> None:
    dest = TEMP / "src"
    dest.mkdir()
    commit = subprocess.run(
        ["git", "rev-parse", rev], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "iocmng"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    SRC.update(dir=dest, commit=commit)


#: Children are started from this thread, created before the main thread lowers its own
#: priority (--client-nice): on Linux a nice value is per thread and inherited by the threads
#: and processes a thread creates, so the measured processes keep nice 0 while this
#: process's CA client (its threads are created later, by the main thread) yields to them.
SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="spawner")
SPAWNER.submit(lambda: None).result()


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = {
        **env,
        "PYTHONPATH": os.pathsep.join([str(SRC["dir"]), *filter(None, [env.get("PYTHONPATH")])]),
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=TEMP,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # Ctrl-C reaches us only; we stop them
    PROCS.append(proc)
    return proc


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return SPAWNER.submit(_spawn, cmd, env, log).result()


def nice_self(increment: int) -> None:
    """Lower the priority of the calling thread only (and of what it creates from now on)."""
    if increment > 0:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)


CAP_SYS_NICE = 23


def drop_sys_nice_self() -> bool:
    """Drop CAP_SYS_NICE from the calling thread (capabilities are per thread on Linux, and
    inherited by the threads it creates). EPICS gives its threads SCHED_FIFO priorities when
    it may (root); without the capability libCom falls back to SCHED_OTHER, so this process's
    CA client threads no longer preempt the measured processes. Returns whether it was held."""

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, this thread
    if libc.capget(ctypes.byref(header), data) != 0:
        return False
    bit = 1 << CAP_SYS_NICE
    held = bool(data[0].effective & bit)
    if held:
        data[0].effective &= ~bit
        data[0].permitted &= ~bit
        data[0].inheritable &= ~bit
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset failed")
    return held


def stop_proc(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def cleanup_all(keep: bool = False) -> None:
    if "aioca" in sys.modules:  # no CA callbacks into a closed loop while the servers go away
        import aioca

        aioca.purge_channel_caches()
    for proc in PROCS:
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
    PROCS.clear()
    if not keep:
        shutil.rmtree(TEMP, ignore_errors=True)


# -- the external IOC ---------------------------------------------------------------------
READY = "BENCH-EXTERNAL-IOC-READY"

EXT_SCRIPT = textwrap.dedent(
    f"""
    import signal, sys
    from softioc import asyncio_dispatcher, builder, softioc

    G, M, PERIOD = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    LINKS = "0123456789ABCDEF"
    for g in range(G):
        for m in range(M):
            name = f"EXT:G{{g:02d}}:C{{m:02d}}"
            nxt = f"EXT:G{{g:02d}}:C{{m + 1:02d}}" if m + 1 < M else ""
            # a counter: A is the record's own VAL; the chain processes the next one
            builder.records.calc(name, CALC="A+1", INPA=name + " NPP", FLNK=nxt, PREC=0)
    # seq records start the chains one after the other, PERIOD/G apart
    # (seq delays are cumulative: DLYn counts from link n-1).
    step = PERIOD / G
    for s in range((G + 15) // 16):
        groups = range(16 * s, min(G, 16 * s + 16))
        fields = {{}}
        for k, g in enumerate(groups):
            fields[f"LNK{{LINKS[k]}}"] = f"EXT:G{{g:02d}}:C00.PROC"
            fields[f"DOL{{LINKS[k]}}"] = "1"
            fields[f"DLY{{LINKS[k]}}"] = (16 * s * step) if k == 0 else step
        builder.records.seq(f"EXT:SEQ{{s}}", SCAN=".1 second", SELM="All", **fields)
    builder.LoadDatabase()
    softioc.iocInit(asyncio_dispatcher.AsyncioDispatcher())
    print("{READY}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: softioc.safeEpicsExit(0))
    while True:
        signal.pause()
    """
)


def ext_name(g: int, m: int) -> str:
    return f"EXT:G{g:02d}:C{m:02d}"


def wait_line(
    proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}:\n{content[-3000:]}")
        time.sleep(0.05)
    raise SystemExit(
        f"{what}: no {text!r} within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}"
    )


# -- the plugins -----------------------------------------------------------------------------
SUM_INPUTS = (0, 10, 20, 30, 40)


def plugin_config(g: int, m_links: int, config: str) -> str:
    sampled = [f"IN{m:02d}" for m in SUM_INPUTS if m < m_links]
    trig = ", trigger: true" if config != "reactive-notrigger" else ""
    params = (
        "  mode: continuous\n  interval: 0.1\n" if config == "continuous" else "  mode: reactive\n"
    )
    proto = "pva" if config == "reactive-pva" else "ca"
    lines = [
        f"# bench/bench_links.py: plugin {g}, {m_links} links ({config})",
        "parameters:",
        params.rstrip("\n"),
        "pvs:",
        "  inputs:",
    ]
    for m in range(m_links):
        lines.append(
            f"    IN{m:02d}: {{type: float, link: '{proto}://{ext_name(g, m)}', link_mode: monitor{trig}}}"
        )
    lines.append("  outputs:")
    for m in range(m_links):
        lines.append(f"    OUT{m:02d}: {{type: float}}")
    lines += [
        "    SUM: {type: float}",
        "    EVEN: {type: bool}",
        "    SPREAD: {type: bool}",
        "transforms:",
    ]
    for m in range(m_links):
        lines.append(f"  - {{output: OUT{m:02d}, expression: 'IN{m:02d} * 1'}}")
    group = ", ".join(sampled)
    lines += [
        f"  - {{output: SUM, expression: '{' + '.join(sampled)}'}}",
        "rule_defaults: {EVEN: 0, SPREAD: 0}",
        "rules:",
        "  - {id: even, condition: 'IN00 % 2 == 0', outputs: {EVEN: 1}}",
        f"  - {{id: spread, condition: 'max({group}) - min({group}) > 1', outputs: {{SPREAD: 1}}}}",
    ]
    return "\n".join(lines) + "\n"


def write_plugins(root: Path, groups: int, m_links: int, config: str) -> list[Path]:
    dirs = []
    for g in range(groups):
        d = root / f"p{g:02d}"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(plugin_config(g, m_links, config))
        dirs.append(d)
    return dirs


# -- /proc ------------------------------------------------------------------------------------
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process (same names summed, trailing digits dropped)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        name = name.rstrip("0123456789-_") or name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def rt_threads(pid: int) -> dict[str, int]:
    """How many threads of a process run under each scheduling policy (EPICS gives its own
    threads SCHED_FIFO priorities when the process may: root, CAP_SYS_NICE)."""
    names = {
        os.SCHED_OTHER: "other",
        os.SCHED_FIFO: "fifo",
        os.SCHED_RR: "rr",
        os.SCHED_BATCH: "batch",
        os.SCHED_IDLE: "idle",
    }
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            policy = names.get(os.sched_getscheduler(int(task.name)), "?")
        except OSError:
            continue
        out[policy] = out.get(policy, 0) + 1
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def system_busy() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine, all cores (/proc/stat; busy includes steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICK, fields[7] / TICK


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# -- statistics ------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def dist(values_s: list[float]) -> dict[str, Any]:
    ms = [1e3 * v for v in values_s]
    return {
        "count": len(ms),
        "median_ms": statistics.median(ms) if ms else float("nan"),
        "p90_ms": pct(ms, 0.90),
        "p99_ms": pct(ms, 0.99),
        "max_ms": max(ms, default=float("nan")),
        "min_ms": min(ms, default=float("nan")),
    }


# -- measuring ---------------------------------------------------------------------------------
class Recorder:
    """CA monitors (FORMAT_TIME, every update) of the sampled PVs: (value, timestamp, arrival)."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[float, float, float]]] = {}
        self.subs: list[Any] = []

    def watch(self, pvs: list[str]) -> None:
        from aioca import FORMAT_TIME, camonitor

        for pv in pvs:
            events = self.events.setdefault(pv, [])

            def callback(v: Any, _events: list[tuple[float, float, float]] = events) -> None:
                if getattr(v, "ok", True):
                    _events.append((float(v), v.timestamp, time.time()))

            self.subs.append(camonitor(pv, callback, format=FORMAT_TIME, all_updates=True))

    async def wait_first(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = [pv for pv, ev in self.events.items() if not ev]
            if not missing:
                return []
            await asyncio.sleep(0.1)
        return [pv for pv, ev in self.events.items() if not ev]

    def close(self) -> None:
        for s in self.subs:
            s.close()
        self.subs.clear()


async def wait_connected(prefix: str, groups: int, m_links: int, timeout: float) -> float:
    """Until every plugin's CONN_INP shows all its links connected; returns the seconds waited."""
    from aioca import caget

    t0 = time.monotonic()
    pvs = [f"{prefix}:P{g:02d}:CONN_INP" for g in range(groups)]
    while True:
        try:
            values = await caget(pvs, timeout=5)
            if all(len(v) == m_links and all(int(x) == 1 for x in v) for v in values):
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"{prefix}: the links did not all connect within {timeout} s")
        await asyncio.sleep(0.5)


def latencies(
    ext: list[tuple[float, float, float]],
    out: list[tuple[float, float, float]],
    t0: float,
    t1: float,
    value_of: Any = None,
) -> tuple[list[float], int, int]:
    """(latencies, missing, matched) of external updates stamped in [t0, t1] against output updates
    of the same value (``value_of(x)``: the output value for external value x)."""
    seen = {v: ts for v, ts, _ in out}
    lat, missing = [], 0
    for v, ts, _ in ext:
        if not t0 <= ts <= t1:
            continue
        key = value_of(v) if value_of else v
        if key in seen:
            lat.append(seen[key] - ts)
        else:
            missing += 1
    return lat, missing, len(lat)


def toggle_latencies(
    ext: list[tuple[float, float, float]],
    out: list[tuple[float, float, float]],
    t0: float,
    t1: float,
) -> tuple[list[float], int, int]:
    """EVEN (1 when the counter is even): for each external update in [t0, t1], the first EVEN
    update to the expected value after it and before the next external update."""
    ext = sorted(ext, key=lambda e: e[1])
    out = sorted(out, key=lambda e: e[1])
    lat, missing, j = [], 0, 0
    for i, (v, ts, _) in enumerate(ext):
        nxt = ext[i + 1][1] if i + 1 < len(ext) else float("inf")
        while j < len(out) and out[j][1] < ts:
            j += 1
        if not t0 <= ts <= t1:
            continue
        want = 1.0 if int(v) % 2 == 0 else 0.0
        k = j
        while k < len(out) and out[k][1] < nxt and out[k][0] != want:
            k += 1
        if k < len(out) and out[k][1] < nxt:
            lat.append(out[k][1] - ts)
        else:
            missing += 1
    return lat, missing, len(lat)


async def quiet(limit: float, wait: float) -> dict[str, Any]:
    t0 = time.monotonic()
    for _ in range(int(wait // 5)):  # polled every 5 s
        if os.getloadavg()[0] < limit:
            break
        await asyncio.sleep(5)
    load = os.getloadavg()[0]
    print(
        f"  [load {load:.2f} after waiting {time.monotonic() - t0:.0f} s]",
        file=sys.stderr,
        flush=True,
    )
    return {"load_before": round(load, 2), "waited_s": round(time.monotonic() - t0)}


async def run_config(
    config: str,
    args: argparse.Namespace,
    ext_proc: subprocess.Popen[bytes],
    ports: Ports,
    ext_ports: Ports,
    rep: int,
) -> dict[str, Any]:
    from aioca import FORMAT_TIME, caget

    groups, m_links = args.plugins, args.links
    prefix = PREFIXES[config]
    root = TEMP / f"{config}-{rep + 1}"
    dirs = write_plugins(root, groups, m_links, config)
    log = root / "iocmng.log"
    env = ports.env()
    # the links reach the external IOC (loopback only)
    env["EPICS_CA_ADDR_LIST"] = f"127.0.0.1:{ext_ports.ca}"
    env["EPICS_PVA_ADDR_LIST"] = f"127.0.0.1:{ext_ports.pva_bcast}"
    q = await quiet(args.quiet_load, args.quiet_wait)
    t_start = time.monotonic()
    # --iocmng-no-rt: iocmng without CAP_SYS_NICE, so EPICS cannot give its threads SCHED_FIFO
    wrap = ["setpriv", "--bounding-set=-sys_nice"] if args.iocmng_no_rt else []
    proc = spawn(
        [
            *wrap,
            sys.executable,
            "-m",
            "iocmng.cli",
            "run",
            *map(str, dirs),
            "--prefix",
            prefix,
            "--log-level",
            args.log_level,
        ],
        env,
        log,
    )
    try:
        await asyncio.to_thread(
            wait_line, proc, log, "iocmng run: serving", 180, f"iocmng run ({config})"
        )
        started = time.monotonic() - t_start
        connect = await wait_connected(prefix, groups, m_links, 120)
        print(
            f"  {config}: serving after {started:.1f} s, {groups * m_links} links connected"
            f" {connect:.1f} s later",
            file=sys.stderr,
            flush=True,
        )
        sample = [m for m in SUM_INPUTS if m < m_links]
        n_sampled = min(groups, args.sample or groups)
        sampled_groups = sorted({round(k * groups / n_sampled) for k in range(n_sampled)})
        mirrors = sample[:1] + sample[-1:]
        rec = Recorder()
        for g in sampled_groups:
            base = f"{prefix}:P{g:02d}"
            rec.watch(
                [ext_name(g, m) for m in sample]
                + [f"{base}:OUT{m:02d}" for m in sample]
                + [f"{base}:IN{m:02d}" for m in mirrors]
                + [f"{base}:SUM", f"{base}:EVEN", f"{base}:SPREAD"]
            )
        slow = await rec.wait_first(30)
        if slow:
            raise SystemExit(f"no first value within 30 s from {len(slow)} PVs, e.g. {slow[:3]}")
        counts_pvs = [f"{prefix}:P{g:02d}:CYCLE_COUNT" for g in range(groups)]
        all_outs = [f"{prefix}:P{g:02d}:OUT{m:02d}" for g in range(groups) for m in range(m_links)]
        await caget(all_outs + counts_pvs)  # the channels exist before the window
        await asyncio.sleep(args.warmup)
        c0 = [int(v) for v in await caget(counts_pvs)]
        o0 = await caget(all_outs, format=FORMAT_TIME)
        w0 = time.time()
        m0, s0, b0 = time.monotonic(), system_busy(), self_cpu()
        i0, e0, th0 = proc_cpu(proc.pid), proc_cpu(ext_proc.pid), thread_cpu(proc.pid)
        await asyncio.sleep(args.seconds)
        i1, e1, th1 = proc_cpu(proc.pid), proc_cpu(ext_proc.pid), thread_cpu(proc.pid)
        m1, s1, b1 = time.monotonic(), system_busy(), self_cpu()
        w1 = time.time()
        o1 = await caget(all_outs, format=FORMAT_TIME)
        c1 = [int(v) for v in await caget(counts_pvs)]
        load1 = os.getloadavg()[0]
        rss = rss_mb(proc.pid)
        sched = {
            "iocmng": rt_threads(proc.pid),
            "external_ioc": rt_threads(ext_proc.pid),
            "bench_client": rt_threads(os.getpid()),
        }
        await asyncio.sleep(1.0)  # the outputs of the window's last updates arrive
        rec.close()
        if proc.poll() is not None:
            raise SystemExit(
                f"iocmng run ({config}) exited during the window:\n{log.read_text()[-3000:]}"
            )
    finally:
        if "aioca" in sys.modules:
            import aioca

            aioca.purge_channel_caches()
        rc = await asyncio.to_thread(stop_proc, proc)
    window = m1 - m0
    cpu = {
        "iocmng_pct": 100 * (i1 - i0) / window,
        "external_ioc_pct": 100 * (e1 - e0) / window,
        "bench_client_pct": 100 * (b1 - b0) / window,
    }
    cpu["others_pct"] = 100 * (s1[0] - s0[0] - (s1[1] - s0[1])) / window - sum(cpu.values())
    cpu["steal_pct"] = 100 * (s1[1] - s0[1]) / window  # CPU the hypervisor gave to others (a VM)
    threads = {k: 100 * (v - th0.get(k, 0.0)) / window for k, v in th1.items()}
    cpu["iocmng_threads"] = {
        k: round(v, 1) for k, v in sorted(threads.items(), key=lambda kv: -kv[1])[:6]
    }
    # -- latencies: external updates stamped in the window (the outputs may come up to 1 s later)
    ev = rec.events
    kinds: dict[str, list[float]] = {"out": [], "mirror": [], "sum": [], "even": []}
    miss = dict.fromkeys(kinds, 0)
    rates: list[float] = []
    per_pos: dict[int, list[float]] = {m: [] for m in sample}
    client_lag: list[float] = []
    spread_fired = 0
    for g in sampled_groups:
        base = f"{prefix}:P{g:02d}"
        exts = {m: ev[ext_name(g, m)] for m in sample}
        for m in sample:
            lat, missing, _ = latencies(exts[m], ev[f"{base}:OUT{m:02d}"], w0, w1)
            kinds["out"] += lat
            per_pos[m] += lat
            miss["out"] += missing
            rates.append(sum(w0 <= ts <= w1 for _, ts, _ in ev[f"{base}:OUT{m:02d}"]) / (w1 - w0))
            client_lag += [arr - ts for _, ts, arr in exts[m] if w0 <= ts <= w1]
        for m in mirrors:
            lat, missing, _ = latencies(exts[m], ev[f"{base}:IN{m:02d}"], w0, w1)
            kinds["mirror"] += lat
            miss["mirror"] += missing
        # SUM = 5 x the counter once the group's 5 sampled inputs all moved: vs the last of their stamps
        last_stamp: dict[float, float] = {}
        for m in sample:
            for v, ts, _ in exts[m]:
                last_stamp[v] = max(ts, last_stamp.get(v, ts))
        sum_ext = [(v, ts, 0.0) for v, ts in last_stamp.items()]
        lat, missing, _ = latencies(
            sum_ext, ev[f"{base}:SUM"], w0, w1, value_of=lambda x: len(sample) * x
        )
        kinds["sum"] += lat
        miss["sum"] += missing
        lat, missing, _ = toggle_latencies(exts[sample[0]], ev[f"{base}:EVEN"], w0, w1)
        kinds["even"] += lat
        miss["even"] += missing
        spread_fired += sum(1 for v, ts, _ in ev[f"{base}:SPREAD"] if v and w0 <= ts <= w1)
    if args.events:
        Path(args.events).parent.mkdir(parents=True, exist_ok=True)
        dump = Path(args.events).with_suffix(f".{config}-{rep + 1}.json")
        dump.write_text(json.dumps({"window": [w0, w1], "events": ev}))
    # every output's counter steps over its own record timestamps (a caget at each end of the window)
    all_rates = [
        (float(b) - float(a)) / (b.timestamp - a.timestamp) for a, b in zip(o0, o1, strict=True)
    ]
    log_text = log.read_text(errors="replace")
    res = {
        "config": config,
        "prefix": prefix,
        "plugins": groups,
        "links": groups * m_links,
        "sampled_plugins": len(sampled_groups),
        "window_s": window,
        "cpu": cpu,
        "iocmng_rss_mb": rss,
        "exit_code": rc,
        "thread_policies": sched,
        "latency": {k: {**dist(v), "missing": miss[k]} for k, v in kinds.items()},
        "latency_by_position": {str(m): dist(v) for m, v in per_pos.items()},
        "out_rate_hz": {
            "min": min(rates, default=0),
            "median": statistics.median(rates) if rates else 0,
            "max": max(rates, default=0),
            "outputs": len(rates),
        },
        "all_out_rate_hz": {
            "min": min(all_rates),
            "median": statistics.median(all_rates),
            "max": max(all_rates),
            "outputs": len(all_rates),
        },
        "evaluations_per_s_per_plugin": statistics.median(
            [(b - a) / (w1 - w0) for a, b in zip(c0, c1, strict=True)]
        ),
        "spread_fired": spread_fired,
        "client_lag": dist(client_lag),
        "log_warnings": sum(
            1 for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line
        ),
        "load_before": q["load_before"],
        "load_after": round(load1, 2),
        "time": time.strftime("%H:%M:%S"),
    }
    return res


def report(results: dict[str, Any]) -> None:
    print()
    print(
        f"iocmng {results['commit']}; {results['plugins']} plugins x {results['links_per_plugin']} links"
        f" = {results['plugins'] * results['links_per_plugin']} monitored links at {1 / PERIOD:.0f} Hz;"
        f" window {results['seconds']:.0f} s after {results['warmup']:.0f} s warm-up; nproc {results['nproc']};"
        f" client nice {results['client_nice']}, client real-time {'kept' if results['client_rt'] else 'dropped'};"
        f" iocmng real-time {'dropped' if results['iocmng_no_rt'] else 'as started'}"
    )
    for r in results["configs"]:
        c = r["cpu"]
        th = ", ".join(f"{k} {v}" for k, v in c["iocmng_threads"].items())
        print(
            f"\n[{r['config']}, run {r['run']}]  ({r['time']}, load {r['load_before']:.2f} -> {r['load_after']:.2f})"
        )
        print(
            f"  CPU % of one core: iocmng {c['iocmng_pct']:.1f} ({th}); external IOC {c['external_ioc_pct']:.1f};"
            f" bench client {c['bench_client_pct']:.1f}; others {c['others_pct']:.1f}; steal {c['steal_pct']:.1f}."
            f" iocmng RSS {r['iocmng_rss_mb']:.0f} MB"
        )
        pol = "; ".join(
            f"{k} " + ", ".join(f"{n} {p}" for p, n in v.items())
            for k, v in r["thread_policies"].items()
        )
        print(f"  threads by scheduling policy: {pol}")
        o = r["out_rate_hz"]
        a = r["all_out_rate_hz"]
        print(
            f"  output updates: {o['median']:.2f} Hz median (min {o['min']:.2f}, max {o['max']:.2f},"
            f" {o['outputs']} monitored outputs); all {a['outputs']} outputs (caget at both ends):"
            f" {a['median']:.2f} Hz median, min {a['min']:.2f}, max {a['max']:.2f}"
        )
        print(
            f"  evaluations {r['evaluations_per_s_per_plugin']:.1f}/s per plugin;"
            f" SPREAD fired {r['spread_fired']}x; log warnings/errors {r['log_warnings']}"
        )
        for kind, label in (
            ("out", "OUT = IN*1 (transform)"),
            ("sum", "SUM of 5 inputs (transform)"),
            ("even", "EVEN (rule)"),
            ("mirror", "wired input record (link callback)"),
        ):
            d = r["latency"][kind]
            verdict = ""
            if kind == "out":
                verdict = "  target p99 < 20 ms: " + ("met" if d["p99_ms"] < 20 else "MISSED")
            print(
                f"  latency {label:36} median {d['median_ms']:6.2f}  p90 {d['p90_ms']:6.2f}  p99 {d['p99_ms']:6.2f}"
                f"  max {d['max_ms']:7.2f} ms  (n {d['count']}, missing {d['missing']}){verdict}"
            )
        pos = ", ".join(
            f"#{m}: {d['median_ms']:.2f}/{d['p99_ms']:.2f}"
            for m, d in r["latency_by_position"].items()
        )
        print(f"  OUT latency by position in the chain (median/p99 ms): {pos}")
        cl = r["client_lag"]
        print(
            f"  (this process's own CA client: external stamp -> callback median {cl['median_ms']:.2f},"
            f" p99 {cl['p99_ms']:.2f} ms; not part of the figures above)"
        )
    if len(results["configs"]) > len(set(r["config"] for r in results["configs"])):
        print("\nsummary (runs in order):")
        for config in dict.fromkeys(r["config"] for r in results["configs"]):
            runs = [r for r in results["configs"] if r["config"] == config]
            cell = "; ".join(
                f"{r['cpu']['iocmng_pct']:.0f} % / {r['latency']['out']['median_ms']:.1f} /"
                f" {r['latency']['out']['p99_ms']:.1f} ms / others {r['cpu']['others_pct']:.0f} %"
                for r in runs
            )
            print(f"  {config:20} iocmng CPU / OUT median / p99: {cell}")


async def amain(
    args: argparse.Namespace, ext_ports: Ports, config_ports: dict[tuple[str, int], Ports]
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "commit": SRC["commit"],
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "plugins": args.plugins,
        "links_per_plugin": args.links,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "client_nice": args.client_nice,
        "client_rt": args.client_rt,
        "iocmng_no_rt": args.iocmng_no_rt,
        "configs": [],
    }
    ext_log = TEMP / "external-ioc.log"
    ext = spawn(
        [sys.executable, "-c", EXT_SCRIPT, str(args.plugins), str(args.links), str(PERIOD)],
        ext_ports.env(),
        ext_log,
    )
    await asyncio.to_thread(wait_line, ext, ext_log, READY, 60, "external IOC")
    if "Configured TCP port was unavailable" in ext_log.read_text():
        raise SystemExit(f"external IOC: CA port {ext_ports.ca} was taken")
    print(
        f"external IOC: {args.plugins * args.links} counters, pid {ext.pid}, CA 127.0.0.1:{ext_ports.ca}",
        file=sys.stderr,
        flush=True,
    )
    for rep in range(args.repeat):
        for config in args.configs:
            print(f"{config} (run {rep + 1} of {args.repeat}):", file=sys.stderr, flush=True)
            res = await run_config(config, args, ext, config_ports[(config, rep)], ext_ports, rep)
            res["run"] = rep + 1
            results["configs"].append(res)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--configs",
        default="reactive,continuous",
        help="comma list of: reactive, reactive-notrigger, reactive-pva, continuous "
        "(default reactive,continuous)",
    )
    ap.add_argument(
        "--seconds", type=float, default=20.0, help="steady window per configuration (default 20)"
    )
    ap.add_argument(
        "--warmup", type=float, default=8.0, help="seconds after every link connected (default 8)"
    )
    ap.add_argument("--quick", action="store_true", help="reactive only, 8 s window, 4 s warm-up")
    ap.add_argument(
        "--plugins", type=int, default=20, help="plugins = groups of external counters (default 20)"
    )
    ap.add_argument(
        "--links", type=int, default=50, help="links per plugin (default 50; at least 1)"
    )
    ap.add_argument(
        "--src",
        default="HEAD",
        help="commit whose iocmng/ runs (git archive; default HEAD), "
        "'tree' for the work tree, or a directory holding iocmng/",
    )
    ap.add_argument(
        "--log-level", default="warning", help="iocmng run --log-level (default warning)"
    )
    ap.add_argument(
        "--quiet-load",
        type=float,
        default=1.0,
        help="before each configuration, wait for the 1-min load average to fall under this",
    )
    ap.add_argument(
        "--quiet-wait", type=float, default=120.0, help="longest wait (s) for --quiet-load; 0: none"
    )
    ap.add_argument(
        "--sample",
        type=int,
        default=0,
        help="plugins whose PVs this process monitors (spread evenly; default all)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="run the configurations this many times, interleaved"
    )
    ap.add_argument(
        "--client-nice",
        type=int,
        default=10,
        help="niceness added to this process's CA client (not to the measured processes); 0: none",
    )
    ap.add_argument(
        "--client-rt",
        action="store_true",
        help="keep CAP_SYS_NICE in this process's CA client: as root its EPICS threads then run "
        "SCHED_FIFO and preempt the measured processes (default: dropped)",
    )
    ap.add_argument(
        "--iocmng-no-rt",
        action="store_true",
        help="start iocmng through `setpriv --bounding-set=-sys_nice` (as root, EPICS runs its own "
        "threads SCHED_FIFO; this makes them SCHED_OTHER, as for an unprivileged user)",
    )
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument(
        "--events",
        help="also write every sampled CA update (value, stamp, arrival) to "
        "<EVENTS without suffix>.<config>-<run>.json",
    )
    args = ap.parse_args()
    if args.quick:
        args.configs, args.seconds, args.warmup = "reactive", 8.0, 4.0
    args.configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in args.configs if c not in PREFIXES]
    if bad or not 1 <= args.plugins <= 99 or not 1 <= args.links <= 100 or args.repeat < 1:
        ap.error(
            f"unknown configs {bad}" if bad else "--plugins 1-99, --links 1-100, --repeat >= 1"
        )
    if os.path.isdir(args.src):
        SRC.update(dir=Path(args.src).resolve(), commit=f"dir {args.src}")
    elif args.src != "tree":
        snapshot(args.src)
    print(f"iocmng code: {SRC['commit']} ({SRC['dir']}); temp {TEMP}", file=sys.stderr)
    # Every port chosen before this process's CA client starts (aioca reads the
    # environment once): it searches the external IOC and every iocmng run, on loopback only.
    bench_ports, ext_ports = Ports(), Ports()
    config_ports = {(c, k): Ports() for k in range(args.repeat) for c in args.configs}
    os.environ.update(bench_ports.env())
    os.environ["EPICS_CA_ADDR_LIST"] = " ".join(
        f"127.0.0.1:{p.ca}" for p in [ext_ports, *config_ports.values()]
    )
    atexit.register(cleanup_all, args.keep)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally: and atexit clean up
    nice_self(args.client_nice)
    if not args.client_rt:
        drop_sys_nice_self()
    try:
        results = asyncio.run(amain(args, ext_ports, config_ports))
    finally:
        cleanup_all(args.keep)
        if args.keep:
            print(f"kept {TEMP}", file=sys.stderr)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
