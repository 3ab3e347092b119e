"""The system tests' fixtures and helpers: the real ``iocmng-server``, HTTP, git repos, CA.

* :class:`Server` runs ``python -m iocmng`` in a subprocess on a free loopback
  HTTP port, with its own loopback-only EPICS ports (from the root conftest's
  pool, so this process's CA client can reach it) and a data directory under
  ``tmp_path``. Its output goes to a file that tests read (e.g. to check a
  token never reaches the log).
* The server factory: the ``server`` fixture (configured per module or test by
  the ``server`` marker), ``server_factory`` for tests that need several or
  need them built their own way, ``module_server_factory`` for servers shared
  by a module. All three are :class:`ServerFactory`; every server made is
  stopped at teardown, children included.
* The HTTP helper: :func:`call` (one request, a :class:`Reply`), its
  ``await``-able twin :func:`acall`, and :meth:`Server.call` / :meth:`Server.acall`
  for paths under the server's ``/api/v1``.
* The CA purge: :func:`_purge_ca` (autouse) closes this process's CA channels
  after every test.
* :func:`make_repo` / :func:`git` build real git repositories in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import (
    REPO,
    EpicsPorts,
    _purge_ca_channels,
    free_port,
    pva_context,
    random_prefix,
    wait_for_sync,
)

from .external_ioc import external_ioc_factory_fixture  # noqa: F401  (the fixture, for every module)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "server(**options): options of the `server` fixture's server (see ServerFactory.__call__)",
    )


# -- git repositories -------------------------------------------------------------------------
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


def closed_port() -> int:
    """A loopback TCP port with nothing listening on it."""
    return free_port()


# -- HTTP ---------------------------------------------------------------------------------------
@dataclass
class Reply:
    """One HTTP answer: status, headers, the bytes and text, and the parsed JSON (``None`` if
    not JSON)."""

    status: int
    headers: Message
    content: bytes
    text: str
    body: Any

    @property
    def content_type(self) -> str:
        """The media type without parameters (``application/problem+json``)."""
        return self.headers.get_content_type()

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def checked(self) -> tuple[int, Any]:
        """(status, JSON body), failing unless an error answer (400 and up) is problem+json."""
        if self.status >= 400:
            assert self.content_type == "application/problem+json", (self.status, self.text[:2000])
        return self.status, self.body

    def expect_ok(self) -> Any:
        """Fail unless the status is a success (below 400); return the JSON body."""
        assert self.status < 400, (self.status, self.text[:2000])
        return self.body


def call(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: str | bytes | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Reply:
    """One request; ``body`` is sent as JSON, ``raw`` as is (with a JSON content type unless
    ``headers`` say otherwise); ``token`` becomes a bearer ``Authorization`` header.

    An error status is an answer, not an exception; a connection failure raises ``OSError``.
    """
    hdrs = dict(headers or {})
    data: bytes | None = None
    if raw is not None:
        data = raw.encode() if isinstance(raw, str) else raw
        hdrs.setdefault("Content-Type", "application/json")
    elif body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, got, content = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, got, content = err.code, err.headers, err.read()
    text = content.decode()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    return Reply(status, got, content, text, parsed)


async def acall(method: str, url: str, body: Any = None, **kw: Any) -> Reply:
    """:func:`call` from a coroutine: the request runs in a thread, the loop keeps serving."""
    return await asyncio.to_thread(call, method, url, body, **kw)


# -- the server -----------------------------------------------------------------------------
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
    def root(self) -> str:
        """``http://127.0.0.1:PORT`` (for routes outside ``/api/v1``: ``/metrics``, ``/``)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        return f"{self.root}/api/v1"

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

    def api(self, path: str) -> str:
        """The URL of ``path``: under ``/api/v1`` when it starts with ``/``, else as given."""
        return path if path.startswith("http") else f"{self.url}{path}"

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        """:func:`call` on :meth:`api` ``(path)``."""
        return call(method, self.api(path), body, **kw)

    async def acall(self, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        """:func:`acall` on :meth:`api` ``(path)``."""
        return await acall(method, self.api(path), body, **kw)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
            return json.loads(resp.read())

    def wait_generation(
        self, generation: int, timeout: float = 45.0, settled: bool = True
    ) -> dict[str, Any]:
        """Wait until the server serves ``generation`` (or later) with no reload pending; with
        ``settled``, also no plugin still initializing (HTTP answers while plugins start, by
        design). Returns that health document. From a coroutine:
        ``await asyncio.to_thread(srv.wait_generation, generation)``."""

        def live() -> dict[str, Any] | None:
            r = self.call("GET", "/health", timeout=10)
            assert r.status == 200, r.text
            h = r.body
            ready = h["generation"] >= generation and h["pending_generation"] is None
            if settled:
                ready = (
                    ready and not h["plugins"].get("starting") and not h["plugins"].get("pending")
                )
            return h if ready else None

        return wait_for_sync(live, timeout=timeout, interval=0.1, what=f"generation {generation}")

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
        """SIGKILL the service (only it: a test may check what its children do then)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def kill_tree(self) -> None:
        """SIGKILL the service, then the children it leaves (a child import check, a job)."""
        if not self.alive():  # (a reaped PID may be another process's by now)
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.kill()
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def importing(self, name: str) -> bool:
        """True while the import check of plugin ``name`` runs (a child process of the
        service: ``python -c "...child_check()" PLUGIN_DIR NAME``)."""
        if not self.alive():
            return False
        for child in psutil.Process(self.pid).children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if any("child_check" in part for part in cmd) and name in cmd:
                return True
        return False


# -- the server factory ---------------------------------------------------------------------
class ServerFactory:
    """Makes servers under one directory; :meth:`close` (at teardown) ends every one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[tuple[Server, bool]] = []

    def __call__(
        self,
        name: str = "server",
        *,
        env: dict[str, str | None] | None = None,
        demo: bool = False,
        token: str | None = None,
        data_dir: Path | None = None,
        args: tuple[str, ...] = (),
        start: bool = True,
        clean_exit: bool = False,
        timeout: float = 60.0,
    ) -> Server:
        """A server with ``env`` (IOCMNG_* settings; ``None`` unsets one), ``--demo`` when
        ``demo``, ``token`` as IOCMNG_API_TOKEN, ``data_dir`` (default
        ``ROOT/data``, ``ROOT/NAME/data`` for another ``name``) and more command-line
        ``args``; started unless ``start`` is false. With ``clean_exit`` the teardown stops
        it with SIGTERM and fails unless it exits 0; otherwise the teardown kills it."""
        base = self.root if name == "server" else self.root / name
        extra_env: dict[str, str | None] = dict(env or {})
        if token is not None:
            extra_env["IOCMNG_API_TOKEN"] = token
        srv = Server(
            data_dir=data_dir or base / "data",
            log_path=self.root / f"{name}.log",
            extra_env=extra_env,
            args=(("--demo",) if demo else ()) + tuple(args),
        )
        self.made.append((srv, clean_exit))
        if start:
            srv.start(timeout)
        return srv

    def close(self) -> None:
        _purge_ca_channels()  # before the servers go: no CA callbacks into a closed loop
        failures = []
        for srv, clean_exit in reversed(self.made):
            if clean_exit and srv.alive():
                try:
                    rc = srv.stop()
                except AssertionError as exc:
                    failures.append(str(exc))
                else:
                    if rc != 0:
                        failures.append(f"iocmng-server exited with {rc}:\n{srv.log()[-4000:]}")
            srv.kill_tree()
        assert not failures, "\n".join(failures)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Servers for one test (under ``tmp_path``)."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_server_factory(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerFactory]:
    """Servers shared by the tests of one module."""
    factory = ServerFactory(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    yield factory
    factory.close()


@pytest.fixture
def server(server_factory: ServerFactory, request: pytest.FixtureRequest) -> Server:
    """One server for the test, made with the options of the closest ``server`` marker
    (``@pytest.mark.server(token=TOKEN, demo=True)``; none: the defaults, started)."""
    marker = request.node.get_closest_marker("server")
    return server_factory(**(marker.kwargs if marker else {}))


# -- Channel Access and PV Access ------------------------------------------------------------------
async def ca_value(pv: str, timeout: float = 20.0, **kw: Any) -> Any:
    """caget that waits for the channel (it may be reconnecting after a reload)."""
    from aioca import caget

    return await caget(pv, timeout=timeout, **kw)


async def ca_gone(pv: str) -> bool:
    """True when ``pv`` does not connect within 1.5 s."""
    from aioca import CANothing, caget

    try:
        await caget(pv, timeout=1.5)
    except CANothing:
        return True
    return False


async def pva_answers(srv: Server, pv: str, timeout: float = 2.0) -> bool:
    """True when ``pv`` answers a PVA get on ``srv`` within ``timeout``."""
    ctx = pva_context(srv.ports)
    try:
        await asyncio.wait_for(ctx.get(pv), timeout)
        return True
    except Exception:
        return False
    finally:
        ctx.close()


@pytest.fixture(autouse=True)
async def _purge_ca() -> AsyncIterator[None]:
    """Close this process's CA channels when a test ends, while its loop still runs: aioca
    delivers connection events to the loop a channel was made on, and that loop closes with
    the test (an event into a closed loop is an unraisable exception: a failure here)."""
    yield
    _purge_ca_channels()
