"""The PV gateway's pure logic: value checks, timeouts, the write pattern, JSON conversion."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from iocmng.api.gateway.pvs import PV_NAME_RE, Gateway, pv_name
from iocmng.epics.pvclient import coerce, plain
from iocmng.errors import BadRequest, IocmngError


def settings(**kw: object) -> SimpleNamespace:
    base = {
        "pv_provider": "ca",
        "pv_timeout": 5.0,
        "pv_max_timeout": 30.0,
        "pv_write_pattern": None,
        "pv_max_monitors": 100,
    }
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize(
    ("value", "kind", "count", "choices", "expected"),
    [
        (1.5, "double", 1, None, 1.5),
        ("2.5", "double", 1, None, 2.5),
        (3, "long", 1, None, 3),
        (3.0, "short", 1, None, 3),
        ([1, 2], "double", 8, None, [1.0, 2.0]),
        ("ON", "enum", 1, ["OFF", "ON"], 1),
        (0, "enum", 1, ["OFF", "ON"], 0),
        ("text", "string", 1, None, "text"),
        (True, "bool", 1, None, 1),
        (255, "uint8", 1, None, 255),
    ],
)
def test_coerce_accepts(
    value: object, kind: str, count: int, choices: list[str] | None, expected: object
) -> None:
    assert coerce("PV", value, kind, count, choices) == expected


@pytest.mark.parametrize(
    ("value", "kind", "count", "choices", "words"),
    [
        ("abc", "double", 1, None, "not a number"),
        (None, "double", 1, None, "not a number"),
        (True, "double", 1, None, "not a number"),
        (1.5, "long", 1, None, "not a whole number"),
        (1 << 40, "long", 1, None, "out of range"),
        (10**400, "double", 1, None, "too large"),
        ([1, 2, 3], "double", 2, None, "at most 2"),
        ([1, 2], "double", 1, None, "scalar"),
        ("MAYBE", "enum", 1, ["OFF", "ON"], "not a choice"),
        (2, "enum", 1, ["OFF", "ON"], "not a choice"),
        (5, "string", 1, None, "string"),
        ("x" * 40, "string", 1, None, "at most 39"),
        (256, "uint8", 1, None, "out of range"),
    ],
)
def test_coerce_refuses(
    value: object, kind: str, count: int, choices: list[str] | None, words: str
) -> None:
    with pytest.raises(BadRequest) as err:
        coerce("PV", value, kind, count, choices)
    assert words in err.value.detail and err.value.status == 400


def test_plain_json() -> None:
    assert plain(np.array([1.0, np.nan, 2.0])) == [1.0, None, 2.0]
    assert plain(np.float64(1.5)) == 1.5 and plain(float("inf")) is None


def test_timeout_bounds() -> None:
    gw = Gateway(settings(pv_max_timeout=10.0, pv_timeout=20.0), "P")
    assert gw.timeout(None) == 10.0  # the default never exceeds the maximum
    assert gw.timeout(2.0) == 2.0
    for bad in (0.0, -1.0, float("nan"), 11.0):
        with pytest.raises(BadRequest):
            gw.timeout(bad)
    with pytest.raises(BadRequest, match="IOCMNG_PV_MAX_TIMEOUT"):
        gw.timeout(11.0)


def test_write_pattern() -> None:
    own = Gateway(settings(), "BL01:IOCMNG")
    own.check_write("BL01:IOCMNG:TASK:SETPOINT")
    with pytest.raises(IocmngError) as err:
        own.check_write("SR:DCCT:CURRENT")
    assert err.value.status == 403 and "IOCMNG_PV_WRITE_PATTERN" in err.value.detail
    listed = Gateway(settings(pv_write_pattern="BL01:*:SP, BL02:MOT?:VAL"), "X")
    listed.check_write("BL01:A:SP")
    listed.check_write("BL02:MOT1:VAL")
    with pytest.raises(IocmngError):
        listed.check_write("X:A")
    with pytest.raises(IocmngError, match="none"):
        Gateway(settings(pv_write_pattern=""), "X").check_write("X:A")
    Gateway(settings(pv_write_pattern="*"), "X").check_write("ANY:PV")


def test_fields_only_when_a_pattern_names_them() -> None:
    """Issue 14, item 6: .DISP, .SCAN, .FLNK... are not writable through the gateway by default."""
    own = Gateway(settings(), "BL01:IOCMNG")
    own.check_write("BL01:IOCMNG:TASK:SETPOINT.VAL")
    for fld in ("DISP", "SCAN", "FLNK", "DESC", "disp"):
        with pytest.raises(IocmngError) as err:
            own.check_write(f"BL01:IOCMNG:TASK:STATUS.{fld}")
        assert err.value.status == 403 and "IOCMNG_PV_WRITE_PATTERN" in err.value.detail
    named = Gateway(settings(pv_write_pattern="BL01:*, BL02:MOT1.VELO"), "X")
    named.check_write("BL02:MOT1.VELO")
    with pytest.raises(IocmngError):
        named.check_write("BL01:A.SCAN")  # '*' alone does not name fields


def test_own_records_only_when_writable() -> None:
    from types import SimpleNamespace

    recs = SimpleNamespace(
        prefix="P:MON",
        records={"SETPOINT": 0, "STATUS": 0, "READING": 0, "ENABLE": 0},
        writable={"SETPOINT", "ENABLE"},
    )
    runtime = SimpleNamespace(handles={"mon": SimpleNamespace(name="mon", records=recs)})
    gw = Gateway(settings(), "P", runtime)
    gw.check_write("P:MON:SETPOINT")
    gw.check_write("P:MON:ENABLE")
    for short in ("STATUS", "READING"):
        with pytest.raises(IocmngError) as err:
            gw.check_write(f"P:MON:{short}")
        assert (
            err.value.status == 403
            and "read-only" in err.value.detail
            and "ENABLE, SETPOINT" in err.value.detail
        )
    gw.check_write("P:OTHER:X")  # not a record of ours: the pattern decides


def test_pv_names() -> None:
    assert pv_name("SR:DCCT:CURRENT.SEVR") == "SR:DCCT:CURRENT.SEVR"
    for bad in ("", "a b", "a/b", "é", "a\x00", "x" * 201, "{x}"):
        assert not PV_NAME_RE.match(bad)
        with pytest.raises(BadRequest):
            pv_name(bad)


def test_provider_choice() -> None:
    gw = Gateway(settings(pv_provider="pva"), "X")
    assert gw.client(None).provider == "pva" and gw.client("ca").provider == "ca"
    with pytest.raises(BadRequest):
        gw.client("http")
