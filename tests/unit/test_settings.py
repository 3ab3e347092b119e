"""Service settings: each bad value names its variable; secrets are never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from iocmng.errors import SettingsError
from iocmng.settings import ServiceConfig, load_settings, resolve_prefix


def test_defaults_need_no_settings(tmp_path: Path) -> None:
    s = load_settings({"HOME": str(tmp_path)})
    assert s.port == 8080 and s.host == "0.0.0.0" and s.api_token is None
    assert s.plugins_dir == tmp_path / ".local" / "share" / "iocmng" / "plugins"
    assert resolve_prefix(s) == "IOCMNG"


@pytest.mark.parametrize(
    ("var", "value"),
    [("IOCMNG_PORT", "abc"), ("IOCMNG_PORT", "70000"), ("IOCMNG_LOG_LEVEL", "loud"),
     ("IOCMNG_PREFIX", "has space"), ("IOCMNG_DISABLE_OPHYD", "maybe"), ("IOCMNG_MAX_BODY", "0")],
)
def test_bad_value_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({var: value})
    assert var in info.value.detail and repr(value) in info.value.detail


def test_empty_token_refused_and_never_echoed() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"IOCMNG_API_TOKEN": "   "})
    assert "IOCMNG_API_TOKEN" in info.value.detail
    assert "'   '" not in info.value.detail


def test_token_not_in_repr() -> None:
    s = load_settings({"IOCMNG_API_TOKEN": "sekrit-123"})
    assert s.api_token == "sekrit-123"
    assert "sekrit-123" not in repr(s)


def test_prefix_order(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("beamline: sparc\nnamespace: ctrl\n")
    s = load_settings({"IOCMNG_BEAMLINE_CONFIG": str(values)})
    assert resolve_prefix(s) == "SPARC:CTRL"
    assert resolve_prefix(s, ServiceConfig(prefix="FROM:FILE")) == "FROM:FILE"
    s2 = load_settings({"IOCMNG_BEAMLINE_CONFIG": str(values), "IOCMNG_PREFIX": "ENV"})
    assert resolve_prefix(s2, ServiceConfig(prefix="FROM:FILE")) == "ENV"
