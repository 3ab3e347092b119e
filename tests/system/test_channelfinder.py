"""ChannelFinder helpers against a small ChannelFinder-compatible HTTP server.

The real ChannelFinder is a Java service; the tests start an aiohttp server
(in a thread) answering ``GET /ChannelFinder/resources/channels`` with the
query subset the client uses (``~name`` glob, ``~tag``, ``~size``, property
filters with globs and comma-separated alternatives). A real
``iocmng-server`` runs a sync and an async job calling ``cf_search`` /
``cf_discover_devices``; failures (server down, HTTP 500, a body that is not
JSON, no URL) reach the plugin as ChannelFinderError with a clear message.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import free_port, wait_for_sync

from iocmng.epics.channelfinder import ChannelFinderClient, group_devices, search_params
from iocmng.errors import ChannelFinderError

from .conftest import Server, ServerFactory, call, closed_port

pytestmark = pytest.mark.timeout(120)


def channel(name: str, tags: list[str] = (), **props: str) -> dict[str, Any]:
    return {
        "name": name,
        "owner": "cfeeder",
        "properties": [{"name": k, "value": v, "owner": "cfeeder"} for k, v in props.items()],
        "tags": [{"name": t, "owner": "cfeeder"} for t in tags],
    }


CHANNELS = [
    *(
        channel(
            f"SPARC:MOT:TML:GUNFLG01:{f}",
            ["archived"],
            devgroup="mot",
            devtype="tml",
            iocName="tml-ch1",
        )
        for f in ("RBV", "VAL", "DMOV")
    ),
    *(
        channel(f"SPARC:MOT:TML:GUNFLG02:{f}", [], devgroup="mot", devtype="tml", iocName="tml-ch1")
        for f in ("RBV", "VAL")
    ),
    # same last segment (GUNFLG01) in another area: a different device
    *(
        channel(
            f"SPARC:LINAC:MOT:GUNFLG01:{f}", [], devgroup="mot", devtype="asyn", iocName="linac"
        )
        for f in ("RBV", "VAL")
    ),
    channel("SPARC:VAC:IP01:PRES", ["archived"], devgroup="vac", devtype="ipcs", iocName="vac1"),
]


def _match(ch: dict[str, Any], query: Any) -> bool:
    props = {p["name"]: p["value"] for p in ch["properties"]}
    tags = {t["name"] for t in ch["tags"]}
    for key, value in query.items():
        if key == "~size":
            continue
        if key == "~name":
            if not fnmatch.fnmatchcase(ch["name"], value):
                return False
        elif key == "~tag":
            if not any(fnmatch.fnmatchcase(t, v) for t in tags for v in value.split(",")):
                return False
        elif not any(fnmatch.fnmatchcase(props.get(key, "\0"), v) for v in value.split(",")):
            return False
    return True


async def channels(request: web.Request) -> web.Response:
    query = request.query
    found = [
        c
        for c in CHANNELS
        if _match(c, {k: v for k, v in query.items() if k != "~tag"})
        and all(_match(c, {"~tag": t}) for t in query.getall("~tag", []))
    ]
    return web.json_response(found[: int(query.get("~size", "10000"))])


async def broken(request: web.Request) -> web.Response:
    return web.Response(status=500, text="java.lang.NullPointerException")


async def not_json(request: web.Request) -> web.Response:
    return web.Response(text="<html>proxy login</html>", content_type="text/html")


class FakeChannelFinder:
    """The aiohttp app in a thread of its own (the service under test is another process)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-cf", daemon=True)
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ChannelFinder"

    def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ChannelFinder/resources/channels", channels)
        app.router.add_get("/broken/ChannelFinder/resources/channels", broken)
        app.router.add_get("/html/ChannelFinder/resources/channels", not_json)
        self.runner = web.AppRunner(app)
        self.thread.start()

        async def up() -> None:
            assert self.runner is not None
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def fake_cf() -> Iterator[FakeChannelFinder]:
    cf = FakeChannelFinder()
    cf.start()
    yield cf
    cf.stop()


# -- the client alone ------------------------------------------------------------------------
def test_group_devices_by_full_prefix() -> None:
    devices = group_devices(CHANNELS)
    by_prefix = {d["prefix"]: d for d in devices}
    assert sorted(by_prefix) == [
        "SPARC:LINAC:MOT:GUNFLG01",
        "SPARC:MOT:TML:GUNFLG01",
        "SPARC:MOT:TML:GUNFLG02",
        "SPARC:VAC:IP01",
    ]
    d = by_prefix["SPARC:MOT:TML:GUNFLG01"]
    assert (
        d["name"] == "GUNFLG01"
        and d["devgroup"] == "mot"
        and d["devtype"] == "tml"
        and d["iocname"] == "tml-ch1"
    )
    assert d["fields"] == ["DMOV", "RBV", "VAL"]
    assert by_prefix["SPARC:LINAC:MOT:GUNFLG01"]["devtype"] == "asyn"  # not merged with the TML one


def test_search_params() -> None:
    q = search_params("SPARC:*", ["archived", "ok"], {"devgroup": ["mot", "vac"]}, 50, iocName="x")
    assert q == [
        ("~size", "50"),
        ("~name", "SPARC:*"),
        ("~tag", "archived"),
        ("~tag", "ok"),
        ("devgroup", "mot,vac"),
        ("iocName", "x"),
    ]


async def test_client_search_and_errors(fake_cf: FakeChannelFinder) -> None:
    async with ChannelFinderClient(fake_cf.url, timeout=5) as cf:
        assert len(await cf.search(name="SPARC:*:GUNFLG01:*")) == 5
        assert {c["name"] for c in await cf.search(tags="archived", devgroup="vac")} == {
            "SPARC:VAC:IP01:PRES"
        }
        assert len(await cf.discover_devices(devgroup="mot", devtype="tml")) == 2
    base = f"http://127.0.0.1:{fake_cf.port}"
    cases = [
        (f"http://127.0.0.1:{closed_port()}/ChannelFinder", "unreachable"),
        (f"{base}/broken/ChannelFinder", "answered HTTP 500: java.lang.NullPointerException"),
        (f"{base}/html/ChannelFinder", "the answer is not JSON"),
    ]
    for url, text in cases:
        async with ChannelFinderClient(url, timeout=5) as cf:
            with pytest.raises(ChannelFinderError, match=text):
                await cf.search(name="*")


# -- plugins in a real service -----------------------------------------------------------------
JOB_CONFIG = "parameters: {op: search, filters: {}}\npvs:\n  outputs:\n    COUNT: {type: int}\n"

SYNC_JOB = """
from iocmng import JobBase, JobResult


class CfSync(JobBase):
    def initialize(self):
        pass

    def execute(self):  # a worker thread: the helpers return results directly
        f = self.parameters["filters"]
        if self.parameters["op"] == "discover":
            out = self.cf_discover_devices(**f)
        else:
            out = self.cf_search(**f)
        self.set_pv("COUNT", len(out))
        return JobResult(True, {"items": out}, f"{len(out)} found")
"""

ASYNC_JOB = (
    SYNC_JOB.replace("CfSync", "CfAsync")
    .replace("    def execute", "    async def execute")
    .replace("self.cf_discover_devices(", "await self.cf_discover_devices(")
    .replace("self.cf_search(", "await self.cf_search(")
)


@pytest.fixture(scope="module")
def cf_server(fake_cf: FakeChannelFinder, module_server_factory: ServerFactory) -> Iterator[Server]:
    root = module_server_factory.root
    plugins = []
    for name, code in (("cf-sync", SYNC_JOB), ("cf-async", ASYNC_JOB)):
        d = root / name
        d.mkdir()
        (d / "job.py").write_text(code)
        (d / "config.yaml").write_text(JOB_CONFIG)
        plugins.append({"name": name, "local_path": str(d)})
    (root / "service.yaml").write_text(json.dumps({"plugins": plugins}))
    srv = module_server_factory(
        env={"IOCMNG_CONFIG": str(root / "service.yaml"), "IOCMNG_CHANNELFINDER_URL": fake_cf.url}
    )
    for name in ("cf-sync", "cf-async"):
        wait_for_sync(
            lambda n=name: (
                call("GET", f"{srv.url}/jobs/{n}", timeout=30).expect_ok()["state"] == "idle"
            ),
            timeout=30,
            what=f"{name} idle",
        )
    yield srv
    srv.stop()


@pytest.mark.parametrize("job", ["cf-sync", "cf-async"])
def test_plugin_search_and_discover(cf_server: Server, job: str) -> None:
    run = f"{cf_server.url}/jobs/{job}/run"
    r = call(
        "POST",
        run,
        {"parameters": {"op": "search", "filters": {"name": "SPARC:MOT:TML:*"}}},
        timeout=30,
    ).expect_ok()
    assert r["success"], r
    assert len(r["data"]["items"]) == 5 and r["message"] == "5 found"
    r = call(
        "POST", run, {"parameters": {"op": "search", "filters": {"tags": ["archived"]}}}, timeout=30
    ).expect_ok()
    assert {c["name"] for c in r["data"]["items"]} >= {
        "SPARC:VAC:IP01:PRES",
        "SPARC:MOT:TML:GUNFLG01:RBV",
    }
    r = call(
        "POST", run, {"parameters": {"op": "discover", "filters": {"devgroup": "mot"}}}, timeout=30
    ).expect_ok()
    assert r["success"], r
    assert [d["prefix"] for d in r["data"]["items"]] == [
        "SPARC:LINAC:MOT:GUNFLG01",
        "SPARC:MOT:TML:GUNFLG01",
        "SPARC:MOT:TML:GUNFLG02",
    ]


@pytest.mark.parametrize("job", ["cf-sync", "cf-async"])
def test_plugin_sees_errors(cf_server: Server, fake_cf: FakeChannelFinder, job: str) -> None:
    run = f"{cf_server.url}/jobs/{job}/run"
    base = f"http://127.0.0.1:{fake_cf.port}"
    cases = [
        (f"http://127.0.0.1:{closed_port()}/ChannelFinder", "unreachable"),
        (f"{base}/broken/ChannelFinder", "HTTP 500"),
        (f"{base}/html/ChannelFinder", "not JSON"),
    ]
    for url, text in cases:
        # the plugin parameter channelfinder_url overrides the service's URL
        r = call(
            "POST",
            run,
            {"parameters": {"channelfinder_url": url, "filters": {"name": "*"}}},
            timeout=30,
        ).expect_ok()
        assert not r["success"], r
        assert r["message"].startswith("ChannelFinderError: ") and text in r["message"], r
        assert url in r["message"]
    assert call("GET", f"{cf_server.url}/health", timeout=30).expect_ok()["status"] == "ok"


def test_no_url_is_an_error(tmp_path: Path) -> None:
    from iocmng.plugin.job import JobBase

    class Probe(JobBase):
        def initialize(self) -> None: ...
        def execute(self) -> Any: ...

    with pytest.raises(ChannelFinderError, match="IOCMNG_CHANNELFINDER_URL"):
        Probe(name="probe").cf_search(name="*")


CREATE_DEVICE = """
import asyncio
from iocmng.plugin.task import TaskBase
from iocmng.epics.channelfinder import group_devices

class T(TaskBase):
    def initialize(self): ...
    def execute(self): ...
    def cleanup(self): ...

t = T(name="t")
props = [{"name": "devgroup", "value": "mot"}, {"name": "devtype", "value": "sim"}]
desc = group_devices([{"name": "TNOPE:MOT:M1:RBV", "properties": props}])[0]
dev = t.cf_create_device(desc)                      # sync code: the device itself
print("built", type(dev).__name__, dev.name, dev is t.cf_create_device(desc))

async def main():
    return await t.cf_create_device(desc)            # async code: awaitable
print("async", asyncio.run(main()) is dev)
for bad in ({**desc, "devgroup": "zzz"}, {**desc, "devtype": ""}):
    try:
        t.cf_create_device(bad)
    except ValueError as e:
        print("ValueError:", e)
"""


def test_cf_create_device(tmp_path: Path) -> None:
    """In a child process: building ophyd devices starts the control layer's threads."""
    pytest.importorskip("infn_ophyd_hal")
    import subprocess
    import sys

    from conftest import EpicsPorts

    out = subprocess.run(
        [sys.executable, "-c", CREATE_DEVICE],
        env=EpicsPorts.allocate().env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "built OphydMotorSim M1 True" in out.stdout and "async True" in out.stdout, out.stdout
    assert "unknown devgroup 'zzz' (known: diag, io, mag, mot, vac)" in out.stdout
    assert "the description lacks devtype (prefix 'TNOPE:MOT:M1')" in out.stdout
