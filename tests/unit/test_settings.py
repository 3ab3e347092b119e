"""Service settings: each bad value names its variable; secrets are never echoed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iocmng.config.settings import (
    ServiceConfig,
    Settings,
    load_settings,
    resolve_prefix,
    unknown_variables,
)
from iocmng.errors import SettingsError


def test_defaults_need_no_settings(tmp_path: Path) -> None:
    s = load_settings({"HOME": str(tmp_path)})
    assert (
        s.port == 8080 and s.host == "127.0.0.1" and s.api_token is None
    )  # loopback without a token
    s.check_exposure()
    assert s.plugins_dir == tmp_path / ".local" / "share" / "iocmng" / "plugins"
    assert resolve_prefix(s) == "IOCMNG"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("IOCMNG_PORT", "abc"),
        ("IOCMNG_PORT", "70000"),
        ("IOCMNG_LOG_LEVEL", "loud"),
        ("IOCMNG_PREFIX", "has space"),
        ("IOCMNG_DISABLE_OPHYD", "maybe"),
        ("IOCMNG_MAX_BODY", "0"),
    ],
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


def test_secure_default(tmp_path: Path) -> None:
    """Issue 14: no token -> loopback; a token -> every interface; a non-loopback address
    without a token is refused to the server unless IOCMNG_ALLOW_INSECURE says so."""
    assert load_settings({"IOCMNG_API_TOKEN": "t"}).host == "0.0.0.0"
    for host in ("0.0.0.0", "::", "", "192.0.2.7", "iocmng.example.org"):
        s = load_settings({"IOCMNG_HOST": host})
        assert s.insecure
        with pytest.raises(SettingsError) as info:
            s.check_exposure()
        for fix in ("IOCMNG_API_TOKEN", "IOCMNG_HOST=127.0.0.1", "IOCMNG_ALLOW_INSECURE"):
            assert fix in info.value.detail
        load_settings({"IOCMNG_HOST": host, "IOCMNG_ALLOW_INSECURE": "true"}).check_exposure()
        load_settings({"IOCMNG_HOST": host, "IOCMNG_API_TOKEN": "t"}).check_exposure()
    for host in ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost", "api.localhost"):
        s = load_settings({"IOCMNG_HOST": host})
        assert not s.insecure, host
        s.check_exposure()


def test_token_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("from-a-secret\n")
    s = load_settings({"IOCMNG_API_TOKEN_FILE": str(f)})
    assert s.api_token == "from-a-secret" and s.host == "0.0.0.0"
    assert "from-a-secret" not in repr(s)
    with pytest.raises(SettingsError, match="both set"):
        load_settings({"IOCMNG_API_TOKEN_FILE": str(f), "IOCMNG_API_TOKEN": "x"})
    with pytest.raises(SettingsError, match="cannot be read") as info:
        load_settings({"IOCMNG_API_TOKEN_FILE": str(tmp_path / "missing")})
    assert "IOCMNG_API_TOKEN_FILE" in info.value.detail
    f.write_text("  \n")
    with pytest.raises(SettingsError, match="empty"):
        load_settings({"IOCMNG_API_TOKEN_FILE": str(f)})


def test_allowed_hosts() -> None:
    from iocmng.api.cors import host_allowed, host_name, host_policy

    policy = host_policy(
        load_settings({"IOCMNG_ALLOWED_HOSTS": "iocmng.example.org, *.lab.example"})
    )
    for ok in (
        "127.0.0.1:8080",
        "[::1]:80",
        "10.0.0.5",
        "localhost:1",
        "LocalHost",
        "x.localhost",
        "iocmng.example.org:8080",
        "iocmng.example.org.",
        "a.b.lab.example",
    ):
        assert host_allowed(policy, ok), ok
    for bad in (
        "attacker.example",
        "lab.example",
        "iocmng.example.org.attacker.example",
        "xlab.example",
        "localhost.attacker.example",
    ):
        assert not host_allowed(policy, bad), bad
    assert host_policy(load_settings({"IOCMNG_ALLOWED_HOSTS": "*"})) == ()
    assert host_allowed((), "anything.example")
    assert (
        host_name("[FE80::1]:8080") == "fe80::1" and host_name("Name.Example:80") == "name.example"
    )
    with pytest.raises(SettingsError, match="IOCMNG_ALLOWED_HOSTS"):
        load_settings({"IOCMNG_ALLOWED_HOSTS": "http://x.example/"})


def test_unknown_variables_are_named_with_the_setting_meant() -> None:
    env = {
        "IOCMNG_DATA_DIR": "/data",
        "IOCMNG_KEEPSTATE": "true",
        "IOCMNG_ENABLE_SOFTIOC": "true",
        "IOCMNG_XYZZY": "1",
        "IOCMNG_PORT": "8080",
        "iocmng_port": "8080",
        "IOCMNG_URL": "http://x",
        "PATH": "/bin",
    }
    warnings = unknown_variables(env)
    assert warnings == [
        "IOCMNG_DATA_DIR is not an iocmng setting and is ignored (did you mean IOCMNG_PLUGINS_DIR? "
        "the settings: docs/operations.md)",
        "IOCMNG_ENABLE_SOFTIOC has no effect: iocmng 2.7.9's switch to run without an IOC; here the "
        "IOC always runs",
        "IOCMNG_KEEPSTATE is not an iocmng setting and is ignored (did you mean IOCMNG_KEEP_STATE? "
        "the settings: docs/operations.md)",
        "IOCMNG_XYZZY is not an iocmng setting and is ignored (the settings: docs/operations.md)",
    ]


def test_every_documented_variable_is_known() -> None:
    """No warning for a variable of operations.md's settings table, and every setting in it."""
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `IOCMNG_")]
    names = {n for row in rows for n in re.findall(r"IOCMNG_[A-Z0-9_]*[A-Z0-9]", row)}
    assert unknown_variables(dict.fromkeys(names, "")) == []
    settings = {f"IOCMNG_{name.upper()}" for name in Settings.model_fields}
    assert settings - names == set(), "settings missing from docs/operations.md's table"
