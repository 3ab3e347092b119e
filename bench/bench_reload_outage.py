"""What a reload costs a CA/PVA client. A benchmark, not a test: it prints figures.

Adding (or removing) a plugin re-executes the whole service
(docs/decisions/0001-reload-by-reexec.md): every CA and PVA PV of every plugin
disconnects and comes back. This measures, with N untouched plugins running
(continuous tasks at 10 Hz, a tiny async plugin written into a temp dir) while
ONE unrelated plugin is added over REST (``POST /api/v1/tasks`` with a
``local_path``; the next trial deletes it again, so N stays constant; both are
measured, the table shows the adds):

``monitor outage``  for monitors on the ``CYCLE_COUNT`` PV of up to
            ``--sample`` (20) of the untouched plugins: the time from the
            monitor's disconnect event to its first update after the
            reconnection. CA: aioca ``camonitor(notify_disconnect=True)``;
            PVA: p4p ``Context('pva').monitor(notify_disconnect=True)``. Also
            "CA renew": a CA client that, on the disconnect event, clears its
            channel and creates a new one (on ``STATUS``), to separate what the
            server costs from libca's reconnection policy.
``beacons``  each monitor set runs twice, in two client processes at once:
            *on*: the CA client registered with a CA repeater (libca's own
            ``ca_repeater()``, the code of the ``caRepeater`` executable, run
            through ctypes because the epicscorelibs wheel ships no executable)
            on the port the servers send their CA beacons to, and the servers'
            PVA beacons sent to this client's PVA broadcast port; *off*: the CA
            client's ``EPICS_CA_REPEATER_PORT`` is a port where no repeater
            runs, and no PVA beacon is sent to it. Both see the same reloads.
            Each client reports libca's ``ca_beacon_anomaly_count()`` (did the
            new server's beacons reach it?) and, in the JSON, each CA
            reconnection's phase modulo 10 s from the client's start
            (``back_phase_10s``: libca re-searches a channel lost with its
            server only at the ticks of its 10 s "disconnect governor").
``tasks``   the time from the reload's start (the old generation's last
            answer to ``GET /health``, as for the reload gap) until every
            untouched task cycles again: each task appends the wall-clock time
            of its first ``execute()`` of a generation to a file (exact, for
            all N tasks), and as seen by the CA/PVA monitors (first
            ``CYCLE_COUNT`` >= 1 after the reconnection).
``floor``   ``bench/floor_reload.py`` (a bare softioc + aiohttp process
            re-executing itself on its inherited socket) with the same number
            of records (in 9-record groups), measured interleaved, trial by
            trial, with the same /health poller (the reload gap) and its own
            pair of monitor clients on its records (what any re-exec costs a
            CA/PVA client).

Targets: CA and PVA monitors back within 2x the floor's reload gap; tasks
cycling again within 1.5x the floor's gap.

Server log (IOCMNG_LOG_LEVEL=info) timestamps split each reload: stop ->
exec -> imports done (the new generation takes the listening socket) -> iocInit done
("IOC started") -> HTTP; the monitors' reconnection is
also given from "IOC started" (what the clients wait for once the IOC is up).

Everything on loopback with private ports; the server runs a ``git archive``
of HEAD (``--src``) as bench_service.py does; its helpers (server, populate,
quiet-machine wait) are imported from it. Reloads of one server are at least
``--pause`` seconds apart plus a random 0-10 s (PVA clients hurry their
searches on a new server's beacon at most once per 30 s; the random part
spreads the phase of libca's 10 s disconnect governor).

Usage::

    python bench/bench_reload_outage.py                 # N = 1, 20, 100; 3 add+delete pairs each
    python bench/bench_reload_outage.py --quick         # N = 1, 20; 1 pair each
    python bench/bench_reload_outage.py --n 100 --trials 5 --json /tmp/outage.json
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SELF = Path(__file__).resolve()
HERE = SELF.parent
FLOOR = HERE / "floor_reload.py"
INTERVAL = 0.1
#: what the floor builds per "plugin" (see floor_reload.py)
FLOOR_RECORDS_PER_GROUP = 9

# -- the monitor client (a child process: ``--client CONFIG``) ----------------------------------


async def client_main(cfg: dict[str, Any]) -> None:
    """Monitor PVs over CA and PVA; print one JSON line per event on stdout.

    Events: ``{"t": wall time, "p": "ca"|"pva"|"ren", "pv": name, "k": "disc"|"upd"|..., "v": value}``.
    The CA environment (address list, repeater port) is this process's own (set by the parent).
    """
    from aioca import FORMAT_TIME, _catools, camonitor
    from p4p.client.asyncio import Context, Disconnected

    out = sys.stdout

    def emit(proto: str, pv: str, kind: str, value: Any = None) -> None:
        out.write(json.dumps({"t": time.time(), "p": proto, "pv": pv, "k": kind, "v": value}))
        out.write("\n")
        out.flush()

    def ca_cb(pv: str):  # noqa: ANN202
        def cb(v: Any) -> None:
            if not v.ok:
                emit("ca", pv, "disc")
            else:
                emit("ca", pv, "upd", int(v))

        return cb

    for pv in cfg["ca"]:
        camonitor(pv, ca_cb(pv), notify_disconnect=True, format=FORMAT_TIME)

    # "renew": on a disconnect, clear the channel and create a new one at once
    # (a new channel is searched at once, with back-off; a disconnected one waits
    # for libca's disconnect governor).
    loop = asyncio.get_running_loop()
    renew_subs: dict[str, Any] = {}

    def renew(pv: str) -> None:
        sub = renew_subs.pop(pv, None)
        if sub is not None:
            sub.close()
        cache = _catools._Context.get_channel_cache()
        chan = cache._ChannelCache__channels.pop(pv, None)  # private: aioca caches channels forever
        if chan is not None:
            chan._purge()
        start_renew(pv)

    def start_renew(pv: str) -> None:
        token = object()

        def cb(v: Any) -> None:
            if renew_subs.get(pv) is not holder[0]:
                return  # an event of the subscription just replaced
            if not v.ok:
                emit("ren", pv, "disc")
                loop.call_soon(renew, pv)
            else:
                emit("ren", pv, "upd", str(v))

        holder = [token]
        sub = camonitor(pv, cb, notify_disconnect=True)
        holder[0] = sub
        renew_subs[pv] = sub

    for pv in cfg["renew"]:
        start_renew(pv)

    ctxt = Context("pva", conf=cfg["pva_conf"], useenv=False)
    subs = []

    def pva_cb(pv: str):  # noqa: ANN202
        async def cb(v: Any) -> None:
            if isinstance(v, Disconnected):
                emit("pva", pv, "disc")
            elif isinstance(v, Exception):
                emit("pva", pv, type(v).__name__, str(v))
            else:
                emit("pva", pv, "upd", int(v))

        return cb

    for pv in cfg["pva"]:
        subs.append(ctxt.monitor(pv, pva_cb(pv), notify_disconnect=True))
    # libca's count of beacon anomalies (a server seen (re)starting, via the CA repeater),
    # polled on this loop's thread (aioca's CA context is attached to it).
    count = _catools.cadef.libca.ca_beacon_anomaly_count
    count.restype = ctypes.c_uint

    async def anomalies() -> None:
        last = None
        while True:
            n = count()
            if n != last:
                emit("-", "anomaly", "count", n)
                last = n
            await asyncio.sleep(0.02)

    poll = asyncio.ensure_future(anomalies())
    emit("-", "-", "started")
    stop = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent closes our stdin to stop us
    await stop.wait()
    poll.cancel()
    for s in subs:
        s.close()
    ctxt.close()
    os._exit(0)  # skip libca's teardown (its atexit) on the way out


# -- the driver ----------------------------------------------------------------------------------

TASK = '''
import os, time
from iocmng import TaskBase

class OutageTick(TaskBase):
    """A 10 Hz task that notes the wall time of its first cycle in each generation."""
    async def initialize(self):
        self.first = True
        self.n = 0
    async def execute(self):
        if self.first:
            self.first = False
            out = self.parameters.get("out_dir")
            if out:
                with open(os.path.join(out, self.name + ".txt"), "a") as f:
                    f.write(f"{time.time():.6f}\\n")
        self.n += 1
        self.set_pv("VALUE", self.n)
    async def cleanup(self):
        pass
'''

TASK_CONFIG = f"""
parameters:
  mode: continuous
  interval: {INTERVAL}
  out_dir: ""
pvs:
  outputs:
    VALUE: {{type: int, value: 0}}
"""

#: bench_service and loopback, imported by main() (bench_service makes its temp dir and sets
#: this process's EPICS environment on import; the client processes must not import it)
bs: Any = None
lb: Any = None


def loopback_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EPICS_", "IOCMNG_"))}
    env.update(lb.LOOPBACK)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Beacons:
    """Ports shared by one run: the CA repeater's (servers beacon there) and an unused one."""

    def __init__(self) -> None:
        self.repeater = lb.free_port()
        self.no_repeater = lb.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start_repeater(self) -> None:
        code = (
            "import ctypes, epicscorelibs.path as p;"
            "ctypes.CDLL(p.get_lib('ca'))._Z11ca_repeaterv()"  # ca_repeater(): caRepeater's main
        )
        env = loopback_env({"EPICS_CA_REPEATER_PORT": str(self.repeater)})
        self.proc = bs.spawn([sys.executable, "-c", code], env, bs.TEMP / "repeater.log")


def save_events(path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def open_log(path: Path) -> Any:
    return open(path, "ab")  # noqa: SIM115  (the child process writes to it)


class MonitorClient:
    """One client process (see client_main); its events, read from its stdout."""

    def __init__(self, label: str, target: str, beacons: bool) -> None:
        self.label, self.target, self.beacons = label, target, beacons
        self.events: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.bcast = lb.free_port()  # this client's PVA broadcast (beacon) port
        self._reader: asyncio.Task[None] | None = None
        self.ca: list[str] = []
        self.pva: list[str] = []
        self.renew: list[str] = []

    async def start(
        self, ca_port: int, pva_bcast: int, repeater: int, ca: list[str], renew: list[str]
    ) -> None:
        self.ca, self.pva, self.renew = ca, ca, renew
        cfg = {
            "ca": ca,
            "renew": renew,
            "pva": ca,
            "pva_conf": {
                "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{pva_bcast}",
                "EPICS_PVA_AUTO_ADDR_LIST": "NO",
                "EPICS_PVA_BROADCAST_PORT": str(self.bcast),
                "EPICS_PVA_INTF_ADDR_LIST": "127.0.0.1",
            },
        }
        env = loopback_env(
            {
                "EPICS_CA_ADDR_LIST": f"127.0.0.1:{ca_port}",
                "EPICS_CA_SERVER_PORT": str(ca_port),
                "EPICS_CA_REPEATER_PORT": str(repeater),
            }
        )
        log = open_log(bs.TEMP / f"client-{self.label}.log")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SELF),
            "--client",
            json.dumps(cfg),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    @property
    def started(self) -> float:
        return next((e["t"] for e in self.events if e["k"] == "started"), float("nan"))

    def anomaly_after(self, since: float) -> float | None:
        """When libca first counted a beacon anomaly after ``since`` (None: not at all)."""
        return next((e["t"] for e in self.events if e["pv"] == "anomaly" and e["t"] >= since), None)

    def monitors(self) -> list[tuple[str, str]]:
        return (
            [("ca", pv) for pv in self.ca]
            + [("pva", pv) for pv in self.pva]
            + [("ren", pv) for pv in self.renew]
        )

    async def ready(self, timeout: float = 120) -> None:
        """Every monitor has delivered a value."""
        deadline = time.monotonic() + timeout
        want = set(self.monitors())
        while time.monotonic() < deadline:
            seen = {(e["p"], e["pv"]) for e in self.events if e["k"] == "upd"}
            if want <= seen:
                return
            if self.proc is not None and self.proc.returncode is not None:
                break
            await asyncio.sleep(0.2)
        seen = {(e["p"], e["pv"]) for e in self.events if e["k"] == "upd"}
        raise SystemExit(f"client {self.label}: no value from {sorted(want - seen)[:5]}...")

    def outcome(self, since: float, counts: bool) -> dict[tuple[str, str], dict[str, float]]:
        """Per monitor: its first disconnect after ``since``, the first update after it, and
        (``counts``: CYCLE_COUNT monitors) the first update >= 1 after it."""
        res: dict[tuple[str, str], dict[str, float]] = {}
        for e in self.events:
            if e["t"] < since or e["p"] == "-":
                continue
            key = (e["p"], e["pv"])
            r = res.setdefault(key, {})
            if "disc" not in r:
                if e["k"] == "disc":
                    r["disc"] = e["t"]
                continue
            if e["k"] == "upd":
                r.setdefault("back", e["t"])
                if counts and e["p"] != "ren" and "cycling" not in r:
                    try:
                        if int(e["v"]) >= 1:
                            r["cycling"] = e["t"]
                    except (TypeError, ValueError):
                        pass
        return res

    def complete(self, since: float, counts: bool) -> bool:
        res = self.outcome(since, counts)
        for key in self.monitors():
            r = res.get(key, {})
            if "back" not in r:
                return False
            if counts and key[0] != "ren" and "cycling" not in r:
                return False
        return True

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader
        save_events(bs.TEMP / f"events-{self.label}.jsonl", self.events)


class OutageServer:
    """bench_service's Server with this run's beacon destinations and info logs."""

    def __init__(self, label: str, beacons: Beacons, pva_beacon_ports: list[int]) -> None:
        self.server = bs.Server(label, lb.Ports(repeater=beacons.repeater))
        extra = beacon_env(pva_beacon_ports)
        orig_env = self.server.env

        def env(**kw: str) -> dict[str, str]:
            e = orig_env(**kw)
            e.update(extra)
            e["IOCMNG_LOG_LEVEL"] = "info"
            return e

        self.server.env = env


def beacon_env(pva_beacon_ports: list[int]) -> dict[str, str]:
    """CA beacons to 127.0.0.1 at the server's EPICS_CA_REPEATER_PORT; PVA beacons to the given
    client broadcast ports only."""
    return {
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_BEACON_ADDR_LIST": " ".join(f"127.0.0.1:{p}" for p in pva_beacon_ports),
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
    }


class FloorProc:
    """bench/floor_reload.py with this run's beacon destinations (as bench_service's Floor)."""

    def __init__(self, groups: int, label: str, beacons: Beacons, pva_beacon_ports: list[int]):
        self.port = lb.free_port()
        self.ports = lb.Ports(repeater=beacons.repeater)
        self.prefix = f"FLOOR{label.upper()}"[:20]
        self.groups = groups
        env = self.ports.env()
        env.update(beacon_env(pva_beacon_ports))
        self.proc = bs.spawn(
            [
                sys.executable,
                str(FLOOR),
                "--port",
                str(self.port),
                "--plugins",
                str(groups),
                "--prefix",
                self.prefix,
            ],
            env,
            bs.TEMP / f"{label}.log",
        )
        self.gen = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def pv(self, i: int, short: str) -> str:
        return f"{self.prefix}:P{i:04d}:{short}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def watch_reload(session: Any, url: str, old_gen: int, trigger: Any) -> dict[str, Any]:
    """bench_service.measure_gap with wall-clock times: poll /health (keep-alive, 1 ms pause),
    fire ``trigger`` after the first answer; return the old generation's last answer, the new
    one's first and the trigger's time."""
    import aiohttp

    last_old = None
    task = None
    t_trigger = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{url}/health") as resp:
                h = await resp.json()
            now = time.time()
        except (aiohttp.ClientError, OSError):
            continue
        if h["generation"] == old_gen:
            last_old = now
            if task is None:
                t_trigger = time.time()
                task = asyncio.ensure_future(trigger())
        elif h["generation"] > old_gen and last_old is not None:
            if task is not None:
                await task
            return {
                "trigger": t_trigger,
                "last_old": last_old,
                "first_new": now,
                "gap_s": now - last_old,
                "generation": h["generation"],
            }
        await asyncio.sleep(0.001)
    raise SystemExit("no new generation within 180 s")


def server_phases(log: Path, since: float) -> dict[str, float]:
    """Wall times of the reload's steps after ``since``, from the server's info log."""
    marks = {
        "stop": "reload: stopping plugins",
        "exec": "re-executing:",
        "booting": "generation inherits the listening socket",
        "ioc_up": "IOC started:",
        "http_up": "HTTP on ",
    }
    out: dict[str, float] = {}
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if len(line) < 23 or line[4] != "-" or line[19] != ",":
            continue
        try:
            t = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1e3
        except ValueError:
            continue
        if t < since - 0.002:
            continue
        for key, text in marks.items():
            if key not in out and text in line:
                out[key] = t
    return out


def first_cycles(out_dir: Path, names: list[str], since: float) -> dict[str, float | None]:
    res: dict[str, float | None] = {}
    for name in names:
        res[name] = None
        try:
            for line in (out_dir / f"{name}.txt").read_text().split():
                t = float(line)
                if t > since:
                    res[name] = t
                    break
        except (OSError, ValueError):
            pass
    return res


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mx(values: list[float]) -> float:
    return max(values) if values else float("nan")


def sample(n: int, k: int) -> list[int]:
    k = min(n, k)
    if k <= 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


class Pacer:
    """Keep reloads of one server at least ``pause`` + U(0, 10) s apart."""

    def __init__(self, pause: float, rng: random.Random) -> None:
        self.pause, self.rng = pause, rng
        self.last: float | None = None

    async def wait(self) -> float:
        since = float("inf")
        if self.last is not None:
            target = self.last + self.pause + self.rng.uniform(0, 10)
            await asyncio.sleep(max(0.0, target - time.monotonic()))
            since = time.monotonic() - self.last
        self.last = time.monotonic()
        return since


async def wait_clients(
    clients: list[MonitorClient], since: float, counts: bool, extra: Any = None, timeout: float = 60
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.complete(since, counts) for c in clients) and (extra is None or extra()):
            return True
        await asyncio.sleep(0.2)
    return False


def collect(
    clients: list[MonitorClient], since: float, ref: float, counts: bool, ioc_up: float | None
) -> dict[str, Any]:
    """Per (client, protocol): the monitors' outages, their return after the reload's start
    (``ref``) and after the IOC was up, and (``counts``) when they saw the task cycle."""
    rows: dict[str, Any] = {}
    for c in clients:
        res = c.outcome(since, counts)
        anomaly = c.anomaly_after(since)
        rows[f"anomaly_{'on' if c.beacons else 'off'}"] = None if anomaly is None else anomaly - ref
        for proto in ("ca", "pva", "ren"):
            key = f"{proto}_{'on' if c.beacons else 'off'}"
            outs, backs, after_ioc, disc, cyc, missing = [], [], [], [], [], 0
            for p, pv in c.monitors():
                if p != proto:
                    continue
                r = res.get((p, pv), {})
                if "disc" not in r or "back" not in r:
                    missing += 1
                    continue
                outs.append(r["back"] - r["disc"])
                backs.append(r["back"] - ref)
                disc.append(r["disc"] - ref)
                if ioc_up is not None:
                    after_ioc.append(r["back"] - ioc_up)
                if "cycling" in r:
                    cyc.append(r["cycling"] - ref)
            rows[key] = {
                # seconds since the client's CA context was made, modulo libca's 10 s disconnect
                # governor period: one value for all CA monitors of a client = they wait for its tick
                "back_phase_10s": [round((b + ref - c.started) % 10.0, 3) for b in backs],
                "outage": outs,
                "back_after_start": backs,
                "back_after_ioc_up": after_ioc,
                "disc_after_start": disc,
                "cycling_seen": cyc,
                "missing": missing,
            }
    return rows


async def run_n(
    session: Any, n: int, trials: int, args: argparse.Namespace, beacons: Beacons
) -> dict[str, Any]:
    label = f"out{n}"
    rng = random.Random(args.seed + n)
    # Clients first: their ports are the servers' PVA beacon destinations.
    ioc_on = MonitorClient(f"{label}-on", "iocmng", True)
    ioc_off = MonitorClient(f"{label}-off", "iocmng", False)
    fl_on = MonitorClient(f"{label}-floor-on", "floor", True)
    fl_off = MonitorClient(f"{label}-floor-off", "floor", False)
    srv = OutageServer(label, beacons, [ioc_on.bcast]).server
    src = bs.TEMP / label / "src"
    out_dir = bs.TEMP / label / "first"
    out_dir.mkdir(parents=True)
    plugin = bs.write_plugin(src / "tick", TASK, TASK_CONFIG)
    probe = bs.write_plugin(src / "probe", TASK, TASK_CONFIG)
    names = [f"p{i:03d}" for i in range(n)]
    items = [
        ("tasks", {"name": nm, "local_path": str(plugin), "parameters": {"out_dir": str(out_dir)}})
        for nm in names
    ]
    took = await bs.populate(session, srv, items, n)
    per_plugin = len((await bs.get_json(session, f"{srv.url}/tasks/{names[0]}/pvs"))["pvs"])
    records = (n + 1) * per_plugin
    groups = max(1, math.ceil(records / FLOOR_RECORDS_PER_GROUP))
    print(
        f"  N={n}: registered in {took:.1f} s; {per_plugin} records per plugin, "
        f"{records} with the probe; floor {groups} x {FLOOR_RECORDS_PER_GROUP} records",
        file=sys.stderr,
    )
    floor = FloorProc(groups, label + "floor", beacons, [fl_on.bcast])
    await bs.wait_generation(session, floor.url, 1, timeout=60)

    idx = sample(n, args.sample)
    ca = [f"{srv.prefix}:{names[i].upper()}:CYCLE_COUNT" for i in idx]
    renew = [f"{srv.prefix}:{names[i].upper()}:STATUS" for i in idx]
    fidx = sample(groups, args.sample)
    fca = [floor.pv(i, "CYCLE_COUNT") for i in fidx]
    frenew = [floor.pv(i, "STATUS") for i in fidx]
    for c, rep in ((ioc_on, beacons.repeater), (ioc_off, beacons.no_repeater)):
        await c.start(srv.ports.ca, srv.ports.pva_bcast, rep, ca, renew)
    for c, rep in ((fl_on, beacons.repeater), (fl_off, beacons.no_repeater)):
        await c.start(floor.ports.ca, floor.ports.pva_bcast, rep, fca, frenew)
    clients = [ioc_on, ioc_off, fl_on, fl_off]
    for c in clients:
        await c.ready()
    print(f"  N={n}: {len(ca)} + {len(fca)} PVs monitored per client", file=sys.stderr)

    ipace, fpace = Pacer(args.pause, rng), Pacer(args.pause, rng)
    # PVA clients hurry their searches (pvxs "hurryUp") on a beacon of a server they had not
    # seen, at most once per 30 s: the first one comes with the server's next beacon, up to
    # 15 s (its beacon period) after the clients start. Start the pause after it.
    ipace.last = fpace.last = time.monotonic() + 15.0
    reloads: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    for t in range(trials):
        for action in ("add", "delete"):
            # -- iocmng
            since_prev = await ipace.wait()
            gen = (await bs.get_json(session, f"{srv.url}/health"))["generation"]

            async def trigger(action: str = action) -> None:
                if action == "add":
                    await bs.post(
                        session, f"{srv.url}/tasks", {"name": "probe", "local_path": str(probe)}
                    )
                else:
                    async with session.delete(f"{srv.url}/tasks/probe") as resp:
                        assert resp.status == 200, await resp.text()

            since = time.time()
            w = await watch_reload(session, srv.url, gen, trigger)
            ref = w["last_old"]

            def tasks_done(ref: float = ref) -> bool:
                return all(v is not None for v in first_cycles(out_dir, names, ref).values())

            ok = await wait_clients([ioc_on, ioc_off], since, True, tasks_done, args.timeout)
            await bs.wait_running(session, srv.url, n + (action == "add"))
            ph = server_phases(srv.log, since)
            firsts = first_cycles(out_dir, names, ref)
            cyc = [v - ref for v in firsts.values() if v is not None]
            row = {
                "action": action,
                "trial": t,
                "complete": ok,
                "since_previous_reload_s": since_prev,
                "gap_s": w["gap_s"],
                "phases_s": {k: v - ref for k, v in ph.items()},
                "tasks_cycling_s": cyc,
                "tasks_missing": sum(v is None for v in firsts.values()),
                "monitors": collect([ioc_on, ioc_off], since, ref, True, ph.get("ioc_up")),
            }
            reloads.append(row)
            m = row["monitors"]
            print(
                f"  N={n} trial {t} {action}: gap {w['gap_s']:.3f} s; outage med/max"
                f" CA off {med(m['ca_off']['outage']):.2f}/{mx(m['ca_off']['outage']):.2f},"
                f" CA on {med(m['ca_on']['outage']):.2f}/{mx(m['ca_on']['outage']):.2f},"
                f" renew off {med(m['ren_off']['outage']):.2f}/{mx(m['ren_off']['outage']):.2f},"
                f" PVA off {med(m['pva_off']['outage']):.2f}/{mx(m['pva_off']['outage']):.2f},"
                f" PVA on {med(m['pva_on']['outage']):.2f}/{mx(m['pva_on']['outage']):.2f};"
                f" all tasks cycling {mx(cyc):.2f} s{'' if ok else ' (INCOMPLETE)'}",
                file=sys.stderr,
                flush=True,
            )
            # -- the floor, same trial
            fsince_prev = await fpace.wait()

            async def ftrigger() -> None:
                await bs.post(session, f"http://127.0.0.1:{floor.port}/reload", expect=200)

            fsince = time.time()
            fw = await watch_reload(session, floor.url, floor.gen, ftrigger)
            floor.gen = fw["generation"]
            fok = await wait_clients([fl_on, fl_off], fsince, False, None, args.timeout)
            frow = {
                "trial": t,
                "complete": fok,
                "since_previous_reload_s": fsince_prev,
                "gap_s": fw["gap_s"],
                "monitors": collect([fl_on, fl_off], fsince, fw["last_old"], False, None),
            }
            floors.append(frow)
            fm = frow["monitors"]
            print(
                f"  N={n} trial {t} floor: gap {fw['gap_s']:.3f} s; outage med/max"
                f" CA off {med(fm['ca_off']['outage']):.2f}/{mx(fm['ca_off']['outage']):.2f},"
                f" CA on {med(fm['ca_on']['outage']):.2f}/{mx(fm['ca_on']['outage']):.2f},"
                f" renew off {med(fm['ren_off']['outage']):.2f}/{mx(fm['ren_off']['outage']):.2f},"
                f" PVA off {med(fm['pva_off']['outage']):.2f}/{mx(fm['pva_off']['outage']):.2f},"
                f" PVA on {med(fm['pva_on']['outage']):.2f}/{mx(fm['pva_on']['outage']):.2f}"
                f"{'' if fok else ' (INCOMPLETE)'}",
                file=sys.stderr,
                flush=True,
            )
    for c in clients:
        await c.stop()
    floor.kill()
    await srv.stop()
    return summarize(n, per_plugin, records, groups, len(ca), reloads, floors)


KEYS = ("ca_off", "ca_on", "ren_off", "ren_on", "pva_off", "pva_on")


def pool(rows: list[dict[str, Any]], key: str, field: str) -> list[float]:
    return [v for r in rows for v in r["monitors"][key][field]]


def summarize(
    n: int,
    per_plugin: int,
    records: int,
    groups: int,
    monitored: int,
    reloads: list[dict[str, Any]],
    floors: list[dict[str, Any]],
) -> dict[str, Any]:
    floor_gap = med([f["gap_s"] for f in floors])
    out: dict[str, Any] = {
        "n": n,
        "records_per_plugin": per_plugin,
        "records": records,
        "floor_groups": groups,
        "monitored_plugins": monitored,
        "floor_gap_med_s": floor_gap,
        "floor_gap_max_s": mx([f["gap_s"] for f in floors]),
        "targets": {"monitors_s": 2 * floor_gap, "tasks_s": 1.5 * floor_gap},
        "by_action": {},
        "floor": {},
        "reloads": reloads,
        "floors": floors,
    }
    for key in KEYS:
        o = pool(floors, key, "outage")
        out["floor"][key] = {
            "outage_med_s": med(o),
            "outage_max_s": mx(o),
            "back_after_start_med_s": med(pool(floors, key, "back_after_start")),
            "samples": len(o),
            "missing": sum(f["monitors"][key]["missing"] for f in floors),
        }
    for action in ("add", "delete", "all"):
        rows = [r for r in reloads if action in ("all", r["action"])]
        if not rows:
            continue
        a: dict[str, Any] = {
            "reloads": len(rows),
            "gap_med_s": med([r["gap_s"] for r in rows]),
            "gap_max_s": mx([r["gap_s"] for r in rows]),
            "tasks_all_cycling_med_s": med([mx(r["tasks_cycling_s"]) for r in rows]),
            "tasks_all_cycling_max_s": mx([mx(r["tasks_cycling_s"]) for r in rows]),
            "tasks_cycling_med_s": med([v for r in rows for v in r["tasks_cycling_s"]]),
            "tasks_missing": sum(r["tasks_missing"] for r in rows),
            "incomplete": sum(not r["complete"] for r in rows),
            "phases_med_s": {
                k: med([r["phases_s"][k] for r in rows if k in r["phases_s"]])
                for k in ("stop", "exec", "booting", "ioc_up", "http_up")
            },
        }
        for side in ("on", "off"):
            seen = [r["monitors"][f"anomaly_{side}"] for r in rows]
            seen = [v for v in seen if v is not None]
            a[f"ca_beacon_anomaly_{side}"] = {
                "seen_in": len(seen),
                "after_start_med_s": med(seen),
            }
        for key in KEYS:
            o = pool(rows, key, "outage")
            a[key] = {
                "outage_med_s": med(o),
                "outage_max_s": mx(o),
                "back_after_start_med_s": med(pool(rows, key, "back_after_start")),
                "back_after_start_max_s": mx(pool(rows, key, "back_after_start")),
                "back_after_ioc_up_med_s": med(pool(rows, key, "back_after_ioc_up")),
                "back_after_ioc_up_max_s": mx(pool(rows, key, "back_after_ioc_up")),
                "disc_after_start_med_s": med(pool(rows, key, "disc_after_start")),
                "cycling_seen_med_s": med(pool(rows, key, "cycling_seen")),
                "cycling_seen_max_s": mx(pool(rows, key, "cycling_seen")),
                "samples": len(o),
                "missing": sum(r["monitors"][key]["missing"] for r in rows),
            }
        out["by_action"][action] = a
    return out


LABELS = {
    "ca_off": "CA, no repeater",
    "ca_on": "CA, repeater",
    "ren_off": "CA renew, no repeater",
    "ren_on": "CA renew, repeater",
    "pva_off": "PVA, no beacons",
    "pva_on": "PVA, beacons",
}


def verdict(value: float, target: float) -> str:
    if math.isnan(value):
        return "n/a"
    return "met" if value <= target else "MISSED"


def report(results: dict[str, Any]) -> None:
    print()
    print(
        f"Reload outage seen by clients (server {results['commit'][:10]}, {results['nproc']} cores;"
        f" outage = monitor's disconnect event -> first update after the reconnection;"
        f" 'back' and 'tasks' from the reload's start = old generation's last /health answer)"
    )
    for r in results["runs"]:
        a = r["by_action"].get("add") or r["by_action"]["all"]
        d = r["by_action"].get("delete")
        q = r.get("quiet", {})
        tm, tt = r["targets"]["monitors_s"], r["targets"]["tasks_s"]
        print()
        print(
            f"N={r['n']}: {a['reloads']} adds ({r['monitored_plugins']} of {r['n']} plugins monitored,"
            f" {r['records']} records; floor {r['floor_groups']}x9)"
            f"  [load {q.get('load_before', '?')} -> {q.get('load_after', '?')},"
            f" {q.get('start', '?')}-{q.get('end', '?')}]"
        )
        print(
            f"  reload gap (HTTP): iocmng median {a['gap_med_s']:.2f} s (max {a['gap_max_s']:.2f}),"
            f" floor {r['floor_gap_med_s']:.2f} s (max {r['floor_gap_max_s']:.2f})"
            f" -> targets: monitors <= {tm:.2f} s, tasks <= {tt:.2f} s"
        )
        ph = a["phases_med_s"]
        print(
            "  server steps after the reload's start (median): "
            + ", ".join(f"{k} {v:+.2f} s" for k, v in ph.items() if not math.isnan(v))
        )
        print(
            f"  {'':24}{'outage med':>11}{'max':>7}{'back med':>10}{'max':>7}{'after IOC up':>14}"
            f"{'max':>7}{'floor outage med':>18}{'max':>7}   verdict (med / max vs {tm:.2f} s)"
        )
        for key in KEYS:
            x, f = a[key], r["floor"][key]
            print(
                f"  {LABELS[key]:24}{x['outage_med_s']:>11.2f}{x['outage_max_s']:>7.2f}"
                f"{x['back_after_start_med_s']:>10.2f}{x['back_after_start_max_s']:>7.2f}"
                f"{x['back_after_ioc_up_med_s']:>14.2f}{x['back_after_ioc_up_max_s']:>7.2f}"
                f"{f['outage_med_s']:>18.2f}{f['outage_max_s']:>7.2f}"
                f"   {verdict(x['outage_med_s'], tm)} / {verdict(x['outage_max_s'], tm)}"
                f"{'  (' + str(x['missing']) + ' missing)' if x['missing'] else ''}"
            )
        print(
            f"  tasks cycling again (all {r['n']}, first execute()): median {a['tasks_all_cycling_med_s']:.2f} s,"
            f" max {a['tasks_all_cycling_max_s']:.2f} s (per task median {a['tasks_cycling_med_s']:.2f} s)"
            f"  target <= {tt:.2f} s: {verdict(a['tasks_all_cycling_med_s'], tt)} / {verdict(a['tasks_all_cycling_max_s'], tt)}"
        )
        print(
            "  tasks cycling seen by monitors (CYCLE_COUNT >= 1, median / max): "
            + ", ".join(
                f"{LABELS[k]} {a[k]['cycling_seen_med_s']:.2f} / {a[k]['cycling_seen_max_s']:.2f} s"
                for k in ("ca_off", "ca_on", "pva_off", "pva_on")
            )
        )
        an, af = a["ca_beacon_anomaly_on"], a["ca_beacon_anomaly_off"]
        print(
            f"  CA beacon anomaly counted by libca: repeater client in {an['seen_in']} of {a['reloads']}"
            f" reloads (median {an['after_start_med_s']:+.2f} s after the reload's start),"
            f" no-repeater client in {af['seen_in']}"
        )
        if d:
            print(
                f"  deletes ({d['reloads']}): gap median {d['gap_med_s']:.2f} s; outage median/max "
                + ", ".join(
                    f"{LABELS[k]} {d[k]['outage_med_s']:.2f}/{d[k]['outage_max_s']:.2f}"
                    for k in ("ca_off", "ca_on", "pva_off", "pva_on")
                )
                + f"; tasks {d['tasks_all_cycling_med_s']:.2f}/{d['tasks_all_cycling_max_s']:.2f} s"
            )


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    counts = (
        [int(x) for x in args.n.split(",")] if args.n else ([1, 20] if args.quick else [1, 20, 100])
    )
    trials = args.trials or (1 if args.quick else 3)
    results: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "commit": bs.SRC["commit"],
        "loadavg_start": os.getloadavg(),
        "trials": trials,
        "pause_s": args.pause,
        "runs": [],
    }
    beacons = Beacons()
    beacons.start_repeater()
    results["ports"] = {"repeater": beacons.repeater, "no_repeater": beacons.no_repeater}
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=4)
    ) as session:
        for n in counts:
            print(f"reload outage N={n}", file=sys.stderr)
            q = await bs.quiet(f"outage N={n}")
            r = await run_n(session, n, trials, args, beacons)
            r["quiet"] = bs.done(q)
            results["runs"].append(r)
    results["loadavg_end"] = os.getloadavg()
    return results


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        asyncio.run(client_main(json.loads(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 1, 20 and one add+delete pair each")
    ap.add_argument("--n", default="", help="comma list of plugin counts (default 1,20,100)")
    ap.add_argument("--trials", type=int, default=0, help="add+delete pairs per N (default 3)")
    ap.add_argument("--sample", type=int, default=20, help="plugins monitored per N (default 20)")
    ap.add_argument(
        "--pause",
        type=float,
        default=31.0,
        help="least seconds between two reloads of a server (+ U(0,10) s; default 31)",
    )
    ap.add_argument(
        "--timeout", type=float, default=60.0, help="longest wait for every monitor and task"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument(
        "--src",
        default="HEAD",
        help="commit whose iocmng/ the server runs (git archive; default HEAD), 'tree', or a directory",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, events)")
    ap.add_argument("--quiet-load", type=float, default=1.0)
    ap.add_argument("--quiet-wait", type=float, default=180.0)
    args = ap.parse_args()

    global bs, lb
    sys.path.insert(0, str(HERE))
    import bench_service
    import loopback

    bs, lb = bench_service, loopback
    if shutil.which("caRepeater"):
        raise SystemExit(
            "caRepeater is on PATH: libca would start it for the 'no repeater' clients; remove it from PATH"
        )
    bs.QUIET.update(load=args.quiet_load, wait=args.quiet_wait)
    if os.path.isdir(args.src):
        bs.SRC.update(dir=Path(args.src).resolve(), commit=f"dir {args.src}")
    elif args.src != "tree":
        bs.snapshot(args.src)
    print(f"server code: {bs.SRC['commit']} ({bs.SRC['dir']})", file=sys.stderr)
    results: dict[str, Any] | None = None
    try:
        results = asyncio.run(amain(args))
    finally:
        if args.keep:
            for proc in bs.PROCS:
                if proc.poll() is None:
                    proc.kill()
            print(f"kept {bs.TEMP}", file=sys.stderr)
        else:
            bs.cleanup_all()
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
