"""The REST PV gateway (issue 8, item 5) against a separate soft IOC and the service's own PVs.

A small pythonSoftIOC script (its own loopback ports) serves the "external"
PVs: a float, a float array, an enum, a string and a slow record whose put
completes after 3 s. The iocmng server's CA and PVA clients are pointed at
both that IOC and its own server (address lists on 127.0.0.1 only). Reads,
writes and monitors go through HTTP; aioca and p4p on this side check that
writes really happened. Bad input: each a clear 4xx/504 naming the problem,
nothing written, the service still healthy.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import EpicsPorts, pv_answers, pva_context, random_prefix, wait_for, wait_for_sync

from .conftest import Server, ServerFactory, acall

pytestmark = pytest.mark.timeout(120)

TOKEN = "gateway-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

IOC_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from softioc import asyncio_dispatcher, builder, softioc

    dispatcher = asyncio_dispatcher.AsyncioDispatcher()
    builder.SetDeviceName(sys.argv[1])
    builder.aOut("AO", initial_value=1.5, EGU="mm", PREC=2)
    builder.WaveformOut("WF", initial_value=[1.0, 2.0, 3.0], length=8)
    builder.mbbOut("EN", "OFF", "ON", "FAULT", initial_value=1)
    builder.stringOut("S", initial_value="hello")

    async def slow(value):
        await asyncio.sleep(3.0)

    builder.aOut("SLOW", initial_value=0.0, on_update=slow, blocking=True)
    builder.aOut("LOCKED", initial_value=0.0, DISP=1)  # puts from clients fail
    builder.LoadDatabase()
    softioc.iocInit(dispatcher)
    print("ready", flush=True)
    asyncio.run_coroutine_threadsafe(asyncio.Event().wait(), dispatcher.loop).result()
    """
)


class ExternalIoc:
    def __init__(self, tmp: Path, ports: EpicsPorts | None = None) -> None:
        self.ports = ports or EpicsPorts.allocate()
        self.prefix = "X" + random_prefix()
        script = tmp / "ext_ioc.py"
        script.write_text(IOC_SCRIPT)
        self.log = tmp / "ext_ioc.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), self.prefix],
                env=self.ports.env(),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        wait_for_sync(
            lambda: self._alive() and pv_answers(self.ports, self.pv("AO")),
            timeout=30,
            interval=0.2,
            what="the external IOC",
        )

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"external IOC exited: {self.log.read_text()}")
        return True

    def pv(self, short: str) -> str:
        return f"{self.prefix}:{short}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalIoc]:
    ioc = ExternalIoc(tmp_path_factory.mktemp("ext"))
    yield ioc
    ioc.stop()


@pytest.fixture(scope="module")
def late_ports() -> EpicsPorts:
    """Ports of an IOC started (and killed) by a test; the server knows them from the start."""
    return EpicsPorts.allocate()


@pytest.fixture(scope="module")
def srv(
    ext: ExternalIoc, late_ports: EpicsPorts, module_server_factory: ServerFactory
) -> Iterator[Server]:
    server = module_server_factory(demo=True, token=TOKEN, start=False)
    own = server.ports
    servers = (own, ext.ports, late_ports)
    server.extra_env.update(
        {
            "EPICS_CA_ADDR_LIST": " ".join(f"127.0.0.1:{p.ca_server}" for p in servers),
            "EPICS_PVA_ADDR_LIST": " ".join(f"127.0.0.1:{p.pva_broadcast}" for p in servers),
            "IOCMNG_PV_WRITE_PATTERN": f"{ext.prefix}:AO {ext.prefix}:WF {ext.prefix}:EN {ext.prefix}:S "
            f"{ext.prefix}:SLOW {ext.prefix}:LOCKED {server.prefix}:*",
            "IOCMNG_PV_MAX_TIMEOUT": "5",
            "IOCMNG_PV_MAX_MONITORS": "2",
        }
    )
    server.start()
    wait_for_sync(
        lambda: pv_answers(own, server.pv("sync_monitor", "SETPOINT")),
        timeout=40,
        interval=0.2,
        what="the demo plugins' PVs",
    )
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-4000:]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for the monitor streams (requests go through acall)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.mark.parametrize("provider", ["ca", "pva"])
async def test_read_external(srv: Server, ext: ExternalIoc, provider: str) -> None:
    status, ao = (await acall("GET", f"{srv.url}/pvs/{ext.pv('AO')}?provider={provider}")).checked()
    assert status == 200, ao
    assert (
        ao["provider"] == provider
        and ao["value"] == 1.5
        and ao["severity"] == 0
        and ao["timestamp"] > 1e9
    )
    status, wf = (
        await acall("GET", f"{srv.url}/pvs/{ext.pv('WF')}?provider={provider}&timeout=2")
    ).checked()
    assert status == 200 and wf["value"][:3] == [1.0, 2.0, 3.0], wf
    status, en = (await acall("GET", f"{srv.url}/pvs/{ext.pv('EN')}?provider={provider}")).checked()
    assert (
        status == 200
        and en["value"] == 1
        and en["choices"] == ["OFF", "ON", "FAULT"]
        and en["label"] == "ON"
    ), en
    status, s = (await acall("GET", f"{srv.url}/pvs/{ext.pv('S')}?provider={provider}")).checked()
    assert status == 200 and s["value"] == "hello", s


@pytest.mark.parametrize("provider", ["ca", "pva"])
async def test_read_own_pvs(srv: Server, provider: str) -> None:
    status, sp = (
        await acall(
            "GET", f"{srv.url}/pvs/{srv.pv('sync_monitor', 'SETPOINT')}?provider={provider}"
        )
    ).checked()
    assert status == 200 and sp["value"] == 50.0, sp
    status, st = (
        await acall("GET", f"{srv.url}/pvs/{srv.pv('sync_monitor', 'STATUS')}?provider={provider}")
    ).checked()
    assert status == 200 and "RUN" in st["choices"], st


async def test_write_ca_and_pva(srv: Server, ext: ExternalIoc) -> None:
    import aioca

    status, body = (
        await acall("PUT", f"{srv.url}/pvs/{ext.pv('AO')}", body={"value": 4.25}, headers=AUTH)
    ).checked()
    assert status == 200 and body["provider"] == "ca", body
    assert await aioca.caget(ext.pv("AO"), timeout=5) == 4.25
    status, body = (
        await acall(
            "PUT",
            f"{srv.url}/pvs/{ext.pv('WF')}",
            headers=AUTH,
            body={"value": [7, 8, 9, 10], "provider": "pva", "timeout": 3},
        )
    ).checked()
    assert status == 200, body
    status, body = (
        await acall(
            "PUT",
            f"{srv.url}/pvs/{ext.pv('EN')}",
            headers=AUTH,
            body={"value": "FAULT", "provider": "pva"},
        )
    ).checked()
    assert status == 200 and body["value"] == 2, body
    status, body = (
        await acall("PUT", f"{srv.url}/pvs/{ext.pv('S')}", headers=AUTH, body={"value": "via ca"})
    ).checked()
    assert status == 200, body
    ctx = pva_context(ext.ports)
    try:
        wf = await asyncio.wait_for(ctx.get(ext.pv("WF")), 5)
        assert list(wf)[:4] == [7.0, 8.0, 9.0, 10.0]
        en = await asyncio.wait_for(ctx.get(ext.pv("EN")), 5)
        assert en.raw.value.index == 2
        assert (await asyncio.wait_for(ctx.get(ext.pv("S")), 5)).raw.value == "via ca"
    finally:
        ctx.close()
    # the service's own input, over PVA, seen by the plugin's record
    status, body = (
        await acall(
            "PUT",
            f"{srv.url}/pvs/{srv.pv('sync_monitor', 'GAIN')}",
            headers=AUTH,
            body={"value": 2.5, "provider": "pva"},
        )
    ).checked()
    assert status == 200, body
    assert await aioca.caget(srv.pv("sync_monitor", "GAIN"), timeout=5) == 2.5


async def next_event(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next SSE frame: its data with ``event`` added."""
    data: dict[str, Any] = {}
    while True:
        line = (await resp.content.readline()).decode()
        if not line:
            raise AssertionError("the stream ended")
        if line.startswith("event: "):
            data["event"] = line[7:].strip()
        elif line.startswith("data: "):
            data.update(json.loads(line[6:]))
        elif line == "\n" and data:
            return data


@pytest.mark.parametrize("provider", ["ca", "pva"])
async def test_monitor_stream(
    http: aiohttp.ClientSession, srv: Server, ext: ExternalIoc, provider: str
) -> None:
    import aioca

    url = f"{srv.url}/pvs/{ext.pv('AO')}/monitor?provider={provider}&timeout=3"
    async with http.get(url) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"

        async def next_value() -> dict[str, Any]:
            while "value" not in (ev := await next_event(resp)):
                pass
            return ev

        first = await asyncio.wait_for(next_value(), 5)
        assert (
            first["event"] == "value"
            and first["type"] == "double"
            and isinstance(first["value"], float)
        ), first
        target = first["value"] + 1.0
        await aioca.caput(ext.pv("AO"), target, wait=True, timeout=5)

        async def until_target() -> dict[str, Any]:
            while (ev := await next_value())["value"] != target:
                pass
            return ev

        ev = await asyncio.wait_for(until_target(), 5)
        assert ev["provider"] == provider and ev["severity"] == 0


async def test_bad_input(srv: Server, ext: ExternalIoc) -> None:
    import aioca

    before = await aioca.caget(ext.pv("AO"), timeout=5)
    for provider in ("ca", "pva"):
        status, p = (
            await acall(
                "GET", f"{srv.url}/pvs/NO:SUCH:PV{provider}?provider={provider}&timeout=0.5"
            )
        ).checked()
        assert status == 404 and "NO:SUCH:PV" in p["detail"] and "0.5 s" in p["detail"], p
    status, p = (await acall("GET", f"{srv.url}/pvs/{ext.pv('AO')}?timeout=100")).checked()
    assert status == 400 and "IOCMNG_PV_MAX_TIMEOUT" in p["detail"], p
    status, p = (await acall("GET", f"{srv.url}/pvs/{ext.pv('AO')}?provider=xyz")).checked()
    assert status == 400 and "provider" in p["detail"], p
    # refused by the pattern (an external PV not listed), without and with the token
    status, p = (
        await acall("PUT", f"{srv.url}/pvs/NOT:ALLOWED", body={"value": 1}, headers=AUTH)
    ).checked()
    assert status == 403 and "IOCMNG_PV_WRITE_PATTERN" in p["detail"], p
    status, p = (await acall("PUT", f"{srv.url}/pvs/{ext.pv('AO')}", body={"value": 9.0})).checked()
    assert status == 401 and "token" in p["detail"].lower(), p
    status, p = (
        await acall("PUT", f"{srv.url}/pvs/{ext.pv('AO')}", body={"value": "abc"}, headers=AUTH)
    ).checked()
    assert status == 400 and "not a number" in p["detail"], p
    status, p = (
        await acall("PUT", f"{srv.url}/pvs/{ext.pv('EN')}", body={"value": "BROKEN"}, headers=AUTH)
    ).checked()
    assert status == 400 and "FAULT" in p["detail"], p
    status, p = (
        await acall(
            "PUT", f"{srv.url}/pvs/{ext.pv('WF')}", body={"value": list(range(20))}, headers=AUTH
        )
    ).checked()
    assert status == 400 and "at most 8" in p["detail"], p
    status, p = (
        await acall(
            "PUT", f"{srv.url}/pvs/{ext.pv('AO')}", body={"value": 1, "bogus": 2}, headers=AUTH
        )
    ).checked()
    assert status == 422 and "bogus" in p["detail"], p  # a body that does not fit the schema
    status, p = (
        await acall(
            "PUT", f"{srv.url}/pvs/{ext.pv('AO')}", body={"value": 1, "timeout": 60}, headers=AUTH
        )
    ).checked()
    assert status == 400 and "IOCMNG_PV_MAX_TIMEOUT" in p["detail"], p
    # nothing was written
    assert await aioca.caget(ext.pv("AO"), timeout=5) == before
    # a connected PV whose put completes late: 504
    status, p = (
        await acall(
            "PUT",
            f"{srv.url}/pvs/{ext.pv('SLOW')}",
            body={"value": 1, "timeout": 0.5},
            headers=AUTH,
        )
    ).checked()
    assert status == 504 and "did not complete within 0.5 s" in p["detail"], p
    # the IOC refuses the put (DISP=1): 502, naming the PV
    status, p = (
        await acall("PUT", f"{srv.url}/pvs/{ext.pv('LOCKED')}", body={"value": 1}, headers=AUTH)
    ).checked()
    assert status == 502 and ext.pv("LOCKED") in p["detail"], p
    assert srv.health()["status"] == "ok"


async def test_reference_routes(srv: Server, ext: ExternalIoc) -> None:
    import aioca

    status, body = (await acall("GET", f"{srv.url}/pvs/provider")).checked()
    assert status == 200 and body == {"provider": "ca"}
    status, body = (
        await acall("POST", f"{srv.url}/pvs/get", body={"pv_name": ext.pv("S")}, headers=AUTH)
    ).checked()
    assert (
        status == 200
        and body["ok"]
        and body["pv_name"] == ext.pv("S")
        and isinstance(body["value"], str)
    ), body
    status, body = (
        await acall(
            "POST",
            f"{srv.url}/pvs/put",
            body={"pv_name": ext.pv("AO"), "value": 3.5},
            headers=AUTH,
        )
    ).checked()
    assert status == 200 and body == {"ok": True, "pv_name": ext.pv("AO"), "error": None}
    assert await aioca.caget(ext.pv("AO"), timeout=5) == 3.5
    status, body = (
        await acall(
            "POST",
            f"{srv.url}/pvs/get",
            body={"pv_name": "NO:SUCH/PV", "timeout": 0.5},  # "/" is fine in a body
            headers=AUTH,
        )
    ).checked()
    assert status == 404 and body["ok"] is False and body["error"], body
    status, body = (
        await acall(
            "POST",
            f"{srv.url}/pvs/monitor",
            body={"pv_name": ext.pv("AO"), "name": "ao"},
            headers=AUTH,
        )
    ).checked()
    assert status == 200 and body["ok"] and body["key"] == "ao", body
    await aioca.caput(ext.pv("AO"), 6.5, wait=True, timeout=5)

    async def seen() -> bool:
        _, mons = (await acall("GET", f"{srv.url}/pvs/monitors")).checked()
        return (
            mons["monitors"] == {"ao": ext.pv("AO")}
            and mons["details"]["ao"]["last"]["value"] == 6.5
        )

    await wait_for(seen, timeout=5, what="the monitor's last value")
    status, body = (
        await acall("POST", f"{srv.url}/pvs/monitor", body={"pv_name": ext.pv("S")}, headers=AUTH)
    ).checked()
    assert status == 200, body
    status, body = (
        await acall("POST", f"{srv.url}/pvs/monitor", body={"pv_name": ext.pv("EN")}, headers=AUTH)
    ).checked()
    assert status == 409 and "IOCMNG_PV_MAX_MONITORS" in body["detail"], body
    for key in ("ao", ext.pv("S")):
        status, body = (
            await acall("DELETE", f"{srv.url}/pvs/monitor/{key}", headers=AUTH)
        ).checked()
        assert status == 200 and body["ok"], body
    status, body = (await acall("DELETE", f"{srv.url}/pvs/monitor/ao", headers=AUTH)).checked()
    assert status == 404 and "No active monitor" in body["detail"], body
    _, mons = (await acall("GET", f"{srv.url}/pvs/monitors")).checked()
    assert mons["count"] == 0


async def test_monitor_sees_disconnect(
    http: aiohttp.ClientSession, srv: Server, late_ports: EpicsPorts, tmp_path: Path
) -> None:
    """Killing the IOC behind two open streams (CA, PVA): each says ``disconnected``, the service lives."""
    ioc = ExternalIoc(tmp_path, late_ports)
    try:
        async with (
            http.get(f"{srv.url}/pvs/{ioc.pv('AO')}/monitor?provider=ca&timeout=5") as ca,
            http.get(f"{srv.url}/pvs/{ioc.pv('AO')}/monitor?provider=pva&timeout=5") as pva,
        ):
            assert ca.status == 200 and pva.status == 200
            for resp in (ca, pva):
                first = await asyncio.wait_for(next_event(resp), 5)
                assert first["event"] == "value" and first["value"] == 1.5, first
            ioc.stop()
            for resp in (ca, pva):

                async def disconnected(resp: aiohttp.ClientResponse = resp) -> dict[str, Any]:
                    while (ev := await next_event(resp))["event"] != "disconnected":
                        pass
                    return ev

                ev = await asyncio.wait_for(disconnected(), 10)
                assert ev["connected"] is False and ev["name"] == ioc.pv("AO"), ev
    finally:
        ioc.stop()
    assert srv.health()["status"] == "ok"
