"""The record backend protocol: the softioc bridge and the in-memory fake (iocmng.testing) agree.

The real bridge runs in a child process (records are process-global and
``iocInit`` runs once per process): it builds the records of the same plans,
writes the database it loads, runs ``iocInit`` and reports every record's
name, type and value, which must be the fake's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from iocmng.config.models import parse_config
from iocmng.epics.backend import RecordBackend, Records
from iocmng.epics.ioc import IocBridge, PluginRecords
from iocmng.epics.plan import LINK_ALARM, RecordPlan, TaskStatus, plan, status_fields
from iocmng.testing import FakeBackend

TASK = """
parameters: {mode: triggered, version: 7}
pvs:
  inputs:
    SP: {type: float, value: 1.5, low: 0, high: 10, unit: mm, description: set point}
    N: {type: int, value: 3}
    GO: {type: bool, znam: Stop, onam: Go}
    NAME: {type: string, value: hello}
    WIRED: {type: float, link: 'EXT:PV'}
  outputs:
    OUT: {type: int}
    LEVEL: {type: float, alarm_on: MAJOR, alarm_high: 5}
    TXT: {type: string, value: '%s'}
    REMOTE: {type: float, link: 'EXT:OUT'}
rules:
  - {id: hot, condition: 'SP > 5', outputs: {OUT: 1}}
""" % ("x" * 60)  # a value too long for a stringin: both cut it to 39 bytes
#: integer records take integer limits: a float bound becomes the nearest integer inside it
CONTINUOUS = (
    "parameters: {interval: 0.5}\npvs: {inputs: {A: {type: int}, LIM: {type: int, value: 2, low: -5.5, high: 10}},"
    " outputs: {B: {type: string}, C: {type: int, low: 0, high: 99.5, alarm_on: MINOR, alarm_high: 90.5,"
    " alarm_low: 1.5}}}"
)
JOB = "parameters: {version: 2}\npvs: {inputs: {X: {type: float}}, outputs: {Y: {type: bool}}}"

#: (name, kind, config.yaml, overrides, saved values)
CASES = [
    ("trig", "task", TASK, {"threshold": 1}, {"SP": 4.25, "ENABLE": 0, "N": "bad"}),
    ("cont", "task", CONTINUOUS, {}, {}),
    ("job1", "job", JOB, {}, {"X": 9.5}),
]


def plans(prefix: str) -> dict[str, RecordPlan]:
    return {
        name: plan(prefix, name, kind, parse_config(text), overrides)
        for name, kind, text, overrides, _ in CASES
    }


def fake_backend(prefix: str) -> tuple[FakeBackend, list[Any]]:
    calls: list[Any] = []

    async def on_run() -> None:
        calls.append("run")

    backend = FakeBackend(prefix)
    for (name, _, _, _, saved), p in zip(CASES, plans(prefix).values(), strict=True):
        backend.create(
            p,
            on_input=lambda short, value, _n=name: calls.append((_n, short, value)),
            on_run=on_run if p.mode == "triggered" else None,
            restored=saved,
        )
    return backend, calls


# -- the protocol -------------------------------------------------------------------------------
def test_both_backends_implement_the_protocol() -> None:
    assert isinstance(IocBridge("P"), RecordBackend)  # building one imports no softioc
    assert isinstance(FakeBackend("P"), RecordBackend)
    assert isinstance(PluginRecords("P:X"), Records)
    backend, _ = fake_backend("P")
    assert all(isinstance(r, Records) for r in backend.plugins.values())


def test_fake_records_are_the_plan() -> None:
    backend, _ = fake_backend("P")
    for name, p in plans("P").items():
        records = backend.plugins[name]
        assert records.prefix == p.base
        assert records.names() == list(p.names)
        assert records.shorts() == list(p.shorts)
        assert records.writable == set(p.writable)
        assert {s: records.type_of(s) for s in p.shorts} == {
            r.short: r.value_type for r in p.records
        }
    assert backend.names() == [n for p in plans("P").values() for n in p.names]


def test_fake_values_follow_the_bridge_rules() -> None:
    backend, _ = fake_backend("P")
    assert backend.value("trig", "SP") == 4.25  # restored (autosave)
    assert backend.value("trig", "ENABLE") == 0
    assert backend.value("trig", "N") == 3  # an unusable saved value is ignored
    assert backend.value("trig", "TXT") == "x" * 39
    assert backend.value("trig", "CONN_INP") == [0]
    assert backend.value("trig", "CONN_OUT_NAMES") == "REMOTE"
    assert backend.value("trig", "VERSION") == "7"
    records = backend.plugins["trig"]
    records.set("OUT", "12")
    records.set("MESSAGE", "é" * 30)
    assert backend.value("trig", "OUT") == 12 and backend.value("trig", "MESSAGE") == "é" * 19
    with pytest.raises(ValueError):
        records.set("OUT", 1.5)
    with pytest.raises(KeyError, match="NOPE"):
        records.get("NOPE")
    assert backend.history("trig", "OUT") == [0, 12]


async def test_the_fake_operator_writes_as_a_ca_client() -> None:
    backend, calls = fake_backend("P")
    assert await backend.write("trig", "SP", 50) == 10.0  # DRVH clamps
    assert await backend.write("trig", "SP", -1) == 0.0  # DRVL clamps
    assert await backend.write("trig", "N", -9) == -9  # no limits
    assert await backend.write("trig", "GO", "1") == 1
    await backend.write("trig", "RUN", 1)
    with pytest.raises(PermissionError, match="P:TRIG:STATUS is read-only"):
        await backend.write("trig", "STATUS", 1)
    with pytest.raises(PermissionError):
        await backend.write("trig", "WIRED", 1.0)  # a wired input mirrors its link
    assert calls == [
        ("trig", "SP", 10.0),
        ("trig", "SP", 0.0),
        ("trig", "N", -9),
        ("trig", "GO", 1),
        "run",
    ]


def test_forced_alarms_only_on_read_only_records() -> None:
    backend, _ = fake_backend("P")
    records = backend.plugins["trig"]
    records.force_alarm("WIRED", LINK_ALARM)
    records.force_alarm("SP", LINK_ALARM)  # writable: not iocmng's to alarm
    assert backend.alarm("trig", "WIRED") == LINK_ALARM and backend.alarm("trig", "SP") is None
    records.force_alarm("WIRED", None)
    assert backend.alarm("trig", "WIRED") is None


def test_the_record_set_freezes_at_start() -> None:
    backend, _ = fake_backend("P")
    backend.start()
    assert all(r.live for r in backend.plugins.values())
    with pytest.raises(RuntimeError, match="frozen"):
        backend.create(plan("P", "late", "task", parse_config("")), on_input=lambda s, v: None)


@pytest.mark.parametrize("backend_class", [FakeBackend, IocBridge])
def test_a_plan_for_another_prefix_is_refused(backend_class: Any) -> None:
    with pytest.raises(ValueError, match="not this"):
        backend_class("P").create(
            plan("Q", "x", "task", parse_config("")), on_input=lambda s, v: None
        )
    with pytest.raises(ValueError, match="not this"):
        backend_class("P", exact=True).create(
            plan("P", "x", "task", parse_config("")), on_input=lambda s, v: None
        )


# -- the real bridge builds the same records --------------------------------------------------------
CHILD = textwrap.dedent("""
    import asyncio, json, sys
    from iocmng.config.models import parse_config
    from iocmng.epics.ioc import IocBridge
    from iocmng.epics.plan import plan

    prefix, cases, dbfile = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]

    async def main():
        bridge = IocBridge(prefix)
        async def on_run():
            pass
        for name, kind, text, overrides, saved in cases:
            p = plan(prefix, name, kind, parse_config(text), overrides)
            bridge.create(p, on_input=lambda short, value: None,
                          on_run=on_run if p.mode == "triggered" else None, restored=saved)
        from softioc import builder
        builder.WriteRecords(dbfile)
        bridge.start(asyncio.get_running_loop())
        out = {name: {"names": r.names(), "types": r.types, "writable": sorted(r.writable),
                      "values": {s: r.get(s) for s in r.records}} for name, r in bridge.plugins.items()}
        print(json.dumps(out, default=lambda o: o.item() if hasattr(o, "item") else str(o)))

    asyncio.run(main())
""")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], str]:
    prefix = f"UT{uuid.uuid4().hex[:6].upper()}"
    dbfile = tmp_path_factory.mktemp("db") / "records.db"
    env = {
        **os.environ,
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
    }
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, prefix, json.dumps(CASES), str(dbfile)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - t0 < 60
    line = done.stdout.strip().splitlines()[-1]
    return prefix, json.loads(line), Path(dbfile).read_text()


def _db_records(db: str) -> dict[str, tuple[str, dict[str, str]]]:
    """``record(type, "name") { field(F, "v") ... }`` -> {name: (type, {F: v})}."""
    out = {}
    for rtype, name, body in re.findall(r'record\((\w+),\s*"([^"]+)"\)\s*\{(.*?)\n\}', db, re.S):
        out[name] = (rtype, dict(re.findall(r'field\((\w+),\s*"([^"]*)"\)', body)))
    return out


def test_real_and_fake_records_agree(real: tuple[str, dict[str, Any], str]) -> None:
    prefix, served, _ = real
    backend, _ = fake_backend(prefix)
    assert list(served) == list(backend.plugins)
    for name, records in backend.plugins.items():
        got = served[name]
        assert got["names"] == records.names() == list(plans(prefix)[name].names)
        assert got["types"] == records.types
        assert got["writable"] == sorted(records.writable)
        assert got["values"] == {s: records.get(s) for s in records.records}, name


def test_real_record_types_and_status_fields_are_the_plan(
    real: tuple[str, dict[str, Any], str],
) -> None:
    prefix, _, db = real
    built = _db_records(db)
    for p in plans(prefix).values():
        for rec in p.records:
            rtype, fields = built[p.full(rec.short)]
            assert rtype == rec.record_type, p.full(rec.short)
        status_type, status = built[p.full("STATUS")]
        assert {
            k: v for k, v in status.items() if re.fullmatch(r"[A-Z]{2}S[TV]", k)
        } == status_fields(p.kind)
    assert built[f"{prefix}:TRIG:STATUS"][1]["FRST"] == TaskStatus.ERROR.label == "ERROR"
    assert built[f"{prefix}:TRIG:STATUS"][1]["FRSV"] == "MAJOR"
    assert built[f"{prefix}:JOB1:STATUS"][1]["THST"] == "FAILED"
    assert built[f"{prefix}:TRIG:LEVEL"][1]["HSV"] == "MAJOR"
    lim, c = built[f"{prefix}:CONT:LIM"][1], built[f"{prefix}:CONT:C"][1]
    assert (lim["DRVL"], lim["DRVH"], lim["LOPR"], lim["HOPR"]) == ("-5", "10", "-5", "10")
    assert (c["LOPR"], c["HOPR"], c["HIGH"], c["LOW"], c["HSV"]) == ("0", "99", "91", "1", "MINOR")


async def test_the_runtime_runs_on_the_fake(tmp_path: Path) -> None:
    """What the runtime uses of a backend (create, set, get, set_quiet) the fake provides."""
    from iocmng.runtime.runtime import PluginSpec, Runtime, State

    d = tmp_path / "counter"
    d.mkdir()
    (d / "plugin.py").write_text(
        textwrap.dedent("""
        from iocmng import TaskBase

        class Counter(TaskBase):
            async def initialize(self):
                self.seen = []
            async def execute(self):
                self.set_pv("OUT", self.get_pv("OUT") + 1)
            async def on_input(self, name, value):
                self.seen.append((name, value))
            async def cleanup(self):
                pass
    """)
    )
    (d / "config.yaml").write_text(
        "parameters: {mode: triggered}\npvs: {inputs: {SP: {type: float}}, "
        "outputs: {OUT: {type: int}}}\n"
    )
    backend = FakeBackend("RT")
    rt = Runtime(backend)  # type: ignore[arg-type]
    try:
        h = rt.prepare(PluginSpec("counter", d, {}))
        assert h.state == State.PENDING, h.last_error
        assert backend.names() == list(
            plan("RT", "counter", "task", parse_config((d / "config.yaml").read_text()), {}).names
        )
        backend.start()
        await rt.start()
        await backend.write("counter", "RUN", 1)
        await backend.write("counter", "SP", 2.5)
        deadline = time.monotonic() + 10
        while not (backend.value("counter", "OUT") == 1 and h.instance.seen):
            assert time.monotonic() < deadline, (backend.value("counter", "OUT"), h.instance.seen)
            await asyncio.sleep(0.01)
        assert h.instance.seen == [("SP", 2.5)]
        assert backend.value("counter", "RUN") == 0  # back to Idle when the cycle ended
        assert 1 in backend.history("counter", "RUN")
    finally:
        await rt.stop()
