"""The container image, end to end with podman (SPEC §10).

Builds the image from the Containerfile, runs it with host networking on
loopback ports of its own, adds plugins from a git repository mounted into
the container, reads their PVs with aioca from the host, runs a job over
REST, restarts the container and sees the plugins and an input value come
back from the /data volume, and stops it cleanly.

podman is set up on these machines by ../shared/tools/podman-setup.sh (no
registry is reachable: it builds a local Debian base image); .ci/run calls
it. The test skips, saying why, only where podman cannot run at all.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, REPO, EpicsPorts, free_port, random_prefix, wait_for, wait_for_sync

from .conftest import call, make_repo

PODMAN = ["podman", "--runtime", "runc"]
RUN_FLAGS = ["--ulimit", "nofile=10000:10000", "--ulimit", "nproc=1000:1000"]
BASE_IMAGE = os.environ.get("IOCMNG_BASE_IMAGE", "localhost/debian-python:bookworm")
IMAGE = "localhost/iocmng:test"

pytestmark = pytest.mark.timeout(900)


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def podman_unusable() -> str | None:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        return "podman/runc not installed (run ../shared/tools/podman-setup.sh)"
    try:
        podman("info", timeout=60)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"podman cannot run here: {exc}"
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        return f"base image {BASE_IMAGE} missing (run ../shared/tools/podman-setup.sh)"
    return None


@functools.cache
def built_image() -> dict[str, Any]:
    """Build the image once per test session (test_chart_pod.py uses it too)."""
    t0 = time.monotonic()
    build = podman(
        "build",
        "--format",
        "docker",
        *RUN_FLAGS,
        "--network=host",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "-t",
        IMAGE,
        str(REPO),
        check=False,
        timeout=900,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    inspect = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    return {"build_s": time.monotonic() - t0, "inspect": inspect}


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    reason = podman_unusable()
    if reason:
        pytest.skip(reason)
    return built_image()


def test_image_metadata(image: dict[str, Any]) -> None:
    cfg = image["inspect"]["Config"]
    assert (
        cfg["User"] == "1000"
    )  # numeric (runAsNonRoot can check it): the epik8s charts' runAsUser
    assert cfg["Entrypoint"] == [
        "iocmng-server"
    ]  # exec form: SIGTERM reaches it, the reload keeps PID 1
    assert "/data" in cfg["Volumes"]
    assert "IOCMNG_PLUGINS_DIR=/data/plugins" in cfg["Env"]
    for port in ("8080/tcp", "5064/tcp", "5064/udp", "5065/udp", "5075/tcp", "5076/udp"):
        assert port in cfg["ExposedPorts"], port
    health = image["inspect"].get("Healthcheck") or cfg.get("Healthcheck")  # podman: top level
    assert health and "/api/v1/health" in " ".join(health["Test"])  # kept by --format docker


def test_image_requires_a_token(image: dict[str, Any], tmp_path: Path) -> None:
    """Issue 14, item 1: the image listens on every interface, so without a token it refuses
    to start (exit 2, the fix named); with one from a mounted file (a Secret) it serves.
    --network=none: whatever happens, nothing is reachable beyond the container."""
    run = podman("run", "--rm", "--network=none", *RUN_FLAGS, IMAGE, check=False, timeout=120)
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    for fix in ("IOCMNG_API_TOKEN", "IOCMNG_ALLOW_INSECURE"):
        assert fix in run.stderr, run.stderr
    secret = tmp_path / "secret"
    secret.mkdir()
    secret.chmod(0o755)
    (secret / "token").write_text("image-token-" + uuid.uuid4().hex)
    (secret / "token").chmod(0o644)
    name = f"iocmng-test-{uuid.uuid4().hex[:8]}"
    try:
        podman(
            "run",
            "-d",
            "--name",
            name,
            "--network=none",
            *RUN_FLAGS,
            "-v",
            f"{secret}:/run/secrets/iocmng:ro",
            "-e",
            "IOCMNG_API_TOKEN_FILE=/run/secrets/iocmng/token",
            IMAGE,
        )

        def logs() -> str:
            out = podman("logs", name, check=False)
            return out.stdout + out.stderr

        wait_for_sync(
            lambda: "HTTP on 0.0.0.0:8080" in logs(),
            timeout=90,
            interval=0.2,
            what="the service serving with the token from the file",
        )
        assert (secret / "token").read_text() not in logs()
    finally:
        podman("rm", "-f", "-t", "2", name, check=False)


async def _equal(value: Any, expected: Any) -> bool:
    return await value == expected


class Container:
    def __init__(self, tmp: Path, user: str | None = None) -> None:
        self.name = f"iocmng-test-{uuid.uuid4().hex[:8]}"
        self.volume = f"{self.name}-data"
        self.ports = EpicsPorts.allocate()
        self.http = free_port()
        self.prefix = random_prefix()
        self.repo_dir = tmp
        self.user = user  # --user UID:GID (default: the image's USER)

    def epics_env(self) -> dict[str, str]:
        """Loopback-only EPICS on this container's ports."""
        return {k: v for k, v in self.ports.env().items() if k.startswith("EPICS_")}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}/api/v1"

    def run(
        self,
        *command: str,
        env: dict[str, str] | None = None,
        mounts: tuple[str, ...] = (),
        entrypoint: str | None = None,
    ) -> None:
        """``podman run -d``: the service by default; ``entrypoint``/``command`` replace it (as a chart does)."""
        full = self.epics_env()
        full.update(IOCMNG_HOST="127.0.0.1", IOCMNG_PORT=str(self.http), IOCMNG_PREFIX=self.prefix)
        full.update(env or {})
        args = [
            "run",
            "-d",
            "--name",
            self.name,
            "--network=host",
            *RUN_FLAGS,
            "-v",
            f"{self.volume}:/data",
            "-v",
            f"{self.repo_dir}:/repos:ro",
        ]
        for mount in mounts:
            args += ["-v", mount]
        if self.user:
            args += ["--user", self.user]
        if entrypoint:
            args += ["--entrypoint", entrypoint]
        for k, v in full.items():
            args += ["-e", f"{k}={v}"]
        podman(*args, IMAGE, *command)

    def running(self) -> bool:
        out = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return out.stdout.strip() == "true"

    def wait_exit(self, timeout: float = 30) -> int:
        return int(podman("wait", self.name, timeout=timeout).stdout.strip())

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 30
    ) -> tuple[int, Any]:
        """:func:`call` on the container's API: status and JSON body."""
        r = call(method, self.url + path, body, timeout=timeout)
        return r.status, r.body

    def health(self) -> dict[str, Any] | None:
        try:
            return self.request("GET", "/health", timeout=3)[1]
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def wait_generation(self, generation: int, timeout: float = 60) -> dict[str, Any]:
        return wait_for_sync(
            lambda: (
                (h := self.health())
                and h["generation"] >= generation
                and not h["pending_generation"]
                and h
            ),
            timeout=timeout,
            interval=0.2,
            what=f"generation {generation}",
        )

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def remove(self) -> None:
        podman("rm", "-f", "-t", "2", self.name, check=False)
        podman("volume", "rm", "-f", self.volume, check=False)


@contextlib.contextmanager
def plugin_repos() -> Iterator[Path]:
    """A directory (mounted as /repos) with the git repository ``plugins``: a task, and a job under jobs/diag."""
    # Not under pytest's tmp_path (0700): the container's non-root user must read it.
    base = Path(tempfile.mkdtemp(prefix="iocmng-ctr-"))
    try:
        make_repo(
            base / "plugins",
            {".": EXAMPLES / "sync_monitor", "jobs/diag": EXAMPLES / "diagnostics_job"},
        )
        for d, _, files in os.walk(base):
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def repo() -> Iterator[Path]:
    with plugin_repos() as base:
        yield base


async def test_container_end_to_end(image: dict[str, Any], repo: Path) -> None:
    from aioca import caget, caput

    c = Container(repo)
    try:
        t0 = time.monotonic()
        c.run()
        h = wait_for_sync(c.health, timeout=90, interval=0.1, what="container /health")
        cold_start = time.monotonic() - t0
        assert h["status"] == "ok", h

        status, body = c.request(
            "POST", "/tasks", {"name": "mon", "git_url": "file:///repos/plugins"}
        )
        assert status == 201, body
        status, body = c.request(
            "POST",
            "/jobs",
            {"name": "diag", "git_url": "file:///repos/plugins", "path": "jobs/diag"},
        )
        assert status == 201, body
        c.wait_generation(body["generation"])

        reading = f"{c.prefix}:MON:READING"
        setpoint = f"{c.prefix}:MON:SETPOINT"
        await wait_for(
            lambda: _equal(caget(reading, timeout=5), 50.0),
            timeout=30,
            what="READING from the first cycle",
        )
        await caput(setpoint, 66.5, wait=True, timeout=10)
        assert await caget(setpoint, timeout=5) == 66.5

        status, result = c.request("POST", "/jobs/diag/run", {})
        assert status == 200 and result["success"] is True, result
        assert await caget(f"{c.prefix}:DIAG:STATUS", datatype=str, timeout=5) == "SUCCESS"

        assert podman("healthcheck", "run", c.name, check=False).returncode == 0, c.logs()[-2000:]

        mount = Path(json.loads(podman("volume", "inspect", c.volume).stdout)[0]["Mountpoint"])
        saved = mount / "plugins" / "autosave.json"
        wait_for_sync(
            lambda: (
                saved.exists()
                and json.loads(saved.read_text()).get("mon", {}).get("SETPOINT") == 66.5
            ),
            timeout=10,
            what="SETPOINT autosaved in the /data volume",
        )
        podman("restart", "-t", "20", c.name, timeout=120)
        wait_for_sync(c.health, timeout=90, interval=0.2, what="/health after podman restart")
        listing = {p["name"]: p for p in c.request("GET", "/plugins")[1]["plugins"]}
        assert set(listing) == {"mon", "diag"}, listing
        wait_for_sync(
            lambda: c.request("GET", "/tasks/mon")[1]["state"] == "running",
            timeout=30,
            what="mon running again",
        )
        assert await caget(setpoint, timeout=10) == 66.5  # restored from /data
        assert listing["mon"]["source"]["url"] == "file:///repos/plugins"

        podman("stop", "-t", "20", c.name, timeout=60)
        state = json.loads(podman("inspect", c.name).stdout)[0]["State"]
        logs = c.logs()
        assert state["ExitCode"] == 0, logs[-3000:]
        assert "stopped after" in logs  # cleanup() of the task ran
        print(
            f"\nimage build {image['build_s']:.1f}s, cold start to /health 200: {cold_start:.2f}s"
        )
    finally:
        c.remove()
