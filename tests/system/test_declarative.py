"""Declarative plugins and links (issue 8, items 1-4 and 8) against a separate soft IOC.

A pythonSoftIOC subprocess (:mod:`external_ioc`) serves the "external" PVs;
the iocmng server links to them over CA and PVA. The reference's README
interlock (``from iocmng import DeclarativeTask`` and its ``arguments:`` /
links / rules / latch config, copied verbatim) is added over REST and driven
by writing the external PVs with aioca: the latch holds, CLEAR releases it,
``alarm_on`` raises MAJOR. A link to an IOC that is down leaves the plugin
running with CONN_INP 0 and its dependent outputs in LINK/INVALID alarm, until
the IOC comes up. A reactive task with code gets ``on_input_changed`` and
writes an external PV with ``link_put``. Bad configs are 4xx naming the rule
or field, leaving nothing behind. ``iocmng-run`` runs the same files unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    REFERENCE_2_7_9,
    REPO,
    EpicsPorts,
    _purge_ca_channels,
    pva_context,
    wait_for,
    wait_for_sync,
)

from .conftest import Server, ServerFactory, call, make_repo
from .external_ioc import ExternalIoc, merge_link_env

pytestmark = pytest.mark.timeout(180)

#: iocmng 2.7.9's README, "Create a Declarative Task (Zero Code)", verbatim (tests/reference_2_7_9).
REF_PY = (REFERENCE_2_7_9 / "interlock" / "my_interlock.py").read_text()
REF_CONFIG = (REFERENCE_2_7_9 / "interlock" / "config.yaml").read_text()

LEVEL_PY = """from iocmng import TaskBase


class Level(TaskBase):
    def initialize(self):
        pass

    def execute(self):
        pass

    def cleanup(self):
        pass

    async def on_input_changed(self, name, value, old):
        self.set_pv("LAST", f"{name} {old:g}->{value:g}")
        if value == 42:
            try:
                self.link_put("valve", 0, timeout=-1)
            except ValueError:
                self.set_pv("LAST", "timeout -1 refused")
        elif value > 50:
            await self.link_put("valve", 0, timeout=2.0)  # 2.7.9's signature
        elif value < 5:
            self.set_pv("valve", 1)  # a wired output: writes its external PV too
"""
LEVEL_CONFIG = """parameters: {mode: reactive}
arguments:
  inputs:
    level: {type: float, link: "EXT:LEVEL", trigger: true}
  outputs:
    valve: {type: bool, link: "pva://EXT:VALVE"}
    LAST: {type: string}
    HIGH: {type: bool}
rule_defaults: {HIGH: 0}
rules:
  - {id: TOO_HIGH, condition: "level > 80", outputs: {HIGH: 1}}
"""

WATCH_CONFIG = """parameters: {mode: continuous, interval: 0.2}
pvs:
  inputs:
    x: {type: float, link: "pva://LATE:X"}
  outputs:
    y: {type: float}
    z: {type: float}
    SYS_CONN: {type: string}
transforms:
  - {output: y, expression: "x * 2"}
  - {output: z, expression: "interval * 10"}
"""


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalIoc]:
    ioc = ExternalIoc(
        tmp_path_factory.mktemp("ext"),
        {
            "DEVICE:TEMP": ("ao", 20.0),
            "DEVICE:PRESSURE": ("ao", 1.0),
            "EXT:LEVEL": ("ao", 0.0),
            "EXT:VALVE": ("bo", 1),
        },
    )
    ioc.start()
    yield ioc
    ioc.stop()


@pytest.fixture(scope="module")
def late(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalIoc]:
    """An IOC that is down when the plugin starts (its ports are known to the server from the start)."""
    ioc = ExternalIoc(tmp_path_factory.mktemp("late"), {"LATE:X": ("ao", 1.5)})
    yield ioc
    ioc.stop()


@pytest.fixture(scope="module")
def srv(
    ext: ExternalIoc, late: ExternalIoc, module_server_factory: ServerFactory
) -> Iterator[Server]:
    server = module_server_factory(start=False)
    server.extra_env.update(merge_link_env(server.env(), ext, late))
    server.start()
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-4000:]


def add(srv: Server, body: dict[str, Any]) -> dict[str, Any]:
    status, out = call("POST", f"{srv.url}/plugins", body, timeout=120).checked()
    assert status in (200, 201, 202), out
    wait_for_sync(
        lambda: (
            call("GET", f"{srv.url}/plugins/{body['name']}", timeout=120).checked()[1].get("state")
            == "running"
        ),
        timeout=60,
        interval=0.2,
        what=f"{body['name']} running",
    )
    return out


async def get(pv: str, timeout: float = 5.0) -> Any:
    import aioca

    return await aioca.caget(pv, format=aioca.FORMAT_TIME, timeout=timeout)


async def put(pv: str, value: Any) -> None:
    import aioca

    await aioca.caput(pv, value, wait=True, timeout=5)


async def value_is(pv: str, expected: Any) -> bool:
    v = await get(pv)
    return (v.tolist() if getattr(v, "ndim", 0) else v) == expected


async def cycles_pass(srv: Server, name: str, n: int = 3) -> None:
    """Wait until the task completed ``n`` more cycles (a state that must *hold* is checked after)."""
    start = int(await get(srv.pv(name, "CYCLE_COUNT")))
    await wait_for(lambda: _count_above(srv.pv(name, "CYCLE_COUNT"), start + n), timeout=20)


async def _count_above(pv: str, n: int) -> bool:
    return int(await get(pv)) >= n


@pytest.mark.parametrize("provider", ["ca", "pva"])
async def test_reference_readme_interlock(srv: Server, tmp_path: Path, provider: str) -> None:
    """The reference's zero-code interlock, files unchanged; PVA chosen by a parameter override."""
    repo = make_repo(
        tmp_path / "repo",
        {"plugins/interlock/my_interlock.py": REF_PY, "plugins/interlock/config.yaml": REF_CONFIG},
    )
    name = f"ilock_{provider}"
    add(
        srv,
        {
            "name": name,
            "git_url": repo,
            "path": "plugins/interlock/",
            "parameters": {"pva": provider == "pva"},
        },
    )
    pv = lambda short: srv.pv(name, short)  # noqa: E731
    info = call("GET", f"{srv.url}/plugins/{name}/startup", timeout=120).checked()[1]
    assert {lk["name"]: lk["protocol"] for lk in info["links"]} == {
        "temp": provider,
        "pressure": provider,
    }
    assert [r["id"] for r in info["rules"]] == ["OVER_TEMP"]
    await wait_for(lambda: value_is(pv("CONN_INP"), [1, 1]), timeout=20, what="links connected")
    await wait_for(lambda: value_is(pv("temp"), 20.0), timeout=10)
    assert await value_is(pv("alarm"), 0)

    # pressure over 2.0 fires the rule: alarm latches, its record raises MAJOR (alarm_on)
    await put("DEVICE:PRESSURE", 3.0)
    await wait_for(lambda: value_is(pv("alarm"), 1), timeout=10, what="alarm set by the rule")
    alarm = await get(pv("alarm"))
    assert alarm.severity == 2, alarm.severity  # MAJOR
    await put("DEVICE:PRESSURE", 1.0)
    await wait_for(lambda: value_is(pv("pressure"), 1.0), timeout=10)
    await cycles_pass(srv, name)
    assert await value_is(pv("alarm"), 1), "the latch must hold after the condition clears"
    await put(pv("CLEAR"), 1)
    await wait_for(lambda: value_is(pv("alarm"), 0), timeout=10, what="CLEAR releases the latch")
    await wait_for(lambda: value_is(pv("CLEAR"), 0), timeout=10, what="CLEAR back to 0 (a pulse)")
    assert (await get(pv("alarm"))).severity == 0

    # the buffer's mean: 20, then 100 three times -> mean 80 (not > 80), a fourth -> 84
    for i in range(4):
        await put("DEVICE:TEMP", 100.0 + i * 1e-9)  # distinct values: each one is a monitor update
        await wait_for(lambda i=i: value_is(pv("temp"), 100.0 + i * 1e-9), timeout=10)
    await wait_for(
        lambda: _close(pv("avg_temp"), (20 + 400) / 5), timeout=10, what="avg_temp = mean(temp_buf)"
    )
    await wait_for(
        lambda: value_is(pv("alarm"), 1), timeout=10, what="alarm from mean(temp_buf) > 80"
    )
    await put("DEVICE:TEMP", 20.0)
    await put(pv("RESET"), 1)
    await wait_for(lambda: value_is(pv("MESSAGE"), "reset"), timeout=10)
    assert call("GET", f"{srv.url}/health", timeout=120).checked()[1]["status"] == "ok"


async def _close(pv: str, expected: float) -> bool:
    return abs(float(await get(pv)) - expected) < 1e-6


async def test_reactive_task_hook_and_link_put(
    srv: Server, tmp_path: Path, ext: ExternalIoc
) -> None:
    (tmp_path / "level").mkdir()
    (tmp_path / "level" / "level.py").write_text(LEVEL_PY)
    (tmp_path / "level" / "config.yaml").write_text(LEVEL_CONFIG)
    add(srv, {"name": "level", "local_path": str(tmp_path / "level")})
    pv = lambda short: srv.pv("level", short)  # noqa: E731
    await wait_for(lambda: value_is(pv("CONN_OUT"), 1), timeout=20, what="the PVA output link")
    await wait_for(lambda: value_is(pv("CONN_INP"), 1), timeout=20, what="the CA input link")
    await put("EXT:LEVEL", 10.0)
    await wait_for(
        lambda: value_is(pv("LAST"), "level 0->10"),
        timeout=10,
        what="on_input_changed(name, value, old)",
    )
    assert await value_is(pv("HIGH"), 0)
    assert await value_is("EXT:VALVE", 1)
    await put("EXT:LEVEL", 42.0)
    await wait_for(lambda: value_is(pv("LAST"), "timeout -1 refused"), timeout=10)
    assert await value_is("EXT:VALVE", 1)
    await put("EXT:LEVEL", 60.0)
    await wait_for(lambda: value_is("EXT:VALVE", 0), timeout=10, what="link_put over PVA")
    await wait_for(lambda: value_is(pv("valve"), 0), timeout=10, what="the wired output's readback")
    await put("EXT:LEVEL", 90.0)
    await wait_for(
        lambda: value_is(pv("HIGH"), 1), timeout=10, what="the rule, evaluated on the change"
    )
    assert int(await get(pv("CYCLE_COUNT"))) >= 1  # reactive: one cycle per evaluation
    # PVA clients see the same records
    ctx = pva_context(srv.ports)
    try:
        assert (await ctx.get(pv("HIGH"))).raw.value.index == 1
    finally:
        ctx.close()
    await put("EXT:LEVEL", 1.0)
    await wait_for(lambda: value_is(pv("HIGH"), 0), timeout=10)
    await wait_for(lambda: value_is("EXT:VALVE", 1), timeout=10, what="set_pv on a wired output")
    await put("EXT:LEVEL", 0.0)


async def test_dead_link_then_ioc_comes_up(srv: Server, tmp_path: Path, late: ExternalIoc) -> None:
    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / "config.yaml").write_text(WATCH_CONFIG)
    add(srv, {"name": "watch", "local_path": str(tmp_path / "watch")})  # declarative: config only
    pv = lambda short: srv.pv("watch", short)  # noqa: E731
    await cycles_pass(srv, "watch")  # it runs with the link down
    assert await value_is(pv("CONN_INP"), [0]) or await value_is(pv("CONN_INP"), 0)
    y, z, conn = await get(pv("y")), await get(pv("z")), await get(pv("SYS_CONN"))
    assert (y.severity, y.status) == (3, 14), "an output computed from a dead link: INVALID, LINK"
    assert (z.severity, float(z)) == (0, 2.0), (
        "an output that does not read the link is not alarmed"
    )
    assert str(conn) == "DISCONNECTED: x" and conn.severity == 2
    assert call("GET", f"{srv.url}/health", timeout=120).checked()[1]["status"] == "ok"

    late.start()
    await wait_for(
        lambda: _close(pv("y"), 3.0), timeout=60, what="the link connecting when its IOC starts"
    )
    y = await get(pv("y"))
    assert (y.severity, y.status) == (0, 0)
    assert await value_is(pv("SYS_CONN"), "OK")
    late.stop()
    await wait_for(
        lambda: _alarm_is(pv("y"), 3), timeout=20, what="LINK/INVALID again when the IOC stops"
    )
    assert await value_is(pv("SYS_CONN"), "DISCONNECTED: x")


async def _alarm_is(pv: str, severity: int) -> bool:
    return (await get(pv)).severity == severity


BAD = [
    ("unknown-name", {"condition": "tmep > 3"}, r"rules\.R1\.condition.*unknown name 'tmep'"),
    ("attribute", {"condition": "temp.real > 1"}, r"rules\.R1\.condition.*attribute access"),
    ("dunder", {"condition": "__import__('os')"}, r"rules\.R1\.condition.*dunder"),
    ("lambda", {"condition": "(lambda: 1)()"}, r"rules\.R1\.condition"),
    (
        "comprehension",
        {"condition": "any_of([t > 1 for t in temp_buf])"},
        r"rules\.R1\.condition.*comprehension",
    ),
    ("huge", {"condition": "temp > 10 ** 10 ** 10"}, r"rules\.R1\.condition"),
    ("function", {"condition": "foo(temp) > 1"}, r"unknown function 'foo'"),
    ("syntax", {"condition": "temp >"}, r"rules\.R1\.condition.*syntax"),
    # iocmng's optional parameters are names only when set (as the runtime compiles them)
    (
        "unset-timeout",
        {"condition": "timeout > 1"},
        r"rules\.R1\.condition.*unknown name 'timeout'",
    ),
    (
        "undeclared-output",
        {"outputs": {"nope": 1}},
        r"rules\.R1\.outputs: 'nope' is not a declared output",
    ),
    ("actuator-not-wired", {"actuators": {"alarm": 1}}, r"'alarm' is not a wired PV"),
    ("latch-dir", {"_alarm": {"latch": True, "latch_dir": "up"}}, r"latch_dir"),
    ("alarm-on", {"_alarm": {"alarm_on": "CRITICAL"}}, r"alarm_on"),
    ("link-mode", {"_temp": {"link_mode": "monitr"}}, r"link_mode"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_declarative_config_is_refused(
    srv: Server, tmp_path: Path, case: tuple[str, dict[str, Any], str]
) -> None:
    import re

    _, change, pattern = case
    rule: dict[str, Any] = {"id": "R1", "condition": "temp > 1", "outputs": {"alarm": 1}}
    temp: dict[str, Any] = {"type": "float", "link": "DEVICE:TEMP", "buffer_size": 5}
    alarm: dict[str, Any] = {"type": "bool"}
    for key, value in change.items():
        {"_alarm": alarm, "_temp": temp}.get(key, rule).update(
            value if key.startswith("_") else {key: value}
        )
    config = {
        "parameters": {"mode": "continuous"},
        "arguments": {"inputs": {"temp": temp}, "outputs": {"alarm": alarm}},
        "rules": [rule],
    }
    repo = make_repo(tmp_path / "repo", {"config.yaml": json.dumps(config)})
    before = (
        sorted(p.name for p in (srv.data_dir / "repos").iterdir())
        if (srv.data_dir / "repos").is_dir()
        else []
    )
    status, problem = call(
        "POST", f"{srv.url}/plugins", {"name": "bad", "git_url": repo}, timeout=120
    ).checked()
    assert 400 <= status < 500, (status, problem)
    assert re.search(pattern, problem["detail"]), problem["detail"]
    assert call("GET", f"{srv.url}/plugins/bad", timeout=120).checked()[0] == 404
    after = (
        sorted(p.name for p in (srv.data_dir / "repos").iterdir())
        if (srv.data_dir / "repos").is_dir()
        else []
    )
    assert after == before, "a refused add leaves no clone behind"
    assert call("GET", f"{srv.url}/health", timeout=120).checked()[1]["status"] == "ok"


@pytest.fixture
def ref_run(tmp_path: Path, ext: ExternalIoc) -> Iterator[Path]:
    """``iocmng-run -m my_interlock --config config.yaml --prefix MY:IOC --name interlock``, as in its README."""
    (tmp_path / "my_interlock.py").write_text(REF_PY)
    (tmp_path / "config.yaml").write_text(REF_CONFIG)
    env = merge_link_env(EpicsPorts.allocate().env(), ext)
    env["PYTHONPATH"] = str(REPO)
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iocmng.runtime.run_alias",
                "-m",
                "my_interlock",
                "--config",
                "config.yaml",
                "--prefix",
                "MY:IOC",
                "--name",
                "interlock",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield log_path
    finally:
        _purge_ca_channels()  # the test's loop is closed: no disconnect callbacks into it
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()


async def test_iocmng_run_reference_command_line(ref_run: Path) -> None:
    await wait_for(
        lambda: value_is("MY:IOC:CONN_INP", [1, 1]), timeout=40, what="iocmng-run's links"
    )
    await put("DEVICE:PRESSURE", 5.0)
    await wait_for(lambda: value_is("MY:IOC:alarm", 1), timeout=10)
    await put("DEVICE:PRESSURE", 1.0)
    await put("MY:IOC:CLEAR", 1)
    await wait_for(lambda: value_is("MY:IOC:alarm", 0), timeout=10)


POLL_CONFIG = """prefix: {segment}
parameters: {{mode: triggered, version: 2.5}}
pvs:
  inputs:
    lvl: {{type: float, link: "EXT:LEVEL", link_mode: poll, poll_rate: 0.2}}
  outputs:
    double: {{type: float}}
    big: {{type: bool}}
transforms:
  - {{output: double, expression: "lvl * 2"}}
rules:
  - {{id: BIG, condition: "lvl > 30", outputs: {{big: 1}}}}
rule_defaults: {{big: 0}}
"""


async def test_prefix_segment_poll_link_and_triggered_rules(srv: Server, tmp_path: Path) -> None:
    """config.yaml ``prefix:`` names the PVs; a polled link; rules run on each RUN of a triggered task."""
    segment = "SEG" + srv.prefix[-4:]
    for name in ("polled", "clash"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(POLL_CONFIG.format(segment=segment))
    add(srv, {"name": "polled", "local_path": str(tmp_path / "polled")})
    base = f"{srv.prefix}:{segment}"
    assert call("GET", f"{srv.url}/plugins/polled", timeout=120).checked()[1]["pv_prefix"] == base
    assert await value_is(f"{base}:VERSION", "2.5")
    # the same segment again: its records would be another plugin's
    status, problem = call(
        "POST",
        f"{srv.url}/plugins",
        {"name": "clash", "local_path": str(tmp_path / "clash")},
        timeout=120,
    ).checked()
    assert status == 409 and f"{base}:" in problem["detail"] and "'polled'" in problem["detail"], (
        problem
    )
    assert call("GET", f"{srv.url}/plugins/clash", timeout=120).checked()[0] == 404

    await put("EXT:LEVEL", 42.0)
    await wait_for(
        lambda: value_is(f"{base}:lvl", 42.0), timeout=10, what="the polled link's mirror"
    )
    assert await value_is(f"{base}:double", 0.0), "a triggered task evaluates only when run"
    status, result = call("POST", f"{srv.url}/tasks/polled/trigger", timeout=120).checked()
    assert status == 200 and result["success"], result
    assert await value_is(f"{base}:double", 84.0)
    assert await value_is(f"{base}:big", 1)
    await put("EXT:LEVEL", 1.0)
    await wait_for(lambda: value_is(f"{base}:lvl", 1.0), timeout=10)
    await put(f"{base}:RUN", 1)  # a RUN from an operator does the same
    await wait_for(
        lambda: value_is(f"{base}:big", 0), timeout=10, what="rule_defaults on the next run"
    )
    assert await value_is(f"{base}:double", 2.0)


KELVIN_PY = """from iocmng import TaskBase


def kelvin(celsius):
    return celsius + 273.15


class Cryo(TaskBase):
    expression_functions = {"kelvin": kelvin}

    def initialize(self):
        pass

    def execute(self):
        pass

    def cleanup(self):
        pass
"""
KELVIN_CONFIG = """parameters: {mode: continuous, interval: 0.2}
pvs:
  inputs:
    celsius: {type: float, value: 20}
  outputs:
    k: {type: float}
transforms:
  - {output: k, expression: "kelvin(celsius)"}
"""


async def test_plugin_expression_functions(srv: Server, tmp_path: Path) -> None:
    """A plugin's own functions pass the add-time check (reported by the child import) and run."""
    (tmp_path / "cryo").mkdir()
    (tmp_path / "cryo" / "cryo.py").write_text(KELVIN_PY)
    (tmp_path / "cryo" / "config.yaml").write_text(KELVIN_CONFIG)
    out = add(srv, {"name": "cryo", "local_path": str(tmp_path / "cryo")})
    assert any(s["step"] == "logic" and s["ok"] for s in out["steps"]), out["steps"]
    await wait_for(lambda: _close(srv.pv("cryo", "k"), 293.15), timeout=10, what="kelvin(celsius)")
    await put(srv.pv("cryo", "celsius"), -273.15)
    await wait_for(
        lambda: _close(srv.pv("cryo", "k"), 0.0), timeout=10, what="the transform on the next cycle"
    )
