"""EPICS access security of the service's own records (issue 14, item 6, CA and PVA).

``DISP=1`` alone never made a record read-only: EPICS lets a client write
``.DISP`` itself, so ``caput P:X:STATUS.DISP 0`` then ``caput P:X:STATUS 4``
forged an ERROR (MAJOR) status, and every field of an input (DESC, SCAN,
FLNK...) was writable. The bridge now loads an access security file before
iocInit (iocmng/epics/access_security.py): outputs, STATUS, MESSAGE, CYCLE_COUNT
and every field but VAL are read-only to CA and PVA clients; an input's and
ENABLE's / RUN's VAL stay writable.

A real ``iocmng run`` (sync_monitor: inputs and outputs; triggered_scan: RUN),
driven with aioca and p4p over loopback only (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aioca import CANothing, caget, cainfo, caput
from conftest import EXAMPLES, Runner, pva_context, start_runner, stop_and_check, wait_for
from epicscorelibs.ca.cadef import CAException
from p4p.client.asyncio import RemoteError

from .conftest import ServerFactory

pytestmark = pytest.mark.timeout(120)
SYNC, SCAN = "sync_monitor", "triggered_scan"

#: (PV of sync_monitor, a value a client would forge): every put must be refused.
REFUSED_VALUES = [
    ("STATUS", 4),
    ("READING", 99.0),
    ("ALARM", 1),
    ("CYCLE_COUNT", 0),
    ("MESSAGE", "forged"),
    ("LAST_INPUT", "forged"),
]
#: Fields of sync_monitor's records: refused, and each keeps its value.
REFUSED_FIELDS = [
    ("STATUS.DISP", 0),
    ("STATUS.DESC", "forged"),
    ("READING.DISP", 0),
    ("SETPOINT.DESC", "forged"),
    ("SETPOINT.SCAN", 1),
    ("SETPOINT.FLNK", "forged"),
    ("SETPOINT.DISP", 1),
    ("SETPOINT.PROC", 1),
    ("SETPOINT.ASG", ""),
    ("SETPOINT.DRVH", 1e9),
    ("ENABLE.DESC", "forged"),
]


@pytest.fixture(scope="module")
def ioc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runner, Path]]:
    """The runner, and the TMPDIR it was started with (the ACF file must not stay there)."""
    tmp = tmp_path_factory.mktemp("tmpdir")
    with pytest.MonkeyPatch.context() as mp:
        # the runner's environment is this process's (tests/conftest.py)
        mp.setenv("TMPDIR", str(tmp))
        runner = start_runner([EXAMPLES / SYNC, EXAMPLES / SCAN], tmp_path_factory.mktemp("ioc"))
    yield runner, tmp
    stop_and_check(runner)


@pytest.fixture
async def pva(ioc: tuple[Runner, Path]) -> Any:
    ctx = pva_context(ioc[0].ports)
    yield ctx
    ctx.close()


async def put(protocol: str, pva: Any, pv: str, value: Any) -> None:
    if protocol == "ca":
        await caput(pv, value, wait=True, timeout=5)
    else:
        await asyncio.wait_for(pva.put(pv, value), 5)


async def refused(protocol: str, pva: Any, pv: str, value: Any) -> None:
    """The put fails; over CA the channel also reports no write access (what DISP never did), so
    libca refuses the put itself (CAException "Write access denied")."""
    if protocol == "ca":
        info = await cainfo(pv, timeout=5)
        assert info.read and not info.write, (
            f"CA access rights of {pv}: read={info.read} write={info.write}"
        )
        with pytest.raises((CAException, CANothing)) as caught:
            await put(protocol, pva, pv, value)
        assert not isinstance(caught.value, CANothing) or not caught.value.ok, (
            f"CA put to {pv} was accepted"
        )
    else:
        with pytest.raises(RemoteError):
            await put(protocol, pva, pv, value)


@pytest.mark.parametrize("protocol", ["ca", "pva"])
async def test_disp_cannot_be_cleared_to_forge_a_status(
    ioc: tuple[Runner, Path], pva: Any, protocol: str
) -> None:
    runner = ioc[0]
    status = runner.pv(SYNC, "STATUS")
    await refused(protocol, pva, f"{status}.DISP", 0)
    await refused(protocol, pva, status, 4)
    assert await caget(f"{status}.DISP", timeout=5) == 1
    assert await caget(status, datatype=str, timeout=5) == "RUN"


@pytest.mark.parametrize("protocol", ["ca", "pva"])
async def test_outputs_and_service_records_refuse_puts(
    ioc: tuple[Runner, Path], pva: Any, protocol: str
) -> None:
    runner = ioc[0]
    for short, value in REFUSED_VALUES:
        await refused(protocol, pva, runner.pv(SYNC, short), value)
    assert await caget(runner.pv(SYNC, "MESSAGE"), timeout=5) != "forged"


@pytest.mark.parametrize("protocol", ["ca", "pva"])
async def test_fields_other_than_val_refuse_puts(
    ioc: tuple[Runner, Path], pva: Any, protocol: str
) -> None:
    runner = ioc[0]
    for short, value in REFUSED_FIELDS:
        pv = runner.pv(SYNC, short)
        before = await caget(pv, datatype=str, timeout=5)
        await refused(protocol, pva, pv, value)
        assert await caget(pv, datatype=str, timeout=5) == before, pv


@pytest.mark.parametrize("protocol", ["ca", "pva"])
async def test_inputs_enable_and_run_stay_writable(
    ioc: tuple[Runner, Path], pva: Any, protocol: str
) -> None:
    runner = ioc[0]
    setpoint, enable = runner.pv(SYNC, "SETPOINT"), runner.pv(SYNC, "ENABLE")
    for pv, value in ((setpoint, 61.5), (f"{setpoint}.VAL", 62.5)):
        await put(protocol, pva, pv, value)
        assert await caget(setpoint, timeout=5) == value
    await put(protocol, pva, enable, 0)
    assert await caget(enable, timeout=5) == 0
    await put(protocol, pva, enable, 1)
    assert await caget(enable, timeout=5) == 1
    scans = await caget(runner.pv(SCAN, "SCANS"), timeout=5)
    await put(protocol, pva, runner.pv(SCAN, "RUN"), 1)
    if protocol == "ca":  # a CA put-callback to RUN completes when the cycle ends
        assert await caget(runner.pv(SCAN, "SCANS"), timeout=5) == scans + 1
    # the service's own updates are below access security: the task keeps counting
    count_pv = runner.pv(SYNC, "CYCLE_COUNT")
    count = await caget(count_pv, timeout=5)

    async def counting() -> bool:
        return await caget(count_pv, timeout=5) > count

    await wait_for(counting, what="CYCLE_COUNT to go on counting")


def test_the_access_security_file_is_not_left_behind(ioc: tuple[Runner, Path]) -> None:
    runner, tmp = ioc
    assert runner.alive()
    assert list(tmp.glob("*.acf")) == []


#: A site's ACF (IOCMNG_ACF): the service's inputs writable by the users of one UAG only.
SITE_ACF = """
# site rules: only operators write (hosts could be named with HAG the same way)
UAG(operators) {{{user}}}
ASG(DEFAULT) {{
    RULE(1, READ)
}}
ASG(WRITABLE) {{
    RULE(1, READ)
    RULE(0, WRITE) {{
        UAG(operators)
    }}
}}
"""


@pytest.mark.parametrize("operator", [True, False], ids=["operator", "someone-else"])
async def test_a_site_acf_decides_who_writes(
    server_factory: ServerFactory, tmp_path: Path, operator: bool
) -> None:
    """IOCMNG_ACF: the site's file replaces the built-in one (CA and PVA check the client's
    user name, libca's and p4p's own: this process's account)."""
    me = pwd.getpwuid(os.getuid()).pw_name
    acf = tmp_path / "site.acf"
    acf.write_text(SITE_ACF.format(user=me if operator else f"not-{me}"))
    srv = server_factory(env={"IOCMNG_ACF": str(acf)}, demo=True)
    setpoint = srv.pv(SYNC, "SETPOINT")
    assert await caget(setpoint, timeout=20) == 50.0
    ctx = pva_context(srv.ports)
    try:
        if operator:
            await put("ca", ctx, setpoint, 41.0)
            await put("pva", ctx, setpoint, 42.0)
            assert await caget(setpoint, timeout=5) == 42.0
        else:
            await refused("ca", ctx, setpoint, 41.0)
            await refused("pva", ctx, setpoint, 42.0)
            assert await caget(setpoint, timeout=5) == 50.0
        # the read-only records stay read-only for everyone
        await refused("ca", ctx, srv.pv(SYNC, "STATUS"), 4)
        await refused("pva", ctx, srv.pv(SYNC, "READING"), 99.0)
    finally:
        ctx.close()


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("ASG(DEFAULT) {\n    RULE(1, READ)\n}\n", "defines no ASG(WRITABLE)"),
        ("ASG(DEFAULT) {\n    RULE(1, READ)\nASG(WRITABLE) {\n", "syntax error at line 3"),
    ],
    ids=["a-group-missing", "a-syntax-error"],
)
def test_a_site_acf_that_cannot_serve_stops_the_start(
    server_factory: ServerFactory, tmp_path: Path, text: str, said: str
) -> None:
    acf = tmp_path / "site.acf"
    acf.write_text(text)
    srv = server_factory(env={"IOCMNG_ACF": str(acf)}, start=False)
    with pytest.raises(pytest.fail.Exception, match="exited with 2"):
        srv.start(timeout=30)
    log = srv.log()
    assert "invalid setting: IOCMNG_ACF=" in log and said in log, log
    assert "Traceback" not in log, log
