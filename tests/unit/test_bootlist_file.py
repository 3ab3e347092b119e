"""The boot list file (IOCMNG_PLUGINS_CONFIG): order, per-entry errors, whole-file errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from iocmng.config.bootlist import read_boot_list
from iocmng.errors import SettingsError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "plugins.yaml"
    p.write_text(text)
    return p


def test_order_autostart_order_then_list_order(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
plugins:
  - {name: d, local_path: /x}
  - {name: c, local_path: /x, autostart_order: 5}
  - {name: b, local_path: /x}
  - {name: a, local_path: /x, autostart_order: 1}
  - {name: e, local_path: /x, autostart_order: 5}
""",
    )
    entries, errors = read_boot_list(p)
    assert errors == []
    assert [e.name for e in entries] == ["a", "c", "e", "d", "b"]


def test_entry_errors(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
plugins:
  - {name: ok, git_url: https://h/x.git, pat_env: GITLAB_TOKEN, auto_start: false, auto_start_on_boot: true}
  - {name: secret, git_url: https://h/x.git, pat: glpat-xyz}
  - {name: badenv, git_url: https://h/x.git, pat_env: "not a name"}
  - {name: none}
  - {name: ok, local_path: /y}
  - just a string
""",
    )
    entries, errors = read_boot_list(p)
    assert [(e.name, e.pat_env, e.auto_start) for e in entries] == [("ok", "GITLAB_TOKEN", False)]
    text = "\n".join(errors)
    assert "plugins[1] (secret): pat: Value error, a token is not read from the boot list" in text
    assert "glpat-xyz" not in text
    assert "plugins[2] (badenv): pat_env" in text and "not an environment variable name" in text
    assert "plugins[3] (none): give exactly one of git_url or local_path" in text
    assert "plugins[4] (ok): the name is already used" in text
    assert "plugins[5]: entry:" in text


@pytest.mark.parametrize("text", ["plugins: [", "[1, 2]", "plugins: 3"])
def test_file_errors_name_the_variable(tmp_path: Path, text: str) -> None:
    with pytest.raises(SettingsError, match="IOCMNG_PLUGINS_CONFIG="):
        read_boot_list(write(tmp_path, text))


def test_empty_and_unset(tmp_path: Path) -> None:
    assert read_boot_list(None) == ([], [])
    assert read_boot_list(write(tmp_path, "")) == ([], [])
