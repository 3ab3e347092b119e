"""System tests of the ophyd device bridge (SPEC §9, iocmng/epics/devices.py).

* ``test_devices``: one ``iocmng-server`` with a values.yaml holding
  infn_ophyd_hal simulated devices, two real EPICS devices (analog in/out)
  served by a separate soft IOC process, a device on the server's own PVs,
  and bad entries (unknown devgroup/devtype, missing key, an IOC that is
  down). A sync and an async plugin use them; the results are read over CA.
* ``test_bad_values_file``: a values.yaml that is not YAML / lacks keys.
* ``test_disabled``: devices off (the default): the example plugin says so.
* ``test_pyepics_cannot_reach_own_pvs``: the reason for decision 0007.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aioca import caget, caput
from conftest import (
    EXAMPLES,
    EpicsPorts,
    _purge_ca_channels,
    random_prefix,
    wait_for,
    wait_for_sync,
)

from .conftest import Server, ServerFactory, call

for _mod in ("ophyd", "infn_ophyd_hal", "caproto"):
    pytest.importorskip(_mod, reason=f"{_mod} is not installed: pip install -e '.[ophyd]'")

pytestmark = pytest.mark.timeout(150)

DEVICE_IOC = """
import asyncio, sys
from softioc import asyncio_dispatcher, builder, softioc

async def main():
    builder.SetDeviceName(sys.argv[1])
    ai = builder.aIn("ai1:AI_RB", initial_value=0.0)
    # The readback follows the setpoint (x2), as a simple hardware model.
    builder.aOut("ao1:AO_SP", initial_value=0.0, always_update=True, on_update=lambda v: ai.set(2 * v))
    builder.LoadDatabase()
    softioc.iocInit(asyncio_dispatcher.AsyncioDispatcher(loop=asyncio.get_running_loop()))
    print("READY", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

SYNC_PLUGIN = """
from iocmng import TaskBase

class DevSync(TaskBase):
    def initialize(self):
        self.logger.info("devices: %s", self.list_devices())

    def execute(self):
        sp = self.get_pv("SETPOINT")
        ao, ai, me, m1 = (self.get_device(n) for n in ("ao1", "ai1", "DEVSYNC", "m1"))
        if ao is not None:
            ao.set(sp)                              # written over CA to the other IOC
        if ai is not None:
            self.set_pv("READBACK", ai.get())       # read back from it
        if me is not None:
            self.set_pv("SELF_RB", me.get())        # this process's own PV, through ophyd
        if m1 is not None:
            m1.move(sp)
            self.set_pv("MOTOR", m1.position)
        self.set_pv("DEVICES", ",".join(self.list_devices()))
        self.set_pv("MISSING", repr(self.get_device("nope")))

    def cleanup(self):
        pass
"""

SYNC_CONFIG = """
parameters: {mode: continuous, interval: 0.2}
pvs:
  inputs:
    SETPOINT: {type: float, value: 0.0}
    AO_SP: {type: float, value: 0.0}
  outputs:
    READBACK: {type: float, value: -1}
    SELF_RB: {type: float, value: -1}
    MOTOR: {type: float, value: -1}
    DEVICES: {type: string, value: ""}
    MISSING: {type: string, value: ""}
"""

ASYNC_PLUGIN = """
import asyncio
from iocmng import TaskBase

class DevAsync(TaskBase):
    async def initialize(self):
        pass

    async def execute(self):
        bpm, ai = self.get_device("bpm1"), self.get_device("ai1")
        data = await asyncio.to_thread(bpm.read)    # device calls block: keep them off the loop
        self.set_pv("X", data["bpm1_x"]["value"])
        self.set_pv("READBACK", await asyncio.to_thread(ai.get))
        self.set_message(f"{len(self.list_devices())} devices")

    async def cleanup(self):
        pass
"""

ASYNC_CONFIG = """
parameters: {mode: continuous, interval: 0.2}
pvs:
  outputs:
    X: {type: float, value: -99}
    READBACK: {type: float, value: -1}
"""


def write_plugin(root: Path, name: str, code: str, config: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / f"{name}.py").write_text(textwrap.dedent(code))
    (d / "config.yaml").write_text(textwrap.dedent(config))
    return d


def get_json(url: str) -> Any:
    r = call("GET", url, timeout=10)
    assert r.status == 200, r.text
    return r.body


def by_name(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in listing["devices"]}


@pytest.fixture
def device_ioc(tmp_path: Path) -> Iterator[tuple[str, EpicsPorts]]:
    """A separate soft IOC process serving <prefix>:ai1:AI_RB and <prefix>:ao1:AO_SP."""
    prefix, ports = random_prefix(), EpicsPorts.allocate()
    script = tmp_path / "device_ioc.py"
    script.write_text(DEVICE_IOC)
    out = tmp_path / "device_ioc.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, str(script), prefix],
            env=ports.env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_sync(
            lambda: "READY" in out.read_text(errors="replace") or proc.poll() is not None,
            timeout=30,
            what="device IOC",
        )
        assert proc.poll() is None, out.read_text()
        yield prefix, ports
    finally:
        _purge_ca_channels()  # before the IOC goes: no CA callbacks into the test's loop
        proc.kill()
        proc.wait(10)


def values_yaml(path: Path, iocs: str) -> Path:
    path.write_text(
        "beamline: tbl\nnamespace: tns\nepicsConfiguration:\n  iocs:\n"
        + textwrap.indent(textwrap.dedent(iocs), "    ")
    )
    return path


def device_server(factory: ServerFactory, values: Path | None = None, **env: str) -> Server:
    srv = factory(env={"IOCMNG_DISABLE_OPHYD": "false", **env}, start=False)
    if values is not None:
        srv.extra_env["IOCMNG_BEAMLINE_CONFIG"] = str(values)
    return srv


async def test_devices(
    tmp_path: Path, device_ioc: tuple[str, EpicsPorts], server_factory: ServerFactory
) -> None:
    ioc_prefix, ioc_ports = device_ioc
    srv = device_server(server_factory)
    values = values_yaml(
        tmp_path / "values.yaml",
        f"""
        - name: motors
          devgroup: mot
          devtype: sim
          iocprefix: TBL:MOT
          devices: [{{name: m1}}, {{name: m2}}]
        - name: bpm1
          devgroup: diag
          devtype: sim
          iocprefix: TBL:BPM1
        - name: devioc                  # the separate soft IOC
          devgroup: io
          devtype: ai
          iocprefix: {ioc_prefix}
          devices: [{{name: ai1}}, {{name: ao1, devtype: ao}}]
        - name: selfioc                 # PVs served by iocmng itself
          devgroup: io
          devtype: ao
          iocprefix: {srv.prefix}
          devices: [{{name: DEVSYNC}}]
        - name: deadioc                 # nobody serves these PVs
          devgroup: io
          devtype: ai
          iocprefix: {random_prefix()}DEAD
          devices: [{{name: dead1}}]
        - {{name: strange, devgroup: foo, devtype: sim, iocprefix: X}}
        - {{name: oddtype, devgroup: io, devtype: nosuch, iocprefix: X}}
        - {{name: noprefix, devgroup: io, devtype: ai}}
        - {{name: parked, devgroup: mot, devtype: sim, iocprefix: P, disable: true}}
        - {{name: plainioc, iocprefix: NOTADEVICE}}
    """,
    )
    plugins = tmp_path / "plugins"
    config = tmp_path / "service.yaml"
    config.write_text(
        json.dumps(
            {
                "plugins": [
                    {
                        "name": "devsync",
                        "local_path": str(
                            write_plugin(plugins, "devsync", SYNC_PLUGIN, SYNC_CONFIG)
                        ),
                    },
                    {
                        "name": "devasync",
                        "local_path": str(
                            write_plugin(plugins, "devasync", ASYNC_PLUGIN, ASYNC_CONFIG)
                        ),
                    },
                    {"name": "device_monitor", "local_path": str(EXAMPLES / "device_monitor")},
                ]
            }
        )
    )
    srv.extra_env.update(
        {
            "IOCMNG_BEAMLINE_CONFIG": str(values),
            "IOCMNG_CONFIG": str(config),
            # the server's CA client reaches its own server and the device IOC, on loopback
            "EPICS_CA_ADDR_LIST": f"127.0.0.1:{srv.ports.ca_server} 127.0.0.1:{ioc_ports.ca_server}",
        }
    )
    health = srv.start()
    assert health["status"] == "ok"

    def settled() -> dict[str, Any] | None:
        listing = get_json(f"{srv.url}/devices")
        return listing if all(d["state"] != "pending" for d in listing["devices"]) else None

    listing = wait_for_sync(settled, timeout=30, what="device builds")
    assert listing["enabled"] and listing["error"] is None and listing["control_layer"] == "caproto"
    devs = by_name(listing)
    for name in ("m1", "m2", "bpm1", "ai1", "ao1", "DEVSYNC"):
        assert devs[name]["state"] == "ok", devs[name]
    assert devs["ao1"] == {
        "name": "ao1",
        "ioc": "devioc",
        "group": "io",
        "type": "ao",
        "prefix": f"{ioc_prefix}:ao1",
        "state": "ok",
        "reason": None,
        "class": "OphydAO",
    }
    assert devs["m1"]["prefix"] == "TBL:MOT:m1" and devs["bpm1"]["prefix"] == "TBL:BPM1"
    # bad entries: each named, with its problem; nothing else affected
    assert devs["dead1"]["state"] == "failed" and "dead1" in devs["dead1"]["reason"]
    assert "connect" in devs["dead1"]["reason"].lower(), devs["dead1"]
    assert "unknown devgroup 'foo'" in devs["strange"]["reason"]
    assert "unknown devtype 'nosuch' for devgroup 'io'" in devs["oddtype"]["reason"]
    assert devs["noprefix"]["reason"] == "IOC 'noprefix': missing key 'iocprefix'"
    assert devs["parked"]["state"] == "disabled"
    assert "plainioc" not in devs and "NOTADEVICE" not in json.dumps(listing)
    # iocmng 2.7.9's fields: every configured device is available, the connected ones created
    assert listing["available"] == [d["name"] for d in listing["devices"]]
    assert listing["available_count"] == len(listing["devices"])
    assert set(listing["created"]) == {n for n, d in devs.items() if d["state"] == "ok"}
    assert listing["created_count"] == len(listing["created"]) >= 6
    log = srv.log()
    assert "dead1" in log and "unknown devgroup 'foo'" in log

    # the sync plugin writes the other IOC's AO and reads its AI (x2), over ophyd
    await caput(srv.pv("devsync", "SETPOINT"), 3.5, wait=True, timeout=10)
    await wait_for(
        lambda: _equals(f"{ioc_prefix}:ao1:AO_SP", 3.5), timeout=15, what="AO written by the plugin"
    )
    await wait_for(
        lambda: _equals(srv.pv("devsync", "READBACK"), 7.0),
        timeout=15,
        what="AI read by the plugin",
    )
    await wait_for(
        lambda: _equals(srv.pv("devsync", "MOTOR"), 3.5), timeout=15, what="sim motor moved"
    )
    # ... and, through ophyd, a PV served by iocmng itself (decision 0007)
    await caput(srv.pv("devsync", "AO_SP"), 1.25, wait=True, timeout=10)
    await wait_for(
        lambda: _equals(srv.pv("devsync", "SELF_RB"), 1.25), timeout=15, what="own PV via ophyd"
    )
    assert (
        await caget(srv.pv("devsync", "DEVICES"), datatype=str, timeout=5)
        == "DEVSYNC,ai1,ao1,bpm1,m1,m2"
    )
    assert await caget(srv.pv("devsync", "MISSING"), datatype=str, timeout=5) == "None"
    # the async plugin: sim BPM and the real AI, device calls off the loop
    await wait_for(
        lambda: _equals(srv.pv("devasync", "READBACK"), 7.0), timeout=15, what="async plugin AI"
    )
    assert await caget(srv.pv("devasync", "X"), timeout=5) != -99
    assert await caget(srv.pv("devasync", "MESSAGE"), datatype=str, timeout=5) == "6 devices"
    # the example plugin reads m1
    await wait_for(
        lambda: _equals(srv.pv("device_monitor", "POSITION"), 3.5), timeout=15, what="example"
    )
    assert await caget(srv.pv("device_monitor", "MESSAGE"), datatype=str, timeout=5) == "m1: ok"

    health = srv.health()
    assert health["status"] == "ok" and health["plugins"].get("failed", 0) == 0, health
    tasks = {t["name"]: t for t in get_json(f"{srv.url}/tasks")["plugins"]}
    assert all(t["error_count"] == 0 for t in tasks.values()), tasks
    _purge_ca_channels()  # before the server goes: no CA callbacks into the test's loop
    assert srv.stop() == 0
    assert "Traceback" not in srv.log().split("shutdown: stopping plugins", 1)[-1], srv.log()[
        -3000:
    ]


async def _message(srv: Server) -> str:
    return await caget(srv.pv("device_monitor", "MESSAGE"), datatype=str, timeout=2)


async def _equals(pv: str, value: float) -> bool:
    return abs(await caget(pv, timeout=2) - value) < 1e-9


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("beamline: [unclosed\n  : :", "cannot read it as YAML"),
        ("beamline: tbl\nnamespace: tns\n", "missing key 'epicsConfiguration'"),
        ("namespace: tns\nepicsConfiguration: {iocs: []}\n", "missing key 'beamline'"),
        (
            "beamline: tbl\nnamespace: tns\nepicsConfiguration: {}\n",
            "missing key 'epicsConfiguration.iocs'",
        ),
    ],
)
async def test_bad_values_file(
    tmp_path: Path, server_factory: ServerFactory, content: str, expected: str
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(content)
    config = tmp_path / "service.yaml"
    config.write_text(
        json.dumps(
            {
                "plugins": [
                    {"name": "device_monitor", "local_path": str(EXAMPLES / "device_monitor")}
                ]
            }
        )
    )
    srv = device_server(server_factory, values, IOCMNG_CONFIG=str(config))
    health = srv.start()
    assert health["status"] == "ok"
    assert any(expected in e and "IOCMNG_BEAMLINE_CONFIG" in e for e in health["boot_errors"]), (
        health
    )
    listing = get_json(f"{srv.url}/devices")
    assert expected in listing["error"] and listing["devices"] == []
    message = await wait_for(lambda: _message(srv), timeout=20, what="device_monitor MESSAGE")
    assert message == "m1: devices off or not built"
    plugin = wait_for_sync(
        lambda: (p := get_json(f"{srv.url}/tasks/device_monitor"))["cycle_count"] > 0 and p,
        timeout=20,
        what="device_monitor cycles",
    )
    assert plugin["state"] == "running" and plugin["error_count"] == 0
    assert srv.stop() == 0


async def test_disabled(server_factory: ServerFactory) -> None:
    """Devices off (the default): listing says why; the example plugin runs and says so."""
    srv = server_factory(demo=True)
    listing = get_json(f"{srv.url}/devices")
    assert listing == {
        "enabled": False,
        "reason": "IOCMNG_DISABLE_OPHYD=true",
        "config": None,
        "control_layer": None,
        "error": None,
        "devices": [],
        # iocmng 2.7.9's fields
        "available": [],
        "available_count": 0,
        "created": [],
        "created_count": 0,
    }
    assert await wait_for(lambda: _message(srv), timeout=20) == "m1: devices off or not built"
    plugin = wait_for_sync(
        lambda: (p := get_json(f"{srv.url}/tasks/device_monitor"))["cycle_count"] > 0 and p,
        timeout=20,
        what="device_monitor cycles",
    )
    assert plugin["state"] == "running" and plugin["error_count"] == 0
    assert srv.stop() == 0


OWN_PVS = """
import asyncio, sys, threading
from softioc import asyncio_dispatcher, builder, softioc

LAYER = sys.argv[1]

def probe():
    if LAYER == "pyepics":
        import epics
        return epics.caget("OWN:SP", timeout=1.5)
    import ophyd
    ophyd.set_cl("caproto")
    from ophyd import EpicsSignal
    sig = EpicsSignal("OWN:SP", name="sp")
    try:
        sig.wait_for_connection(timeout=3)
        return sig.get()
    finally:
        from caproto.threading.pyepics_compat import PV
        PV.default_context().disconnect()

async def main():
    builder.SetDeviceName("OWN")
    builder.aOut("SP", initial_value=7.25)
    builder.LoadDatabase()
    softioc.iocInit(asyncio_dispatcher.AsyncioDispatcher(loop=asyncio.get_running_loop()))
    print("RESULT", await asyncio.to_thread(probe), flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize(("layer", "expected"), [("pyepics", "None"), ("caproto", "7.25")])
def test_pyepics_cannot_reach_own_pvs(tmp_path: Path, layer: str, expected: str) -> None:
    """Decision 0007: in the IOC process pyepics never connects to the process's own
    records (libca connects them locally, inside ca_create_channel, before pyepics
    knows the channel id); ophyd's caproto layer reaches them over loopback."""
    if layer == "pyepics":
        pytest.importorskip("epics", reason="pyepics is not installed")
    script = tmp_path / "own.py"
    script.write_text(OWN_PVS)
    ports = EpicsPorts.allocate()
    env = ports.env()
    env["EPICS_CA_ADDR_LIST"] = f"127.0.0.1:{ports.ca_server}"
    out = subprocess.run(
        [sys.executable, str(script), layer], env=env, capture_output=True, text=True, timeout=60
    )
    results = [
        line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("RESULT ")
    ]
    assert results == [expected], out.stdout + out.stderr
