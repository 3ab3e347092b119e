"""System tests of what operators and scripts observe: per-plugin logs, the SSE
event stream, Prometheus metrics, the loop watchdog, the API token and the API page.

Two ``iocmng-server`` processes serve the whole module:

* ``obs`` (``IOCMNG_API_TOKEN`` set, reads open) loads, from its service
  config, a chatty task (logs at INFO and DEBUG every cycle), a task that
  fails every cycle, a task whose ``async def execute`` blocks the loop once
  with ``time.sleep``, and the diagnostics job. The test that reloads it
  (an add) runs last.
* ``locked`` (token and ``IOCMNG_READ_AUTH=true``) holds one job: reads need
  the token there too, except ``/api/v1/health``.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aioca import caput
from conftest import EXAMPLES, wait_for
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Reply, Server, ServerFactory, acall

pytestmark = pytest.mark.timeout(120)

PROBLEM = "application/problem+json"
TOKEN = "s3cret"
WRONG = "not-the-token-x9"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOG_SECONDS = 1.5

TASK_CONFIG = "parameters:\n  mode: continuous\n  interval: {interval}\n"

CHATTY = """
from iocmng import TaskBase


class Chatty(TaskBase):
    def initialize(self):
        self.n = 0

    async def execute(self):
        self.n += 1
        self.logger.info("cycle %d", self.n)
        self.logger.debug("debug detail %d", self.n)

    def cleanup(self):
        pass
"""

FAILING = """
from iocmng import TaskBase


class Failing(TaskBase):
    def initialize(self):
        pass

    def execute(self):
        raise RuntimeError("boom")

    def cleanup(self):
        pass
"""

HOG = f"""
import time

from iocmng import TaskBase


class Hog(TaskBase):
    def initialize(self):
        self.n = 0

    async def execute(self):
        self.n += 1
        if self.n == 3:
            time.sleep({HOG_SECONDS})  # HOG LINE: blocks the event loop
        self.set_message(f"cycle {{self.n}}")

    def cleanup(self):
        pass
"""


def plugin_dir(root: Path, name: str, code: str, interval: float) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / f"{name}.py").write_text(textwrap.dedent(code))
    (d / "config.yaml").write_text(TASK_CONFIG.format(interval=interval))
    return d


def hog_line(path: Path) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if "HOG LINE" in line)


# -- HTTP ---------------------------------------------------------------------------------------
async def metrics(srv: Server, auth: bool = False) -> dict[str, Any]:
    """Scrape /metrics; return {family name: family} (parsed by prometheus_client)."""
    r = await acall("GET", f"{srv.root}/metrics", headers=AUTH if auth else None)
    assert r.status == 200, r.text
    assert r.content_type == "text/plain"
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def sample(families: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    """The value of the one sample of ``family`` (sample ``name``) with ``labels``."""
    found = [
        s.value
        for s in families[family].samples
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, f"{family} {name} {labels}: {found} in {families[family].samples}"
    return found[0]


async def info(srv: Server, name: str) -> dict[str, Any]:
    r = await acall("GET", f"{srv.url}/plugins/{name}", headers=AUTH)
    assert r.status == 200, r.text
    return r.body


async def wait_generation(srv: Server, generation: int) -> None:
    await asyncio.to_thread(srv.wait_generation, generation, 45, False)


# -- SSE --------------------------------------------------------------------------------------
class EventStream:
    """A client of GET /api/v1/events that parses the text/event-stream frames."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []
        self.seen: list[dict[str, Any]] = []

    async def next(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next event (its ``event:`` name checked against its data), None at the end."""
        name, data = None, []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif line == "" and data:
                    event = json.loads("\n".join(data))
                    assert event["type"] == name, (name, event)
                    self.seen.append(event)
                    return event

    async def until(self, kind: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        """Skip events until one of ``kind`` whose fields equal ``match``."""
        deadline = time.monotonic() + timeout
        while True:
            event = await self.next(max(0.1, deadline - time.monotonic()))
            assert event is not None, f"the stream ended before a {kind} {match} event: {self.seen}"
            if _matches(event, kind, match):
                return event

    async def saw(
        self, mark: int, kind: str, timeout: float = 15.0, **match: Any
    ) -> dict[str, Any]:
        """An event of ``kind`` matching ``match`` received after ``mark`` (an index
        into ``seen``), already or within ``timeout``: for events whose order is free."""
        for event in self.seen[mark:]:
            if _matches(event, kind, match):
                return event
        return await self.until(kind, timeout, **match)

    async def wait_subscribed(self) -> None:
        """The server's first bytes (a comment) are sent once the subscription is registered."""
        async with asyncio.timeout(10):
            while not self.comments:
                raw = await self.resp.content.readline()
                assert raw, "the stream ended before its first comment"
                if raw.startswith(b":"):
                    self.comments.append(raw.decode()[1:].strip())


def _matches(event: dict[str, Any], kind: str, match: dict[str, Any]) -> bool:
    return event["type"] == kind and all(event.get(k) == v for k, v in match.items())


async def open_events(
    http: aiohttp.ClientSession, srv: Server, headers: dict[str, str] | None = None
) -> tuple[aiohttp.ClientResponse, EventStream]:
    resp = await http.get(
        f"{srv.url}/events",
        headers=headers or {},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=30),
    )
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/event-stream"
    stream = EventStream(resp)
    await stream.wait_subscribed()
    return resp, stream


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for the event streams (requests go through acall)."""
    async with aiohttp.ClientSession() as session:
        yield session


@dataclass
class Obs:
    srv: Server
    plugins: Path
    hog_file: Path


def start_server(
    factory: ServerFactory, name: str, plugins: list[dict[str, Any]], **env: str
) -> Server:
    config = factory.root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"plugins": plugins}))
    srv = factory(name, env={"IOCMNG_CONFIG": str(config), **env}, token=TOKEN, start=False)
    h = srv.start()
    assert h["plugins"]["total"] == len(plugins) and not h["boot_errors"], h
    return srv


def stop_server(srv: Server) -> None:
    assert srv.alive(), f"the server died:\n{srv.log()[-4000:]}"
    rc = srv.stop(signal.SIGTERM)
    log = srv.log()
    assert rc == 0, log[-4000:]
    assert TOKEN not in log and WRONG not in log, "a token reached the server log"
    assert "internal error" not in log.lower(), log[-4000:]


@pytest.fixture(scope="module")
def obs(module_server_factory: ServerFactory) -> Iterator[Obs]:
    plugins = module_server_factory.root / "plugins"
    dirs = {
        "chatty": plugin_dir(plugins, "chatty", CHATTY, 0.2),
        "failing": plugin_dir(plugins, "failing", FAILING, 0.3),
        "hog": plugin_dir(plugins, "hog", HOG, 0.3),
    }
    srv = start_server(
        module_server_factory,
        "obs",
        [{"name": n, "local_path": str(d)} for n, d in dirs.items()]
        + [{"name": "diag", "local_path": str(EXAMPLES / "diagnostics_job")}],
    )
    yield Obs(srv, plugins, dirs["hog"] / "hog.py")
    stop_server(srv)  # (the factory kills it if this fails)


@pytest.fixture(scope="module")
def locked(module_server_factory: ServerFactory) -> Iterator[Server]:
    srv = start_server(
        module_server_factory,
        "locked",
        [{"name": "diag", "local_path": str(EXAMPLES / "diagnostics_job")}],
        IOCMNG_READ_AUTH="true",
    )
    yield srv
    stop_server(srv)


def assert_problem(r: Reply, status: int, detail: str = "") -> None:
    assert r.status == status, r.text
    assert r.content_type == PROBLEM, r.content_type
    assert r.body["status"] == status and r.body["title"], r.body
    assert re.search(detail, r.body["detail"], re.IGNORECASE), r.body["detail"]


# ================================================================================================
# Logs
# ================================================================================================
async def test_plugin_logs(obs: Obs) -> None:
    srv = obs.srv

    async def records(query: str = "", coll: str = "tasks") -> list[dict[str, Any]]:
        r = await acall("GET", f"{srv.url}/{coll}/chatty/logs{query}")
        assert r.status == 200, r.text
        assert r.body["plugin"] == "chatty"
        return r.body["records"]

    got = await wait_for(
        lambda: _enough(records(), 10), timeout=15, what="10 log records of chatty"
    )
    messages = [r["message"] for r in got]
    assert any(re.fullmatch(r"cycle \d+", m) for m in messages), messages
    assert any(re.fullmatch(r"debug detail \d+", m) for m in messages), messages
    levels = {r["level"] for r in got}
    assert {"INFO", "DEBUG"} <= levels, levels
    assert all(r["logger"] == "iocmng.plugin.chatty" for r in got)
    assert [r["time"] for r in got] == sorted(r["time"] for r in got)
    # the DEBUG records are kept for the API, but the service logs at INFO
    assert "debug detail" not in srv.log()
    assert re.search(r"iocmng\.plugin\.chatty: cycle \d+", srv.log())

    # /plugins/... serves the same buffer; the wrong kind is a 404
    assert (await records(coll="plugins"))[:5] == got[:5]
    r = await acall("GET", f"{srv.url}/jobs/chatty/logs")
    assert_problem(r, 404, "chatty")

    # since: only records strictly newer
    cut = got[len(got) // 2]["time"]
    newer = await records(f"?since={cut}")
    assert newer and all(r["time"] > cut for r in newer)
    assert newer[0]["time"] == min(r["time"] for r in got if r["time"] > cut)
    assert await records(f"?since={time.time() + 3600}") == []

    # limit: the newest N
    last3 = await records("?limit=3")
    assert len(last3) == 3
    everything = await records()
    assert last3[-1]["time"] <= everything[-1]["time"] and last3[0]["time"] >= got[-1]["time"] - 60
    assert await records("?limit=0") == []
    both = await records(f"?since={cut}&limit=2")
    assert len(both) == 2 and all(r["time"] > cut for r in both)

    # a plugin's error lands in its own buffer (with the exception)
    r = await acall("GET", f"{srv.url}/tasks/failing/logs")
    assert any(
        x["level"] == "ERROR" and "RuntimeError: boom" in x["message"] for x in r.body["records"]
    ), r.body


async def _enough(coro: Any, n: int) -> Any:
    items = await coro
    return items if len(items) >= n else None


@pytest.mark.parametrize(
    "path, status, detail",
    [
        ("/tasks/nosuch/logs", 404, "nosuch"),
        ("/plugins/nosuch/logs", 404, "nosuch"),
        ("/tasks/chatty/logs?since=abc", 400, "since"),
        ("/tasks/chatty/logs?since=nan", 400, "since"),
        ("/tasks/chatty/logs?limit=abc", 400, "limit"),
        ("/tasks/chatty/logs?limit=1.5", 400, "limit"),
        ("/tasks/chatty/logs?limit=-1", 400, "limit"),
        ("/tasks/chatty/logs?limit=10001", 400, "limit"),
        ("/tasks/Bad!Name/logs", 400, "name"),
    ],
)
async def test_plugin_logs_bad_input(obs: Obs, path: str, status: int, detail: str) -> None:
    r = await acall("GET", obs.srv.url + path)
    assert_problem(r, status, detail)


# ================================================================================================
# Events
# ================================================================================================
async def test_events_enable_and_job(obs: Obs, http: aiohttp.ClientSession) -> None:
    srv = obs.srv
    resp, stream = await open_events(http, srv)
    try:
        assert re.fullmatch(r"iocmng generation \d+", stream.comments[0]), stream.comments
        # ENABLE over Channel Access: an `enable` event and the state change
        mark = len(stream.seen)
        await caput(srv.pv("chatty", "ENABLE"), 0, wait=True, timeout=10)
        ev = await stream.saw(mark, "enable", plugin="chatty")
        assert ev["enabled"] is False and ev["time"] > 0
        await stream.saw(mark, "state", plugin="chatty", state="paused")
        assert (await info(srv, "chatty"))["state"] == "paused"
        mark = len(stream.seen)
        await caput(srv.pv("chatty", "ENABLE"), 1, wait=True, timeout=10)
        await stream.saw(mark, "enable", plugin="chatty", enabled=True)
        await stream.saw(mark, "state", plugin="chatty", state="running")

        # a job run: `state` running/idle and the `job` event with its result
        r = await acall("POST", f"{srv.url}/jobs/diag/run", headers=AUTH)
        assert r.status == 200 and r.body["success"] is True, r.text
        mark = len(stream.seen)
        ev = await stream.until("job", plugin="diag")
        await stream.saw(mark, "state", plugin="diag", state="running")
        await stream.saw(mark, "state", plugin="diag", state="idle")
        assert ev["success"] is True and ev["duration_s"] >= 0
        r = await acall(
            "POST",
            f"{srv.url}/jobs/diag/run",
            body={"parameters": {"fail": True}},
            headers=AUTH,
        )
        assert r.status == 200 and r.body["success"] is False, r.text
        ev = await stream.until("job", plugin="diag")
        assert ev["success"] is False

        # the failing task's errors are events too
        ev = await stream.until("error", plugin="failing")
        assert "RuntimeError: boom" in ev["error"]
    finally:
        resp.close()


async def test_events_client_disconnects(locked: Server, http: aiohttp.ClientSession) -> None:
    """A client that goes away mid-stream: no error logged, the subscription is released."""
    srv = locked
    r = await acall("GET", f"{srv.url}/events")
    assert_problem(r, 401, "Bearer")  # read auth covers the stream
    log_before = len(srv.log())
    resp, stream = await open_events(http, srv, AUTH)
    m = await metrics(srv, auth=True)
    assert sample(m, "iocmng_event_stream_clients") == 1
    # one event, then the client vanishes (TCP closed) while the server waits for more
    r = await acall("POST", f"{srv.url}/jobs/diag/run", headers=AUTH)
    assert r.status == 200, r.text
    await stream.until("job", plugin="diag")
    resp.connection.transport.abort()  # type: ignore[union-attr]
    resp.close()

    async def released() -> bool:
        return sample(await metrics(srv, auth=True), "iocmng_event_stream_clients") == 0

    await wait_for(released, timeout=10, interval=0.2, what="the SSE subscriber to be released")
    tail = srv.log()[log_before:]
    assert "Traceback" not in tail and " ERROR " not in tail, tail
    # and a new client still gets events
    resp, stream = await open_events(http, srv, AUTH)
    try:
        r = await acall("POST", f"{srv.url}/jobs/diag/run", headers=AUTH)
        await stream.until("job", plugin="diag")
    finally:
        resp.close()


# ================================================================================================
# Metrics
# ================================================================================================
async def test_metrics(obs: Obs) -> None:
    srv = obs.srv
    m1 = await metrics(srv)
    cycles1 = sample(m1, "iocmng_plugin_cycles", "iocmng_plugin_cycles_total", plugin="chatty")
    runs_ok = sample(
        m1, "iocmng_job_runs", "iocmng_job_runs_total", plugin="diag", result="success"
    )
    runs_bad = sample(
        m1, "iocmng_job_runs", "iocmng_job_runs_total", plugin="diag", result="failure"
    )

    r = await acall("POST", f"{srv.url}/jobs/diag/run", headers=AUTH)
    assert r.status == 200 and r.body["success"] is True, r.text
    r = await acall(
        "POST",
        f"{srv.url}/jobs/diag/run",
        body={"parameters": {"fail": True}},
        headers=AUTH,
    )
    assert r.status == 200 and r.body["success"] is False, r.text
    r = await acall(
        "POST",
        f"{srv.url}/jobs/diag/run",
        body={"parameters": {"fail": True}},
        headers=AUTH,
    )

    async def chatty_cycled() -> dict[str, Any] | None:  # a few cycles of chatty (interval 0.2)
        m = await metrics(srv)
        cycles = sample(m, "iocmng_plugin_cycles", "iocmng_plugin_cycles_total", plugin="chatty")
        return m if cycles > cycles1 else None

    m2 = await wait_for(chatty_cycled, timeout=10, interval=0.2, what="chatty to cycle")

    # per-plugin cycles increase; errors are counted for the failing task only
    assert (
        sample(m2, "iocmng_plugin_cycles", "iocmng_plugin_cycles_total", plugin="chatty") > cycles1
    )
    assert sample(m2, "iocmng_plugin_errors", "iocmng_plugin_errors_total", plugin="failing") >= 1
    assert sample(m2, "iocmng_plugin_errors", "iocmng_plugin_errors_total", plugin="chatty") == 0
    assert sample(m2, "iocmng_plugin_cycles", "iocmng_plugin_cycles_total", plugin="failing") == 0
    # job runs by result
    assert (
        sample(m2, "iocmng_job_runs", "iocmng_job_runs_total", plugin="diag", result="success")
        == runs_ok + 1
    )
    assert (
        sample(m2, "iocmng_job_runs", "iocmng_job_runs_total", plugin="diag", result="failure")
        == runs_bad + 2
    )
    assert sample(
        m2, "iocmng_job_duration_seconds", "iocmng_job_duration_seconds_count", plugin="diag"
    ) == (runs_ok + runs_bad + 3)
    # the cycle duration histogram: cumulative buckets ending in +Inf == count
    buckets = [
        s
        for s in m2["iocmng_plugin_cycle_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["plugin"] == "chatty"
    ]
    assert buckets[-1].labels["le"] == "+Inf"
    assert [b.value for b in buckets] == sorted(b.value for b in buckets)
    count = sample(
        m2,
        "iocmng_plugin_cycle_duration_seconds",
        "iocmng_plugin_cycle_duration_seconds_count",
        plugin="chatty",
    )
    assert buckets[-1].value == count > 0
    # state gauge: one state per plugin
    assert sample(m2, "iocmng_plugin_state", plugin="chatty", kind="task", state="running") == 1
    assert sample(m2, "iocmng_plugin_state", plugin="diag", kind="job", state="idle") == 1
    # the generation gauge is the one /health reports
    r = await acall("GET", f"{srv.url}/health")
    assert sample(m2, "iocmng_generation") == r.body["generation"]
    # the loop lag histogram is fed by the heartbeat
    assert m2["iocmng_loop_lag_seconds"].type == "histogram"
    assert sample(m2, "iocmng_loop_lag_seconds", "iocmng_loop_lag_seconds_count") > 0
    assert sample(m2, "iocmng_loop_lag_seconds", "iocmng_loop_lag_seconds_bucket", le="+Inf") > 0
    assert "iocmng_reloads" in m2 and "iocmng_uptime_seconds" in m2
    assert sample(m2, "iocmng_event_stream_clients") >= 0


# ================================================================================================
# The loop watchdog
# ================================================================================================
async def test_watchdog_names_the_hog(obs: Obs) -> None:
    srv = obs.srv

    async def blamed() -> dict[str, Any] | None:
        h = await info(srv, "hog")
        return h if h["last_error"] else None

    h = await wait_for(blamed, timeout=20, interval=0.2, what="the hog's last_error")
    line = hog_line(obs.hog_file)
    assert f"{obs.hog_file}:{line}" in h["last_error"], h["last_error"]
    assert "held the event loop" in h["last_error"]
    seconds = float(re.search(r"for ([\d.]+)s", h["last_error"]).group(1))
    assert HOG_SECONDS - 0.5 <= seconds <= HOG_SECONDS + 1.5, h["last_error"]

    m = await metrics(srv)
    assert (
        sample(m, "iocmng_plugin_loop_stalls", "iocmng_plugin_loop_stalls_total", plugin="hog") >= 1
    )
    assert (
        sample(m, "iocmng_plugin_loop_stalls", "iocmng_plugin_loop_stalls_total", plugin="chatty")
        == 0
    )
    assert sample(m, "iocmng_loop_stalls", "iocmng_loop_stalls_total") >= 1

    log = srv.log()
    m_log = re.search(r"event loop stalled for more than [\d.]+s by plugin hog at (\S+)", log)
    assert m_log, log[-3000:]
    assert m_log.group(1) == f"{obs.hog_file}:{line}"
    assert "loop thread stack:" in log and "time.sleep(" in log, log[-3000:]

    # the others kept running: chatty still turns and was not blamed; the hog recovered
    before = (await info(srv, "chatty"))["cycle_count"]

    async def turned() -> bool:
        return (await info(srv, "chatty"))["cycle_count"] >= before + 3

    await wait_for(turned, timeout=10, what="chatty to keep cycling")
    chatty = await info(srv, "chatty")
    assert chatty["state"] == "running" and chatty["last_error"] is None
    hog = await info(srv, "hog")
    assert hog["state"] == "running" and hog["cycle_count"] > 3


# ================================================================================================
# Auth
# ================================================================================================
async def test_auth_mutations(obs: Obs) -> None:
    srv = obs.srv
    registry = srv.data_dir / "registry.json"
    before = registry.read_bytes()
    body = {"name": "intruder", "local_path": str(obs.plugins / "chatty")}
    bad_headers: list[dict[str, str] | None] = [
        None,
        {"Authorization": f"Bearer {WRONG}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ]
    for headers in bad_headers:
        for method, path, json_body in [
            ("POST", "/tasks", body),
            ("POST", "/plugins", body),
            ("DELETE", "/tasks/chatty", None),
            ("DELETE", "/plugins/diag", None),
            ("POST", "/plugins/chatty/restart", None),
            ("POST", "/jobs/diag/run", None),
        ]:
            r = await acall(method, srv.url + path, body=json_body, headers=headers)
            assert_problem(r, 401, "Authorization: Bearer")
            assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
            assert TOKEN not in r.text
    assert registry.read_bytes() == before
    h = (await acall("GET", f"{srv.url}/health")).body
    assert h["pending_generation"] is None and h["plugins"]["total"] == 4
    assert (await info(srv, "diag"))["cycle_count"] >= 0

    # with the token: it works; reads stay open without it
    r = await acall("POST", f"{srv.url}/jobs/diag/run", headers=AUTH)
    assert r.status == 200 and r.body["success"] is True, r.text
    r = await acall(
        "POST", f"{srv.url}/jobs/diag/run", headers={"Authorization": f"bearer {TOKEN}"}
    )
    assert r.status == 200, r.text  # the scheme is case-insensitive
    for path in (
        "/tasks",
        "/plugins/chatty",
        "/health",
        "/tasks/chatty/logs",
        "/openapi.json",
        "/docs",
    ):
        r = await acall("GET", srv.url + path)
        assert r.status == 200, (path, r.text)
    r = await acall("GET", f"{srv.root}/metrics")
    assert r.status == 200


async def test_read_auth(locked: Server) -> None:
    srv = locked
    r = await acall("GET", f"{srv.url}/health")
    assert r.status == 200 and r.body["status"] == "ok"
    # the API's description stays open: a browser cannot send a token to open the page
    for path in ("/docs", "/openapi.json"):
        r = await acall("GET", f"{srv.url}{path}")
        assert r.status == 200, (path, r.text[:200])
    for url in (
        f"{srv.url}/plugins",
        f"{srv.url}/jobs/diag",
        f"{srv.url}/jobs/diag/logs",
        f"{srv.root}/metrics",
    ):
        for headers in (None, {"Authorization": f"Bearer {WRONG}"}):
            r = await acall("GET", url, headers=headers)
            assert_problem(r, 401, "Bearer")
        r = await acall("GET", url, headers=AUTH)
        assert r.status == 200, (url, r.text)

    # a mutation with the token works: the removal is committed and applied by a reload
    registry = srv.data_dir / "registry.json"
    before = registry.read_bytes()
    r = await acall("DELETE", f"{srv.url}/jobs/diag")
    assert_problem(r, 401)
    assert registry.read_bytes() == before
    r = await acall("DELETE", f"{srv.url}/jobs/diag", headers=AUTH)
    assert r.status == 200 and r.body["removed"] == "diag", r.text
    assert registry.read_bytes() != before
    await wait_generation(srv, r.body["generation"])
    r = await acall("GET", f"{srv.url}/plugins", headers=AUTH)
    assert r.body == {"plugins": [], "count": 0}


# ================================================================================================
# The API page
# ================================================================================================
async def test_api_page(obs: Obs) -> None:
    r = await acall("GET", f"{obs.srv.url}/docs")
    assert r.status == 200 and r.content_type == "text/html"
    assert "/api/v1/openapi.json" in r.text
    # served locally, nothing fetched from elsewhere (air-gapped control networks)
    assert "http://" not in r.text and "https://" not in r.text
    assert not re.search(r"""(src|href)=["']//""", r.text)

    r = await acall("GET", f"{obs.srv.url}/openapi.json")
    paths = r.body["paths"]
    for path in (
        "/api/v1/tasks/{name}/logs",
        "/api/v1/jobs/{name}/logs",
        "/api/v1/plugins/{name}/logs",
        "/api/v1/events",
        "/metrics",
        "/api/v1/tasks/{name}/trigger",
    ):
        assert path in paths, path
    logs = paths["/api/v1/plugins/{name}/logs"]["get"]
    assert {p["name"] for p in logs["parameters"]} == {"since", "limit"}
    assert "text/event-stream" in paths["/api/v1/events"]["get"]["responses"]["200"]["content"]
    assert "401" in paths["/api/v1/tasks"]["post"]["responses"]


# ================================================================================================
# A reload seen on the event stream (last: it starts a new generation of `obs`)
# ================================================================================================
async def test_events_reload(obs: Obs, http: aiohttp.ClientSession) -> None:
    srv = obs.srv
    late = obs.plugins / "late"
    late.mkdir()
    (late / "late.py").write_text(textwrap.dedent(CHATTY).replace("Chatty", "Late"))
    (late / "config.yaml").write_text(TASK_CONFIG.format(interval=1.0))

    resp, stream = await open_events(http, srv)
    try:
        r = await acall(
            "POST",
            f"{srv.url}/plugins",
            body={"name": "late", "local_path": str(late)},
            headers=AUTH,
        )
        assert r.status == 201, r.text
        generation = r.body["generation"]
        ev = await stream.until("added", plugin="late")
        assert ev["generation"] == generation
        ev = await stream.until("reload")
        assert ev["next_generation"] == generation and ev["generation"] < generation
        # the stream then ends cleanly (no error, no more events)
        rest = []
        while (event := await stream.next(15)) is not None:
            rest.append(event)
        assert rest == [], rest
        assert resp.content.at_eof()
    finally:
        resp.close()
    await wait_generation(srv, generation)
    assert (await info(srv, "late"))["state"] == "running"
    # a new generation serves new streams
    resp, stream = await open_events(http, srv)
    try:
        assert stream.comments[0] == f"iocmng generation {generation}"
    finally:
        resp.close()
