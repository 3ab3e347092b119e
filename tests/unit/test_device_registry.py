"""Unit tests of the device registry: values.yaml validation and life without the extra."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from iocmng.epics.devices import Devices, plan


def test_plan_names_each_problem() -> None:
    values = {
        "beamline": "b",
        "namespace": "n",
        "epicsConfiguration": {
            "iocs": [
                {
                    "name": "m",
                    "devgroup": "mot",
                    "devtype": "sim",
                    "iocprefix": "P",
                    "iocroot": "R",
                    "devices": [{"name": "a"}, {"name": "b", "devtype": "other", "disable": True}],
                },
                {"name": "x", "devgroup": "io", "iocprefix": "X"},
                {"name": "plain", "iocprefix": "Q"},  # no devgroup: not a device IOC
                "junk",
            ]
        },
    }
    records, error = plan(values)
    assert error is None
    got = {r.name: (r.prefix, r.type, r.state, r.reason) for r in records}
    assert got["a"] == ("P:R:a", "sim", "pending", None)
    assert got["b"] == ("P:R:b", "other", "disabled", None)
    assert got["x"][2:] == ("failed", "IOC 'x': missing key 'devtype'")
    assert got["iocs[3]"][2:] == ("failed", "iocs[3]: not a mapping")
    assert "plain" not in got


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (None, "not a mapping (got NoneType)"),
        ({"beamline": "b"}, "missing key 'namespace'; missing key 'epicsConfiguration'"),
        (
            {"beamline": "b", "namespace": "n", "epicsConfiguration": {"iocs": 3}},
            "missing key 'epicsConfiguration.iocs' (a list)",
        ),
    ],
)
def test_plan_file_errors(values: object, message: str) -> None:
    assert plan(values) == ([], message)


def test_without_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No infn_ophyd_hal: every device failed with the reason, get() is None, nothing raises."""
    monkeypatch.setitem(sys.modules, "infn_ophyd_hal", None)
    monkeypatch.setenv("OPHYD_CONTROL_LAYER", "caproto")  # _import() sets it otherwise
    values = tmp_path / "values.yaml"
    values.write_text(
        "beamline: b\nnamespace: n\nepicsConfiguration:\n  iocs:\n"
        "    - {name: m1, devgroup: mot, devtype: sim, iocprefix: P}\n"
    )
    devices = Devices(values)
    devices.start()
    assert asyncio.run(devices.ready(10))
    assert devices.get("m1") is None and list(devices) == [] and bool(devices)
    assert "the ophyd extra is not installed" in (devices.error or "")
    (m1,) = devices.listing()["devices"]
    assert m1["state"] == "failed" and m1["reason"].startswith(
        "device 'm1': the ophyd extra is not installed"
    )
    devices.close()


def test_disabled_and_unset() -> None:
    assert Devices(Path("x"), enabled=False).listing()["reason"] == "IOCMNG_DISABLE_OPHYD=true"
    assert Devices(None).listing()["reason"] == "IOCMNG_BEAMLINE_CONFIG is not set"
