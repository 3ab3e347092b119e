"""Helpers for the service system tests: the real ``iocmng-server`` process and git repos.

The server runs as ``python -m iocmng`` in a subprocess on a free loopback
HTTP port, with its own loopback-only EPICS ports (from the root conftest's
pool, so this process's CA client can reach it) and a data directory under
``tmp_path``. Its stderr goes to a file that the tests read (e.g. to check a
token never reaches the log).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, EpicsPorts, free_port, random_prefix, wait_for_sync


def git(cwd: Path, *args: str) -> str:
    """Run the git binary (only to build test repositories; the service uses dulwich)."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_SYSTEM": os.devnull,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def make_repo(root: Path, files: dict[str, str | Path], branch: str = "main") -> str:
    """Create a git repository at ``root`` holding ``files`` (text, or a directory/file to
    copy), commit it on ``branch``, and return its ``file://`` URL."""
    root.mkdir(parents=True)
    for rel, content in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            if content.is_dir():
                shutil.copytree(
                    content, dest, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
                )
            else:
                shutil.copy(content, dest)
        else:
            dest.write_text(content)
    git(root, "init", "-q", "-b", branch)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "plugin")
    return root.as_uri()


@dataclass
class Server:
    """One ``iocmng-server`` (possibly across restarts: same data dir, ports and prefix)."""

    data_dir: Path
    log_path: Path
    ports: EpicsPorts = field(default_factory=EpicsPorts.allocate)
    prefix: str = field(default_factory=random_prefix)
    http_port: int = field(default_factory=free_port)
    extra_env: dict[str, str | None] = field(default_factory=dict)  # None: unset the variable
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/v1"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pv(self, plugin: str, short: str) -> str:
        return f"{self.prefix}:{plugin.upper()}:{short}"

    def env(self) -> dict[str, str]:
        env = self.ports.env()
        env.update(
            {
                "IOCMNG_PLUGINS_DIR": str(self.data_dir),
                "IOCMNG_HOST": "127.0.0.1",
                "IOCMNG_PORT": str(self.http_port),
                "IOCMNG_PREFIX": self.prefix,
                "IOCMNG_LOG_LEVEL": "info",
            }
        )
        env.update(self.extra_env)  # type: ignore[arg-type]
        return {k: v for k, v in env.items() if v is not None}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
            return json.loads(resp.read())

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        """Start the process and wait until /health answers; return that health document."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iocmng", *self.args],
                env=self.env(),
                cwd=REPO,
                stdout=err,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(
                    f"iocmng-server exited with {self.proc.returncode} before serving:\n{self.log()}"
                )
            try:
                return self.health()
            except (OSError, urllib.error.URLError):
                return None

        try:
            return wait_for_sync(ready, timeout=timeout, interval=0.1, what="iocmng-server /health")
        except BaseException:
            self.kill()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the server and wait for it to exit; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"iocmng-server did not exit within {timeout}s:\n{self.log()[-4000:]}"
            ) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def closed_port() -> int:
    """A loopback TCP port with nothing listening on it."""
    return free_port()
