"""The boot list (IOCMNG_PLUGINS_CONFIG) with a real ``iocmng-server``.

Plugins from ``file://`` git repos and a ``local_path`` are registered at a
real start, in ``autostart_order`` then list order; ``auto_start: false``
leaves a plugin registered and stopped until a restart; bad entries land
in ``health.boot_errors`` while the others load; on the next start the
registry wins over the file for the names it holds; a token named by
``pat_env`` never reaches the data directory or the log; a file that is not
a boot list stops the start naming the variable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import EXAMPLES, loopback_env, wait_for_sync

from .conftest import Server, ServerFactory, call, closed_port, make_repo

pytestmark = pytest.mark.timeout(180)

SECRET = "glpat-BOOTSECRET-42"


def state(srv: Server, name: str) -> str:
    return call("GET", f"{srv.url}/plugins/{name}").expect_ok()["state"]


@pytest.fixture
def setup(tmp_path: Path, server_factory: ServerFactory) -> tuple[Server, Path, dict[str, Any]]:
    monitor = make_repo(tmp_path / "git" / "monitor", {".": EXAMPLES / "sync_monitor"})
    diag = make_repo(tmp_path / "git" / "diag", {"jobs/diagnostics": EXAMPLES / "diagnostics_job"})
    boot = {
        "plugins": [
            {
                "name": "monitor",
                "git_url": monitor,
                "branch": "main",
                "autostart_order": 2,
                "parameters": {"threshold": 10.0},
            },
            {"name": "wave", "local_path": str(EXAMPLES / "async_monitor"), "auto_start": False},
            # auto_start means nothing for a job: it waits idle (a stopped job could not run)
            {
                "name": "diag",
                "git_url": diag,
                "path": "jobs/diagnostics",
                "autostart_order": 1,
                "auto_start": False,
            },
            # https with a token named by pat_env: the clone fails (nothing listens), the token stays secret
            {
                "name": "private",
                "git_url": f"https://127.0.0.1:{closed_port()}/group/private.git",
                "pat_env": "BOOT_TEST_TOKEN",
            },
            {"name": "nopat", "git_url": "https://127.0.0.1:1/x.git", "pat_env": "BOOT_TEST_UNSET"},
            {"name": "both", "git_url": monitor, "local_path": str(EXAMPLES / "async_monitor")},
            {"name": "typo", "local_path": str(EXAMPLES / "async_monitor"), "auto_strat": True},
            {"name": "inline", "git_url": monitor, "pat": SECRET},
            {"name": "monitor", "local_path": str(EXAMPLES / "async_monitor")},
        ]
    }
    path = tmp_path / "plugins.yaml"
    path.write_text(yaml.safe_dump(boot))
    srv = server_factory(
        env={"IOCMNG_PLUGINS_CONFIG": str(path), "BOOT_TEST_TOKEN": SECRET}, start=False
    )
    return srv, path, boot


def test_boot_list(setup: tuple[Server, Path, dict[str, Any]]) -> None:
    srv, path, boot = setup
    health = srv.start()
    assert health["generation"] == 1
    errors = "\n".join(health["boot_errors"])
    for text in (
        "private:",
        "nopat: pat_env: the variable BOOT_TEST_UNSET is not set",
        "(both): give exactly one of git_url or local_path",
        "(typo): auto_strat: unknown key",
        "(inline): pat: Value error, a token is not read from the boot list",
        "plugins[8] (monitor): the name is already used",
    ):
        assert text in errors, errors
    assert SECRET not in errors
    names = sorted(p["name"] for p in call("GET", f"{srv.url}/plugins").expect_ok()["plugins"])
    assert names == ["diag", "monitor", "wave"]
    wait_for_sync(
        lambda: state(srv, "monitor") == "running" and state(srv, "diag") == "idle", timeout=30
    )
    assert state(srv, "wave") == "stopped"  # auto_start: false

    # registered in autostart_order, then list order
    reg = json.loads((srv.data_dir / "registry.json").read_text())
    assert list(reg["plugins"]) == ["diag", "monitor", "wave"]
    assert (
        reg["plugins"]["diag"]["autostart_order"] == 1
        and reg["plugins"]["wave"]["auto_start"] is False
    )

    info = call("GET", f"{srv.url}/plugins/monitor/startup").expect_ok()
    assert info["parameters"]["threshold"] == 10.0 and info["mode"] == "continuous"
    assert info["overrides"] == {"threshold": 10.0} and info["autostart_order"] == 2
    assert info["input_pvs"] == ["GAIN", "SETPOINT"] and "READING" in info["output_pvs"]
    assert f"{srv.prefix}:MONITOR:READING" in info["records"] and info["source"]["type"] == "git"
    assert set(info["base_control_pvs"]) == {"ENABLE", "STATUS", "MESSAGE", "CYCLE_COUNT"}
    assert "inputs" in info["config"]["pvs"]
    wave = call("GET", f"{srv.url}/tasks/wave/startup").expect_ok()
    assert wave["auto_start"] is False and wave["state"] == "stopped"
    assert call("GET", f"{srv.url}/jobs/monitor/startup").status == 404

    # operator changes: new parameters for monitor, wave started by hand
    call(
        "POST", f"{srv.url}/plugins/monitor/restart", {"parameters": {"threshold": 20.0}}
    ).expect_ok()
    call("POST", f"{srv.url}/plugins/wave/restart").expect_ok()
    wait_for_sync(lambda: state(srv, "wave") == "running", timeout=30)
    assert srv.stop() == 0

    # the file changes; the registry wins for the names it holds
    boot["plugins"][0]["parameters"] = {"threshold": 99.0}
    path.write_text(yaml.safe_dump(boot))
    srv.start()
    wait_for_sync(lambda: state(srv, "monitor") == "running", timeout=30)
    assert (
        call("GET", f"{srv.url}/plugins/monitor/startup").expect_ok()["parameters"]["threshold"]
        == 20.0
    )
    wait_for_sync(
        lambda: state(srv, "wave") == "running", timeout=30
    )  # started by hand: starts again
    assert srv.stop() == 0

    # the token never reached the data directory nor the log
    for f in srv.data_dir.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in srv.log()


@pytest.mark.parametrize(
    "content, text",
    [
        ("plugins: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping with a 'plugins:' list"),
        ("plugins: {name: x}\n", "expected a mapping with a 'plugins:' list"),
        (None, "cannot read it"),
    ],
)
def test_bad_boot_list_file_stops_the_start(tmp_path: Path, content: str | None, text: str) -> None:
    path = tmp_path / "plugins.yaml"
    if content is not None:
        path.write_text(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOCMNG_")}
    env.update(loopback_env())
    env.update(
        {
            "IOCMNG_PLUGINS_CONFIG": str(path),
            "IOCMNG_HOST": "127.0.0.1",
            "IOCMNG_PORT": "0",
            "IOCMNG_PLUGINS_DIR": str(tmp_path / "data"),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "iocmng"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "IOCMNG_PLUGINS_CONFIG" in proc.stderr and text in proc.stderr, proc.stderr


ORDER_TASK = """
import pathlib
import time

from iocmng import TaskBase


class Marker(TaskBase):
    def initialize(self):
        time.sleep(self.parameters["delay"])
        with open(self.parameters["file"], "a") as f:
            f.write(self.name + "\\n")

    def execute(self):
        pass

    def cleanup(self):
        pass
"""


def test_autostart_order_starts_groups_in_order(
    tmp_path: Path, server_factory: ServerFactory
) -> None:
    marks = tmp_path / "marks.txt"
    entries = []
    # alphabetical order (alpha, mid, zeta) and list order differ from the wanted one
    for name, order, delay in (("mid", None, 0.0), ("alpha", 2, 0.0), ("zeta", 1, 0.5)):
        d = tmp_path / "src" / name
        d.mkdir(parents=True)
        (d / "marker.py").write_text(ORDER_TASK)
        (d / "config.yaml").write_text(
            yaml.safe_dump({"parameters": {"interval": 5.0, "delay": delay, "file": str(marks)}})
        )
        entries.append(
            {"name": name, "local_path": str(d), **({"autostart_order": order} if order else {})}
        )
    (tmp_path / "plugins.yaml").write_text(yaml.safe_dump({"plugins": entries}))
    srv = server_factory(env={"IOCMNG_PLUGINS_CONFIG": str(tmp_path / "plugins.yaml")})
    wait_for_sync(lambda: marks.exists() and len(marks.read_text().split()) == 3, timeout=30)
    assert marks.read_text().split() == ["zeta", "alpha", "mid"]
    assert srv.stop() == 0
