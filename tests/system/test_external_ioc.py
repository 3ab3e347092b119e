"""Self-test of :mod:`external_ioc`: the soft IOC other link tests use as "external" PVs.

It serves the PVs named, CA (aioca) and PVA (p4p) clients of this process
read and write them, monitors see changes; stopped, its PVs stop answering;
restarted, they answer again on the same ports (a CA monitor reconnects). A
separate client process configured by :func:`merge_link_env` only reaches
it through CA and PVA.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aioca
import pytest
from conftest import EpicsPorts, pva_context, random_prefix, wait_for

from .external_ioc import ExternalIoc, merge_link_env

pytestmark = pytest.mark.timeout(120)

Factory = Callable[..., ExternalIoc]


def three_pvs(prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}:TEMP": ("ao", 20.0),
        f"{prefix}:VALVE": ("bo", 0, {"ZNAM": "CLOSED", "ONAM": "OPEN"}),
        f"{prefix}:TXT": ("stringout", "hello"),
    }


async def pva_get(ports: EpicsPorts, pv: str, timeout: float = 5.0) -> Any:
    ctx = pva_context(ports)
    try:
        return await asyncio.wait_for(ctx.get(pv), timeout)
    finally:
        ctx.close()


async def test_read_write_monitor(external_ioc_factory: Factory) -> None:
    p = random_prefix()
    ioc = external_ioc_factory(three_pvs(p))
    temp, valve, txt = f"{p}:TEMP", f"{p}:VALVE", f"{p}:TXT"
    assert ioc.alive()
    # CA: the initial values, then writes
    assert await aioca.caget(temp, timeout=5) == 20.0
    assert await aioca.caget(valve, timeout=5) == 0
    assert await aioca.caget(valve, datatype=str, timeout=5) == "CLOSED"
    assert await aioca.caget(txt, timeout=5) == "hello"
    await aioca.caput(temp, 21.5, wait=True, timeout=5)
    await aioca.caput(txt, "via ca", wait=True, timeout=5)
    # PVA sees the CA writes, and writes itself
    ctx = pva_context(ioc.ports)
    try:
        assert await asyncio.wait_for(ctx.get(temp), 5) == 21.5
        assert (await asyncio.wait_for(ctx.get(txt), 5)).raw.value == "via ca"
        await asyncio.wait_for(ctx.put(valve, 1), 5)
        await asyncio.wait_for(ctx.put(txt, "via pva"), 5)
        await asyncio.wait_for(ctx.put(temp, -3.25), 5)
        # a PVA monitor sees a CA write
        pva_seen: list[float] = []

        async def on_pva(value: Any) -> None:
            pva_seen.append(float(value))

        sub = ctx.monitor(temp, on_pva)
        try:
            await wait_for(lambda: -3.25 in pva_seen, what="the PVA monitor's first value")
            await aioca.caput(temp, 7.0, wait=True, timeout=5)
            await wait_for(lambda: 7.0 in pva_seen, what="the PVA monitor to see 7.0")
        finally:
            sub.close()
    finally:
        ctx.close()
    assert await aioca.caget(valve, timeout=5) == 1
    assert await aioca.caget(valve, datatype=str, timeout=5) == "OPEN"
    assert await aioca.caget(txt, timeout=5) == "via pva"
    # a CA monitor sees every change, whichever protocol wrote it
    ca_seen: list[Any] = []
    ca_sub = aioca.camonitor(temp, ca_seen.append)
    try:
        await wait_for(lambda: 7.0 in ca_seen, what="the CA monitor's first value")
        await aioca.caput(temp, 8.5, wait=True, timeout=5)
        await wait_for(lambda: 8.5 in ca_seen, what="the CA monitor to see a CA write")
        await asyncio.wait_for(pva_context_put(ioc.ports, temp, 9.75), 10)
        await wait_for(lambda: 9.75 in ca_seen, what="the CA monitor to see a PVA write")
    finally:
        ca_sub.close()
    assert "Traceback" not in ioc.log(), ioc.log()


async def pva_context_put(ports: EpicsPorts, pv: str, value: Any) -> None:
    ctx = pva_context(ports)
    try:
        await ctx.put(pv, value)
    finally:
        ctx.close()


async def test_stop_and_restart(external_ioc_factory: Factory) -> None:
    p = random_prefix()
    ioc = external_ioc_factory(three_pvs(p))
    temp = f"{p}:TEMP"
    ports = ioc.ports
    seen: list[Any] = []
    sub = aioca.camonitor(temp, seen.append, notify_disconnect=True)
    try:
        await wait_for(lambda: 20.0 in seen, what="the CA monitor's first value")
        await aioca.caput(temp, 55.0, wait=True, timeout=5)
        await wait_for(lambda: 55.0 in seen, what="the CA monitor to see 55.0")

        assert ioc.stop() == 0, ioc.log()  # SIGTERM: a clean epicsExit
        assert not ioc.alive()
        # the monitor hears of the disconnection (a CANothing, not a value)
        await wait_for(
            lambda: any(isinstance(v, aioca.CANothing) for v in seen),
            what="the CA monitor to report the disconnection",
        )
        with pytest.raises(aioca.CANothing) as info:
            await aioca.caget(f"{p}:TXT", timeout=1)
        assert "timeout" in str(info.value).lower(), info.value
        with pytest.raises(TimeoutError):
            await pva_get(ports, temp, timeout=1)

        seen.clear()
        ioc.restart()
        assert ioc.alive() and ioc.ports == ports and ioc.starts == 2
        # same PVs, same ports, initial values again. A fresh PVA client finds it at once;
        # the CA monitor's channel reconnects at libca's next search for disconnected
        # channels (no caRepeater here, so no beacon speeds that up): up to ~10 s after
        # a short outage, longer after a long one.
        assert await pva_get(ports, temp, timeout=10) == 20.0
        await wait_for(lambda: 20.0 in seen, timeout=30, what="the CA monitor to reconnect")
        assert await aioca.caget(temp, timeout=5) == 20.0
        assert await aioca.caget(f"{p}:TXT", timeout=10) == "hello"
    finally:
        sub.close()


CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    import aioca
    from p4p.client.thread import Context

    async def ca(pvs):
        return [await aioca.caget(pv, timeout=10) for pv in pvs]

    pvs = sys.argv[1:]
    out = {"ca": asyncio.run(ca(pvs))}
    ctx = Context("pva")  # configured by the environment only
    out["pva"] = [ctx.get(pv, timeout=10) for pv in pvs]
    ctx.close()
    print(json.dumps(out))
    """
)


async def test_merge_link_env_reaches_two_iocs(external_ioc_factory: Factory) -> None:
    """A client process with its own ports (like a service) plus the IOCs' addresses."""
    p, q = random_prefix(), random_prefix()
    one = external_ioc_factory({f"{p}:A": ("ao", 1.5)})
    two = external_ioc_factory({f"{q}:B": ("longout", 7)})
    own = EpicsPorts.allocate()
    env = merge_link_env(own.env(), one, two)
    assert env["EPICS_CA_ADDR_LIST"].split() == ["127.0.0.1", one.ca_address, two.ca_address]
    assert env["EPICS_PVA_ADDR_LIST"].split() == ["127.0.0.1", one.pva_address, two.pva_address]
    assert env["EPICS_CA_AUTO_ADDR_LIST"] == env["EPICS_PVA_AUTO_ADDR_LIST"] == "NO"
    assert merge_link_env(env, one) == env  # no duplicates
    assert one.service_env()["EPICS_PVA_ADDR_LIST"] == one.pva_address
    with pytest.raises(ValueError, match="non-loopback"):
        merge_link_env({"EPICS_CA_ADDR_LIST": "10.0.0.1"}, one)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        f"{p}:A",
        f"{q}:B",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {"ca": [1.5, 7], "pva": [1.5, 7]}, err.decode()


def test_context_manager_and_bad_specs(tmp_path: Path) -> None:
    p = random_prefix()
    with ExternalIoc(tmp_path, {f"{p}:X": ("stringin", "read only")}) as ioc:
        assert ioc.alive() and "READY" in ioc.log()
    assert not ioc.alive()
    for bad in ({":X": ("ao", 0)}, {"X": ("calc", 0)}, {"X": ("mbbo", 0)}, {}):
        with pytest.raises(ValueError):
            ExternalIoc(tmp_path, bad)
