"""Moonshot prototype: add records to a running pythonSoftIOC IOC (after iocInit).

Scratch investigation for docs/decisions/0014-records-after-iocinit.md; not a
test, not part of iocmng, not run by CI.

    python bench/moonshot/records_after_iocinit.py probe
    python bench/moonshot/records_after_iocinit.py stress --adds 5000
    MOON_HAMMERS=pva python bench/moonshot/records_after_iocinit.py naive --adds 5 --delay-ms 2000

``probe`` checks one thing after another and prints a line per check:
dbLoadRecords after iocInit, then records added with the C shim
``live_add.c`` (built here with gcc against epicscorelibs' headers): processing
(dbPutField/dbGetField), a CA client and a PVA client (each in a subprocess,
one of them already searching before the record exists), a periodic scan, a
DB link into an existing lock set, a CA link (CP) and access security.

``stress`` adds records of four kinds (pythonSoftIOC ao, pythonSoftIOC ai,
Soft Channel ao whose OUT joins the lock set of a record scanned at 10 Hz,
calc on the 1 second scan list) while a CA reader and a PVA reader (two
subprocesses) read existing and new PVs in a loop and check every value.

``naive`` is the negative control: records created under their real name
(what dbCreateRecord/dbLoadRecords would do) and initialised ``--delay-ms``
later, while clients search for them with fresh searches. It is expected to
crash the IOC (SIGSEGV in dbScanLock from QSRV2); it shows why the shim
publishes the name last.

Loopback only, private ports (25064/25065 CA, 25075/25076 PVA).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/loopback.py
from loopback import LOOPBACK  # noqa: E402

ENV = {
    **LOOPBACK,
    "EPICS_CA_SERVER_PORT": "25064",
    "EPICS_CA_REPEATER_PORT": "25065",
    "EPICS_PVA_SERVER_PORT": "25075",
    "EPICS_PVA_BROADCAST_PORT": "25076",
}
os.environ.update(ENV)

DBR_STRING, DBR_DOUBLE = 0, 10  # dbAccess codes (dbFldTypes.h), not CA's
P = "MOON"


def new_name(i: int) -> str:
    return f"{P}:NEW:{i:05d}"


# -- readers (subprocesses) ---------------------------------------------------


def reader(proto: str, stopfile: str, sample: int) -> None:
    """Read COUNT, then `sample` random new PVs and the existing ones, check values; print JSON."""
    stats = {"proto": proto, "rounds": 0, "gets": 0, "ok": 0, "wrong": 0, "failed": 0, "errors": []}
    existing = [f"{P}:EXIST:TICK", f"{P}:EXIST:SINK", f"{P}:EXIST:PYAO"]

    def check(idx, names, results, ok_of, val_of):
        for k, (name, r) in enumerate(zip(names, results, strict=True)):
            stats["gets"] += 1
            if not ok_of(r):
                stats["failed"] += 1
                if len(stats["errors"]) < 10:
                    stats["errors"].append(f"{name}: {r!r}"[:200])
                continue
            stats["ok"] += 1
            if k < len(idx) and val_of(r) != float(idx[k]):
                stats["wrong"] += 1
                if len(stats["errors"]) < 10:
                    stats["errors"].append(f"{name}: {val_of(r)} != {idx[k]}")

    stop = stopfile
    if proto == "ca":
        from aioca import caget

        async def run():
            while not os.path.exists(stop):  # noqa: ASYNC240 - a scratch reader
                n = int(await caget(f"{P}:EXIST:COUNT", timeout=5))
                idx = random.sample(range(n), min(n, sample))
                names = [new_name(i) for i in idx] + existing
                res = await caget(names, timeout=5, throw=False)
                check(idx, names, res, lambda r: r.ok, float)
                stats["rounds"] += 1

        asyncio.run(run())
    else:
        from p4p.client.thread import Context

        ctx = Context("pva", nt=False)
        while not os.path.exists(stop):
            n = int(ctx.get(f"{P}:EXIST:COUNT", timeout=5).value)
            idx = random.sample(range(n), min(n, sample))
            names = [new_name(i) for i in idx] + existing
            res = ctx.get(names, throw=False, timeout=5)
            check(idx, names, res, lambda r: not isinstance(r, Exception), lambda r: float(r.value))
            stats["rounds"] += 1
        ctx.close()
    print(json.dumps(stats), flush=True)


def waiter(proto: str, name: str, timeout: float) -> None:
    """Search for `name` before it exists; print what arrives (for the late-add probe)."""
    t0 = time.monotonic()
    try:
        if proto == "ca":
            from aioca import caget

            v = float(asyncio.run(caget(name, timeout=timeout)))
        else:
            from p4p.client.thread import Context

            v = float(Context("pva", nt=False).get(name, timeout=timeout).value)
        print(json.dumps({"proto": proto, "value": v, "after": round(time.monotonic() - t0, 2)}))
    except Exception as e:  # noqa: BLE001 - report whatever happened
        print(json.dumps({"proto": proto, "error": repr(e)[:200]}))


def monitor(proto: str, name: str, seconds: float) -> None:
    """Subscribe to `name` for `seconds`; print the values received."""
    got: list = []
    if proto == "ca":
        from aioca import camonitor

        async def run():
            sub = camonitor(name, lambda v: got.append(v if isinstance(v, str) else float(v)))
            await asyncio.sleep(seconds)
            sub.close()

        asyncio.run(run())
    else:
        from p4p.client.thread import Context

        ctx = Context("pva", nt=False)
        sub = ctx.monitor(name, lambda v: got.append(float(v.value)))
        time.sleep(seconds)
        sub.close()
        ctx.close()
    print(json.dumps({"proto": proto, "values": got}))


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
    )


# -- the IOC side ---------------------------------------------------------------


def build_shim() -> ctypes.CDLL:
    import epicscorelibs.path

    inc = Path(epicscorelibs.path.include_path)
    lib = Path(epicscorelibs.path.lib_path)
    out = Path(tempfile.gettempdir()) / "moonshot" / "live_add.so"
    out.parent.mkdir(exist_ok=True)
    subprocess.run(
        [
            "gcc",
            "-O1",
            "-Wall",
            "-shared",
            "-fPIC",
            f"-I{inc}",
            f"-I{inc}/os/Linux",
            f"-I{inc}/compiler/gcc",
        ]
        + [
            str(HERE / "live_add.c"),
            f"-L{lib}",
            "-ldbCore",
            "-lCom",
            f"-Wl,-rpath,{lib}",
            "-o",
            str(out),
        ],
        check=True,
    )
    so = ctypes.CDLL(str(out))
    so.la_add.argtypes = [ctypes.c_char_p] * 3 + [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_void_p),
    ]
    so.la_add.restype = ctypes.c_int
    so.la_error.restype = ctypes.c_char_p
    so.la_pini.argtypes = [ctypes.c_void_p]
    so.la_lock_id.argtypes = [ctypes.c_void_p]
    so.la_lock_id.restype = ctypes.c_ulong
    so.la_lock_sets.restype = ctypes.c_ulong
    return so


class Ioc:
    """A pythonSoftIOC IOC started the way iocmng starts one (asyncio dispatcher, access security)."""

    def __init__(self, with_as: bool = True) -> None:
        from softioc import asyncio_dispatcher, builder, device, device_core, softioc

        sys.path.insert(0, str(HERE.parent.parent))
        from iocmng.epics import access_security

        self.device = device
        self.device_core = device_core
        self.so = build_shim()
        builder.SetDeviceName(P)
        self.count = builder.longIn("EXIST:COUNT", initial_value=0)
        self.pyao = builder.aOut("EXIST:PYAO", initial_value=1.5)
        # a Soft Channel calc on the .1 second list, and a Soft Channel ao it
        # forward-links to: one lock set, processed at 10 Hz by the scan thread
        sink = builder.records.ao("EXIST:SINK", VAL=0)
        builder.records.calc("EXIST:TICK", SCAN=".1 second", CALC="VAL+1", FLNK=sink)
        builder.LoadDatabase()
        self.dispatcher = asyncio_dispatcher.AsyncioDispatcher()  # its own loop thread
        if with_as:
            with access_security.access_security_file():
                softioc.iocInit(self.dispatcher)
            access_security.check_active()
        else:
            softioc.iocInit(self.dispatcher)

        from epicscorelibs.ioc import dbCore

        self.db = ctypes.CDLL(dbCore._name)
        self.db.dbNameToAddr.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        self.db.dbPutField.argtypes = [
            ctypes.c_void_p,
            ctypes.c_short,
            ctypes.c_void_p,
            ctypes.c_long,
        ]
        self.db.dbGetField.argtypes = [ctypes.c_void_p, ctypes.c_short, ctypes.c_void_p] + [
            ctypes.c_void_p
        ] * 3
        self.db.dbLoadRecords.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        self.tmp = 0

    # dbpf / dbgf through the C API (the paths rsrv and QSRV use below their access checks)
    def _addr(self, name: str):
        addr = ctypes.create_string_buffer(512)
        if self.db.dbNameToAddr(name.encode(), addr):
            raise KeyError(name)
        return addr

    def put(self, name: str, value) -> int:
        addr = self._addr(name)
        if isinstance(value, str):
            buf = ctypes.create_string_buffer(value.encode(), 40)
            return self.db.dbPutField(addr, DBR_STRING, buf, 1)
        d = ctypes.c_double(value)
        return self.db.dbPutField(addr, DBR_DOUBLE, ctypes.byref(d), 1)

    def get(self, name: str) -> float:
        addr = self._addr(name)
        d = ctypes.c_double()
        n = ctypes.c_long(1)
        st = self.db.dbGetField(addr, DBR_DOUBLE, ctypes.byref(d), None, ctypes.byref(n), None)
        if st:
            raise RuntimeError(f"dbGetField {name}: {st}")
        return d.value

    def add(
        self,
        rtype: str,
        name: str,
        fields: list[tuple[str, str]],
        links=(),
        device=None,
        naive=False,
    ):
        """One record: Python device object first (init_record looks it up), then the shim, then DB links."""
        self.tmp += 1
        tmp = f"{P}:_tmp_{self.tmp}"
        directory = self.device_core.RecordLookup._RecordDirectory
        dev = None
        if device is not None:
            # pythonSoftIOC's init_record finds its Python object by the record's
            # NAME (device_core._init_record reads the link field with a ctypes
            # c_char_p cast that lands on dbCommon.name): register the object
            # under the temporary name too while the record is initialised
            dev = device(name)
            directory[tmp] = dev
        n = len(fields)
        names = (ctypes.c_char_p * n)(*[f.encode() for f, _ in fields])
        values = (ctypes.c_char_p * n)(*[v.encode() for _, v in fields])
        prec = ctypes.c_void_p()
        tmp_arg = b"" if naive else tmp.encode()  # b"": negative control, see live_add.c
        rc = self.so.la_add(
            rtype.encode(), tmp_arg, name.encode(), n, names, values, ctypes.byref(prec)
        )
        if dev is not None:
            del directory[tmp]
            dev.name = name
        if rc:
            raise RuntimeError(f"la_add {name}: {rc} {self.so.la_error().decode()}")
        for field, value in links:
            st = self.put(f"{name}.{field}", value)
            if st:
                raise RuntimeError(f"dbPutField {name}.{field}={value}: {st}")
        self.so.la_pini(prec)
        return prec.value

    def lock_id(self, name_or_prec) -> int:
        if isinstance(name_or_prec, str):
            addr = self._addr(name_or_prec)
            prec = ctypes.c_void_p.from_buffer(addr, 0).value  # dbAddr.precord is its first member
            return self.so.la_lock_id(prec)
        return self.so.la_lock_id(name_or_prec)


def hammer(proto: str, prefix: str, n: int, stopfile: str) -> None:
    """Get prefix0..prefix{n-1} with a fresh search each round until stopfile exists; print counts."""
    names = [f"{prefix}{i}" for i in range(n)]
    st = {"proto": proto, "rounds": 0, "ok": 0, "failed": 0, "errors": {}, "first_ok": {}}

    def note(r, ok, name=""):
        if ok:
            st["first_ok"].setdefault(name, round(time.time() % 1000, 2))
            st["ok"] += 1
        else:
            st["failed"] += 1
            k = type(r).__name__ + ":" + str(r)[:60]
            st["errors"][k] = st["errors"].get(k, 0) + 1

    while not os.path.exists(stopfile):
        st["rounds"] += 1
        if proto == "ca":  # caproto's sync client searches anew on every call
            from caproto.sync.client import read

            for name in names:
                try:
                    read(name, timeout=0.2)
                    note(None, True, name)
                except Exception as e:  # noqa: BLE001 - counted
                    note(e, False)
        else:  # a new p4p context: a new search
            from p4p.client.thread import Context

            ctx = Context("pva", nt=False)
            for name, r in zip(names, ctx.get(names, throw=False, timeout=0.2), strict=True):
                note(r, not isinstance(r, Exception), name)
            ctx.close()
    print(json.dumps(st), flush=True)


def naive(n: int, delay_ms: float, with_as: bool) -> int:
    """Negative control: records created under their real name, initialised `delay_ms` later."""
    ioc = Ioc(with_as=with_as)
    ctypes.c_uint.in_dll(ioc.so, "la_naive_delay_us").value = int(delay_ms * 1000)
    stopfile = Path(tempfile.mkdtemp(prefix="moonshot-")) / "stop"
    protos = os.environ.get("MOON_HAMMERS", "ca,pva").split(",")
    hs = [spawn("hammer", proto, f"{P}:NAIVE:", str(n), str(stopfile)) for proto in protos]
    time.sleep(3)
    for i in range(n):
        t0 = time.time() % 1000
        ioc.add("ao", f"{P}:NAIVE:{i}", [("VAL", str(i))], naive=True)
        say(f"naive add {i}: created at {t0:.2f}, initialised at {time.time() % 1000:.2f}")
    time.sleep(2)
    stopfile.touch()
    for h in hs:
        try:
            say(h.communicate(timeout=30)[0].strip())
        except subprocess.TimeoutExpired:
            h.kill()
            say("a hammer did not stop in 30 s: killed", h.communicate()[0].strip())
    say("naive: IOC survived")
    return 0


def kind_of(i: int) -> str:
    return ("pyao", "pyai", "softao", "calc")[i % 4]


def add_kind(ioc: Ioc, i: int):
    name, v = new_name(i), str(i)
    k = kind_of(i)
    if k == "pyao":
        dev = lambda n: ioc.device.ao(n, initial_value=i)  # noqa: E731
        f = [("DTYP", "Python"), ("OUT", "@" + name), ("OMSL", "supervisory"), ("ASG", "WRITABLE")]
        return ioc.add("ao", name, f, device=dev)
    if k == "pyai":
        dev = lambda n: ioc.device.ai(n, initial_value=i)  # noqa: E731
        f = [("DTYP", "Python"), ("INP", "@" + name), ("SCAN", "I/O Intr"), ("PINI", "YES")]
        return ioc.add("ai", name, f, device=dev)
    if k == "softao":
        return ioc.add("ao", name, [("VAL", v)], links=[("OUT", f"{P}:EXIST:SINK NPP")])
    return ioc.add(
        "calc", name, [("SCAN", "1 second"), ("CALC", "A"), ("INPA", v), ("PINI", "YES")]
    )


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return -1


def say(*a) -> None:
    print(*a, flush=True)


def probe() -> int:
    ioc = Ioc()
    bad = 0

    def check(what: str, ok: bool, detail="") -> None:
        nonlocal bad
        bad += not ok
        say(f"[{'ok' if ok else 'FAIL'}] {what} {detail}")

    # 1. the documented way: dbLoadRecords after iocInit
    with tempfile.NamedTemporaryFile("w", suffix=".db", delete=False) as f:
        f.write(f'record(ao, "{P}:LOADED") {{ field(VAL, "3") }}\n')
    st = ioc.db.dbLoadRecords(f.name.encode(), None)
    os.unlink(f.name)
    check("dbLoadRecords after iocInit is refused", st == -2, f"(status {st})")

    # clients that search before the records exist
    late = [
        spawn("waiter", "ca", f"{P}:LATE:CA", "20"),
        spawn("waiter", "pva", f"{P}:LATE:PVA", "20"),
    ]
    time.sleep(3)

    t0 = time.perf_counter()
    ioc.add("ao", f"{P}:LATE:CA", [("VAL", "11")])
    ioc.add("ao", f"{P}:LATE:PVA", [("VAL", "12")])
    say(f"two Soft Channel ao added in {1e3 * (time.perf_counter() - t0):.2f} ms")
    for p in late:
        out = json.loads(p.communicate(timeout=30)[0])
        check(f"{out['proto']} client searching before the add finds it", "value" in out, out)

    # (a) processing
    ioc.add("ao", f"{P}:A", [("VAL", "1"), ("ASG", "WRITABLE")])
    check(
        "dbPutField/dbGetField on an added ao",
        ioc.put(f"{P}:A", 7.25) == 0 and ioc.get(f"{P}:A") == 7.25,
    )
    pyao = ioc.add(
        "ao",
        f"{P}:PYAO",
        [("DTYP", "Python"), ("OUT", f"@{P}:PYAO"), ("ASG", "WRITABLE")],
        device=lambda n: ioc.device.ao(n, initial_value=4.5),
    )
    check(
        "pythonSoftIOC ao added: initial value", ioc.get(f"{P}:PYAO") == 4.5, ioc.get(f"{P}:PYAO")
    )
    ioc.put(f"{P}:PYAO", 5.5)
    got = ioc.device_core.LookupRecord(f"{P}:PYAO").get()
    check("pythonSoftIOC ao: a put reaches the Python device", got == 5.5, got)
    ai = {}
    ioc.add(
        "ai",
        f"{P}:PYAI",
        [("DTYP", "Python"), ("INP", f"@{P}:PYAI"), ("SCAN", "I/O Intr"), ("PINI", "YES")],
        device=lambda n: ai.setdefault("d", ioc.device.ai(n, initial_value=2.0)),
    )
    ai["d"].set(9.0)
    time.sleep(0.2)
    check(
        "pythonSoftIOC ai: set() processes via I/O Intr",
        ioc.get(f"{P}:PYAI") == 9.0,
        ioc.get(f"{P}:PYAI"),
    )

    # monitors on an added record (CA and PVA), then updates from Python
    mons = [spawn("monitor", proto, f"{P}:PYAI", "4") for proto in ("ca", "pva")]
    time.sleep(2)
    for v in (21.0, 22.0, 23.0):
        ai["d"].set(v)
        time.sleep(0.2)
    for p in mons:
        out = json.loads(p.communicate(timeout=30)[0])
        check(
            f"{out['proto']} monitor of an added record sees the updates",
            out["values"][-3:] == [21.0, 22.0, 23.0],
            out,
        )

    # the record types iocmng builds (ioc.py: boolOut, aOut, longOut, stringOut, WaveformIn, longStringIn)
    import numpy

    dc = ioc.device
    kinds = [
        ("bo", [("ZNAM", "off"), ("ONAM", "on")], lambda n: dc.bo(n, initial_value=1)),
        ("longout", [], lambda n: dc.longout(n, initial_value=-7)),
        ("stringout", [], lambda n: dc.stringout(n, initial_value="moon")),
    ]
    for rtype, extra, dev in kinds:
        name = f"{P}:T:{rtype}"
        f = [("DTYP", "Python"), ("OUT", "@" + name), ("OMSL", "supervisory"), *extra]
        ioc.add(rtype, name, f, device=dev)
    name = f"{P}:T:wf"
    f = [
        ("DTYP", "Python"),
        ("INP", "@" + name),
        ("NELM", "4"),
        ("FTVL", "DOUBLE"),
        ("SCAN", "I/O Intr"),
        ("PINI", "YES"),
    ]
    ioc.add(
        "waveform",
        name,
        f,
        device=lambda n: dc.waveform(
            n,
            _wf_nelm=4,
            _wf_dtype=numpy.dtype("float64"),
            initial_value=numpy.array([1.0, 2.0, 3.0, 4.0]),
        ),
    )
    name = f"{P}:T:ls"
    f = [
        ("DTYP", "PythonLongStringIn"),
        ("INP", "@" + name),
        ("NELM", "256"),
        ("FTVL", "CHAR"),
        ("SCAN", "I/O Intr"),
        ("PINI", "YES"),
        ("info:Q:form", "String"),
    ]
    ioc.add(
        "waveform",
        name,
        f,
        device=lambda n: dc.long_stringin(
            n, _wf_nelm=256, _wf_dtype=numpy.dtype("int8"), initial_value="a long string " * 4
        ),
    )
    cmd = (
        "import asyncio,json;from aioca import caget;from p4p.client.thread import Context as C;"
        f"n=['{P}:T:bo','{P}:T:longout','{P}:T:stringout','{P}:T:wf','{P}:T:ls'];"
        "ca=asyncio.run(caget(n,timeout=5));"
        "pv=C('pva',nt=False).get(n,timeout=5);"
        "f=lambda v: v.tolist() if hasattr(v,'tolist') else v;"
        "print(json.dumps({'ca':[f(x) if not isinstance(x,str) else str(x) for x in ca],'pva':[f(x.value) for x in pv]}))"
    )
    r = subprocess.run([sys.executable, "-c", cmd], capture_output=True, text=True, timeout=60)
    try:
        out = json.loads(r.stdout)
    except ValueError:
        out = {"ca": None, "pva": None, "stderr": r.stderr[-400:]}
    say("  types read back:", out)
    want_ca = [1, -7, "moon", [1.0, 2.0, 3.0, 4.0]]
    check(
        "iocmng's record types (bo, longout, stringout, waveform) via CA",
        out["ca"] and out["ca"][:4] == want_ca,
    )
    pva_bo = [["index", 1], ["choices", ["off", "on"]]]  # a bo is an NTEnum over PVA
    check("... via PVA (bo as NTEnum)", out["pva"] and out["pva"][:4] == [pva_bo, *want_ca[1:]])
    check(
        "long string (waveform + info Q:form) via PVA is a string",
        out["pva"] and out["pva"][4] == "a long string " * 4,
    )

    # (d) scan list and lock sets
    ioc.add("calc", f"{P}:CNT", [("SCAN", ".1 second"), ("CALC", "VAL+1")])
    time.sleep(1.05)
    c = ioc.get(f"{P}:CNT")
    check("calc added on the .1 second scan list counts", 8 <= c <= 12, f"(VAL={c} after 1.05 s)")
    sets0 = ioc.so.la_lock_sets()
    lnk = ioc.add("ao", f"{P}:LNK", [("VAL", "0")], links=[("OUT", f"{P}:EXIST:SINK PP")])
    sets1 = ioc.so.la_lock_sets()
    ioc.put(f"{P}:LNK", 42.0)
    check("DB link into an existing record: put propagates", ioc.get(f"{P}:EXIST:SINK") == 42.0)
    check("... and the lock sets merged (count unchanged)", sets1 == sets0, f"({sets0} -> {sets1})")
    lnk_id = ioc.so.la_lock_id(lnk)
    sink_id, pyao_id = ioc.lock_id(f"{P}:EXIST:SINK"), ioc.so.la_lock_id(pyao)
    check("... same lock set as the target", lnk_id == sink_id, f"({lnk_id} vs {sink_id})")
    check(
        "... unrelated records keep their own lock set",
        lnk_id != pyao_id,
        f"({lnk_id} vs {pyao_id})",
    )
    ioc.add("calc", f"{P}:FOLLOW", [("CALC", "A")], links=[("INPA", f"{P}:EXIST:TICK CP")])
    time.sleep(0.5)
    d = abs(ioc.get(f"{P}:FOLLOW") - ioc.get(f"{P}:EXIST:TICK"))
    check("CA link (CP) from an added calc follows an existing record", d <= 2, f"(diff {d})")

    # (b)/(c) client reads and access security (ASG DEFAULT = read only)
    cmd = (
        "import asyncio,json;from aioca import caget,caput;from p4p.client.thread import Context as C;"
        f"ca=asyncio.run(caget(['{P}:A','{P}:PYAO','{P}:CNT'],timeout=5));"
        f"pv=[float(x.value) for x in C('pva',nt=False).get(['{P}:A','{P}:PYAO','{P}:CNT'],timeout=5)];"
        "w=[];\n"
        f"for n in ['{P}:A','{P}:LATE:CA']:\n"
        "  try: asyncio.run(caput(n,1.0,wait=True,timeout=5)); w.append('ok')\n"
        "  except Exception as e: w.append(type(e).__name__+':'+str(e)[:60])\n"
        "print(json.dumps({'ca':[float(x) for x in ca],'pva':pv,'writes':w}))"
    )
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", cmd], capture_output=True, text=True, timeout=60
        ).stdout
    )
    check("CA get of added records", out["ca"][:2] == [7.25, 5.5], out["ca"])
    check("PVA get of added records", out["pva"][:2] == [7.25, 5.5], out["pva"])
    check(
        "access security: ASG WRITABLE record writable, DEFAULT read-only",
        out["writes"][0] == "ok" and out["writes"][1] != "ok",
        out["writes"],
    )
    say(f"lock sets now {ioc.so.la_lock_sets()}, RSS {rss_kb()} kB")
    say("probe:", "all checks passed" if not bad else f"{bad} check(s) failed")
    return 1 if bad else 0


def stress(adds: int, sample: int, pace: float, with_readers: bool) -> int:
    ioc = Ioc()
    sets0, rss0 = ioc.so.la_lock_sets(), rss_kb()
    stopfile = Path(tempfile.mkdtemp(prefix="moonshot-")) / "stop"
    protos = ("ca", "pva") if with_readers else ()
    readers = [spawn("reader", proto, str(stopfile), str(sample)) for proto in protos]
    time.sleep(2)
    per_add, t_start = [], time.perf_counter()
    for i in range(adds):
        t0 = time.perf_counter()
        add_kind(ioc, i)
        per_add.append(time.perf_counter() - t0)
        ioc.count.set(i + 1)
        if pace:
            time.sleep(pace)
        if (i + 1) % 1000 == 0:
            say(f"{i + 1} adds, {time.perf_counter() - t_start:.1f} s, RSS {rss_kb()} kB")
    wall = time.perf_counter() - t_start
    time.sleep(3)  # let the readers do a few rounds over the full set
    stopfile.touch()
    results = []
    for p in readers:
        try:
            out, _ = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        results.append(out.strip())
    # final in-process check of every added record
    wrong = [i for i in range(adds) if ioc.get(new_name(i)) != float(i)]
    soft = [i for i in range(adds) if kind_of(i) == "softao"]
    sink_id = ioc.lock_id(f"{P}:EXIST:SINK") if soft else None
    sets1, rss1 = ioc.so.la_lock_sets(), rss_kb()
    per_add.sort()
    summary = {
        "adds": adds,
        "wall_s": round(wall, 2),
        "add_ms_median": round(1e3 * per_add[len(per_add) // 2], 3),
        "add_ms_p99": round(1e3 * per_add[int(len(per_add) * 0.99)], 3),
        "add_ms_max": round(1e3 * per_add[-1], 3),
        "wrong_values_final": len(wrong),
        "lock_sets": [sets0, sets1, "expected +" + str(adds - len(soft))],
        "sink_lock_id": sink_id,
        "rss_kb": [rss0, rss1, round((rss1 - rss0) / max(adds, 1), 2)],
        "readers": results,
    }
    say(json.dumps(summary, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "mode", choices=["probe", "stress", "naive", "reader", "waiter", "monitor", "hammer"]
    )
    ap.add_argument("args", nargs="*")
    ap.add_argument("--adds", type=int, default=5000)
    ap.add_argument("--sample", type=int, default=16)
    ap.add_argument("--pace", type=float, default=0.0, help="sleep between adds (s)")
    ap.add_argument(
        "--delay-ms", type=float, default=100.0, help="naive: create-to-init window (ms)"
    )
    ap.add_argument("--no-as", action="store_true", help="naive: no access security")
    ap.add_argument(
        "--no-readers", action="store_true", help="no client subprocesses (memory baseline)"
    )
    a = ap.parse_args()
    if a.mode == "reader":
        reader(a.args[0], a.args[1], int(a.args[2]))
        return 0
    if a.mode == "hammer":
        hammer(a.args[0], a.args[1], int(a.args[2]), a.args[3])
        return 0
    if a.mode == "naive":
        return naive(a.adds, a.delay_ms, not a.no_as)
    if a.mode == "monitor":
        monitor(a.args[0], a.args[1], float(a.args[2]))
        return 0
    if a.mode == "waiter":
        waiter(a.args[0], a.args[1], float(a.args[2]))
        return 0
    if a.mode == "probe":
        return probe()
    return stress(a.adds, a.sample, a.pace, not a.no_readers)


if __name__ == "__main__":
    sys.exit(main())
