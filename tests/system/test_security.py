"""Promises of docs/security.md not pinned elsewhere.

* With ``IOCMNG_API_TOKEN`` set, **every** operation of the OpenAPI document
  that is not a GET answers 401 problem+json without the token (a new
  endpoint that forgets auth fails here), and every GET stays open.
* A ``pat`` never reaches the data directory, even when the add fails.
* ``local_path`` and ``file://`` stay accepted; other schemes are refused
  with the accepted list.

The rest of the document points at the tests that pin it
(test_service.py, test_observability.py, test_fuzz.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import EXAMPLES, REPO, wait_for_sync

from .conftest import Server, ServerFactory, closed_port, make_repo

TOKEN = "tok-" + "s3cr3t" * 4
PAT = "ghp_NEVER_ON_DISK_123"
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.server(demo=True, token=TOKEN, env={"IOCMNG_GIT_TIMEOUT": "5"}),
]


def test_token_guards_every_mutation(server: Server) -> None:
    srv = server
    doc = srv.call("GET", "/openapi.json").body
    root = f"http://127.0.0.1:{srv.http_port}"
    total = srv.call("GET", "/health").body["plugins"]["total"]
    checked = 0
    for path, item in doc["paths"].items():
        concrete = root + path.replace("{name}", "sync_monitor")
        for method in item:
            if method == "parameters":
                continue
            if method == "get":
                if path.endswith("/events"):
                    continue  # an endless stream; test_observability covers it
                status = srv.call("GET", concrete, timeout=30).status
                assert status in (200, 404), (path, status)  # open without a token
                continue
            r = srv.call(method.upper(), concrete, {}, timeout=30)
            assert r.status == 401 and r.content_type == "application/problem+json", (
                method,
                path,
                r.status,
                r.content[:200],
            )
            assert TOKEN.encode() not in r.content
            checked += 1
    assert checked >= 10
    assert srv.call("GET", "/health").body["plugins"]["total"] == total  # nothing changed


def test_pat_never_on_disk_and_schemes(server: Server, tmp_path: Path) -> None:
    srv = server
    for url in (f"https://127.0.0.1:{closed_port()}/x.git", "https://nonexistent.invalid/x.git"):
        r = srv.call(
            "POST", "/tasks", {"name": "p", "git_url": url, "pat": PAT}, token=TOKEN, timeout=30
        )
        assert 400 <= r.status < 500 and r.content_type == "application/problem+json", (
            r.status,
            r.content,
        )
        assert PAT.encode() not in r.content
    for f in srv.data_dir.rglob("*"):
        if f.is_file():
            assert PAT.encode() not in f.read_bytes(), f
    assert PAT not in srv.log()
    for url in (
        "ssh://git@example.invalid/x.git",
        "git://example.invalid/x.git",
        "ftp://x/y",
        "/abs/path",
    ):
        r = srv.call("POST", "/tasks", {"name": "p", "git_url": url}, token=TOKEN, timeout=30)
        assert r.status == 422 and b"https://, http://, file://" in r.content, (
            url,
            r.status,
            r.content,
        )
    # file:// and local_path stay available (air-gapped sites mount their repositories)
    repo = make_repo(tmp_path / "git" / "m", {".": EXAMPLES / "sync_monitor"})
    assert (
        srv.call("POST", "/tasks", {"name": "viafile", "git_url": repo}, token=TOKEN).status == 201
    )
    assert (
        srv.call(
            "POST",
            "/tasks",
            {"name": "vialocal", "local_path": str(EXAMPLES / "sync_monitor")},
            token=TOKEN,
        ).status
        == 201
    )


def test_deeply_nested_bodies_are_400(server: Server) -> None:
    """Issue 14, item 7: a body nested too deeply is a 400 naming the limit, never a 500
    (json's decoder and every recursive walk of a body would hit Python's recursion limit)."""
    srv = server
    deep = "[" * 100_000 + "]" * 100_000  # past json's own recursion limit
    medium = "[" * 100 + "]" * 100  # parses, but deeper than any real body
    targets = [
        ("POST", "/tasks", '{{"name": "deep", "local_path": "/x", "parameters": {{"a": {}}}}}'),
        ("POST", "/plugins/sync_monitor/restart", '{{"parameters": {{"a": {}}}}}'),
        ("POST", "/pvs/put", '{{"pv_name": "X:Y", "value": {}}}'),
        ("PUT", "/pvs/X:Y", '{{"value": {}}}'),
        ("POST", "/jobs/diagnostics_job/run", '{{"parameters": {{"a": {}}}}}'),
    ]
    for method, path, template in targets:
        for nested in (deep, medium):
            body = template.format(nested).encode()
            r = srv.call(method, path, raw=body, token=TOKEN, timeout=30)
            status, text = r.status, r.content
            assert status == 400 and b"deeper than 64 levels" in text, (
                method,
                path,
                len(nested),
                status,
                text[:300],
            )
    r = srv.call("GET", "/health")
    assert r.status == 200 and r.body["status"] == "ok"
    assert "RecursionError" not in srv.log()


def _raw(
    srv: Server, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes]:
    """A request with ``headers`` as given (no token, no type added): status and raw answer."""
    r = srv.call(method, path, raw=body, headers=headers, timeout=30)
    return r.status, r.content


def test_no_cross_site_driving(server: Server, tmp_path: Path) -> None:
    """Issue 14, item 2: what a browser page elsewhere can send without asking (a form, a
    text/plain fetch) cannot drive the API; a foreign Origin is refused; curl and the
    service's own pages keep working."""
    srv = server
    canary = tmp_path / "canary-plugin"
    canary.mkdir()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    add = json.dumps({"name": "xsite", "local_path": str(canary)}).encode()
    for ctype in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        status, body = _raw(srv, "POST", "/tasks", add, {**auth, "Content-Type": ctype})
        assert status == 415 and b"application/json" in body, (ctype, status, body[:200])
        status, body = _raw(
            srv,
            "POST",
            "/pvs/put",
            json.dumps({"pv_name": "X:Y", "value": 1}).encode(),
            {**auth, "Content-Type": ctype},
        )
        assert status == 415, (ctype, status, body[:200])
    # a page of another origin: refused even with a well-formed JSON request (and its token)
    for method, path, body in (
        ("POST", "/tasks", add),
        ("POST", "/jobs/diagnostics_job/run", None),
        ("GET", "/plugins", None),
    ):
        headers = {**auth, "Origin": "http://evil.example"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        status, text = _raw(srv, method, path, body, headers)
        assert status == 403 and b"IOCMNG_CORS_ORIGINS" in text, (method, path, status, text[:200])
    assert srv.call("GET", "/plugins/xsite").status == 404 and list(canary.iterdir()) == []
    # curl -X POST .../run (no body, no type) and the service's own origin keep working
    status, body = _raw(srv, "POST", "/jobs/diagnostics_job/run", None, auth)
    assert status == 200 and json.loads(body)["success"] is True, body[:200]
    own = f"http://127.0.0.1:{srv.http_port}"
    status, body = _raw(srv, "POST", "/jobs/diagnostics_job/run", None, {**auth, "Origin": own})
    assert status == 200, body[:200]


async def test_record_fields_and_read_only_records(server: Server) -> None:
    """Issue 14, item 6 (the gateway's part): PUT .../STATUS.DISP then .../STATUS forged an
    ERROR status; fields and the service's read-only records are not writable any more."""
    from aioca import caget

    srv = server
    status_pv = srv.pv("sync_monitor", "STATUS")
    before = await caget(status_pv, datatype=str, timeout=20)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for pv, value in (
        (f"{status_pv}.DISP", 0),
        (status_pv, 4),
        (f"{status_pv}.SCAN", 1),
        (f"{status_pv}.FLNK", "X"),
        (srv.pv("sync_monitor", "READING"), 1.0),
        (srv.pv("sync_monitor", "CYCLE_COUNT"), 0),
        (srv.pv("sync_monitor", "SETPOINT") + ".DESC", "x"),
    ):
        status, body = _raw(
            srv, "PUT", f"/pvs/{pv}", json.dumps({"value": value}).encode(), headers
        )
        assert status == 403, (pv, status, body[:300])
        status, body = _raw(
            srv, "POST", "/pvs/put", json.dumps({"pv_name": pv, "value": value}).encode(), headers
        )
        assert status == 403, ("reference route", pv, status, body[:300])
    assert await caget(status_pv, datatype=str, timeout=20) == before
    # what operators may write still works, through the record (VAL, with or without the field)
    for pv in (srv.pv("sync_monitor", "SETPOINT"), srv.pv("sync_monitor", "SETPOINT") + ".VAL"):
        status, body = _raw(srv, "PUT", f"/pvs/{pv}", json.dumps({"value": 61.5}).encode(), headers)
        assert status == 200, (pv, status, body[:300])
    assert await caget(srv.pv("sync_monitor", "SETPOINT"), timeout=20) == 61.5


async def test_a_transform_that_overflows_is_a_failed_cycle(server: Server, tmp_path: Path) -> None:
    """Issue 14, item 3 (its last point): pow(2, 2000) into a float output killed the task
    silently (still `running`, STATUS RUN, CYCLE_COUNT 0, nothing logged). Now each cycle fails
    with STATUS ERROR and the message, and the loop goes on."""
    from aioca import caget

    srv = server
    plugin = tmp_path / "overflow"
    plugin.mkdir()
    (plugin / "config.yaml").write_text(
        "parameters: {mode: continuous, interval: 0.1}\n"
        "pvs:\n  outputs:\n    BIG: {type: float, value: 0}\n"
        'transforms:\n  - output: BIG\n    expression: "pow(2, 2000)"\n'
    )
    r = srv.call("POST", "/tasks", {"name": "overflow", "local_path": str(plugin)}, token=TOKEN)
    assert r.status == 201, r.content
    generation = r.body["generation"]
    wait_for_sync(
        lambda: srv.call("GET", "/health").body["generation"] >= generation,
        timeout=60,
        what="the reload",
    )

    def failing() -> dict[str, Any] | None:
        r = srv.call("GET", "/tasks/overflow")
        info = r.body if r.status == 200 else {}
        return info if info.get("error_count", 0) >= 2 else None

    info = wait_for_sync(failing, timeout=30, what="overflow's cycles to fail, again and again")
    assert info["state"] == "running" and "OverflowError" in (info["last_error"] or ""), info
    assert await caget(srv.pv("overflow", "STATUS"), datatype=str, timeout=20) == "ERROR"
    assert "OverflowError" in await caget(srv.pv("overflow", "MESSAGE"), datatype=str, timeout=20)
    assert "OverflowError" in srv.log()


def test_requirements_cannot_leave_the_data_directory(server: Server, tmp_path: Path) -> None:
    """Issue 14, item 5: `-r FILE` / `-c FILE` read any file and the 422 quoted its first line;
    `-e git+file://` checked out into the service's own venv. Each is now refused at validation,
    by line number, before pip runs; the canary file is not quoted, nothing is left behind."""
    srv = server
    canary = tmp_path / "canary-secret.txt"
    canary.write_text("CANARY-FIRST-LINE-do-not-quote\n")
    other = make_repo(
        tmp_path / "git" / "other", {"setup.py": "raise SystemExit('must not run')\n"}
    )
    lines = [
        f"-r {canary}",
        f"-c {canary}",
        f"-e git+{other}#egg=other",
        f"other @ {other}",
        "--index-url https://127.0.0.1:1/simple",
        f"{canary}",
    ]
    for i, line in enumerate(lines):
        root = tmp_path / f"plugin{i}"
        make_repo(root, {".": EXAMPLES / "sync_monitor"})
        (root / "requirements.txt").write_text(f"numpy>=1\n{line}\n")
        r = srv.call(
            "POST", "/tasks", {"name": f"req{i}", "local_path": str(root)}, token=TOKEN, timeout=30
        )
        status, ctype, body = r.status, r.content_type, r.content
        assert status == 422 and ctype == "application/problem+json", (line, status, body[:300])
        problem = json.loads(body)
        assert "requirements.txt line 2" in problem["detail"], (line, problem["detail"])
        assert b"CANARY-FIRST-LINE" not in body and str(canary).encode() not in body, (
            line,
            body[:300],
        )
    assert canary.read_text() == "CANARY-FIRST-LINE-do-not-quote\n"
    deps = srv.data_dir / "deps"
    assert not deps.exists() or list(deps.iterdir()) == [], "nothing installed, nothing left behind"
    assert srv.call("GET", "/health").body["status"] == "ok"


def test_plugin_files_must_be_in_the_repository(server: Server, tmp_path: Path) -> None:
    """Issue 14, item 5 (last point): config.yaml, requirements.txt and the .py files must
    resolve inside the clone: a symlink to a file elsewhere is refused, its content not read back."""
    srv = server
    canary = tmp_path / "canary-outside.yaml"
    canary.write_text("CANARY: outside the repository\n")
    outside_py = tmp_path / "outside.py"
    outside_py.write_text("raise SystemExit('CANARY: must not be imported')\n")
    cases = {"config.yaml": canary, "evil.py": outside_py, "requirements.txt": canary}
    for i, (link, target) in enumerate(cases.items()):
        root = tmp_path / f"linked{i}"
        make_repo(root, {".": EXAMPLES / "sync_monitor"})
        (root / link).unlink(missing_ok=True)
        (root / link).symlink_to(target)
        r = srv.call(
            "POST",
            "/tasks",
            {"name": f"linked{i}", "local_path": str(root)},
            token=TOKEN,
            timeout=30,
        )
        status, body = r.status, r.content
        assert status == 422 and b"leads outside the repository" in body, (link, status, body[:300])
        assert b"CANARY" not in body and str(target).encode() not in body, (link, body[:300])
    assert canary.read_text() == "CANARY: outside the repository\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_import_check_is_bounded(server: Server, tmp_path: Path) -> None:
    """Issue 14, item 4: an import that forks a child keeping stdout open held the add (and
    the API with it) for the whole import limit; one printing gigabytes grew the service without
    bound. Now the child's process group is ended when the child is done, and only the tail of
    its output is kept."""
    srv = server
    pidfile = tmp_path / "grandchild.pid"
    forker = tmp_path / "forker"
    make_repo(forker, {".": EXAMPLES / "sync_monitor"})
    (forker / "monitor.py").write_text(
        (forker / "monitor.py").read_text()
        + textwrap.dedent(f"""
        import os as _os, time as _time
        if _os.fork() == 0:  # a daemon that keeps the inherited stdout open
            open({str(pidfile)!r}, "w").write(str(_os.getpid()))
            _time.sleep(300)
            _os._exit(0)
        raise RuntimeError("refused after forking")
        """)
    )
    proc = psutil.Process(srv.pid)
    rss_before = proc.memory_info().rss
    t0 = time.monotonic()
    r = srv.call(
        "POST", "/tasks", {"name": "forker", "local_path": str(forker)}, token=TOKEN, timeout=30
    )
    status, body = r.status, r.content
    took = time.monotonic() - t0
    assert pidfile.exists(), "the import's fork ran (the test is meaningful)"
    grandchild = int(pidfile.read_text())
    wait_for_sync(
        lambda: not _alive(grandchild), timeout=10, what="the grandchild killed with its group"
    )
    assert took < 15, f"the add waited {took:.1f}s on a pipe a grandchild kept open"
    # the child's own report was read although the grandchild held the pipe
    assert status == 422 and b"refused after forking" in body, body[:300]

    loud = tmp_path / "loud"
    make_repo(loud, {".": EXAMPLES / "sync_monitor"})
    (loud / "monitor.py").write_text(
        (loud / "monitor.py").read_text()
        + textwrap.dedent("""
        import sys as _sys
        _chunk = "x" * (1 << 20) + "\\n"
        for _ in range(200):  # 200 MB on stdout, then a failure
            _sys.stdout.write(_chunk)
        raise RuntimeError("loud import")
        """)
    )
    r = srv.call(
        "POST", "/tasks", {"name": "loud", "local_path": str(loud)}, token=TOKEN, timeout=30
    )
    status, body = r.status, r.content
    assert status == 422 and len(body) < 100_000, (status, len(body))
    grown = proc.memory_info().rss - rss_before
    assert grown < 150 * (1 << 20), f"the service grew by {grown >> 20} MB reading a child's output"
    assert srv.call("GET", "/health").body["status"] == "ok"


def test_a_reload_does_not_wait_for_a_slow_add(server: Server, tmp_path: Path) -> None:
    """Issue 14, item 4 (last point): with an add in flight (an import that sleeps) and another
    change due, HTTP stopped answering for the add's whole limit. Now the due reload is put
    off while HTTP keeps answering (adds finishing meanwhile join it), for a few seconds; then
    the add is abandoned: it answers 503 (nothing registered, nothing left behind) and the
    next generation serves everyone else."""
    import threading

    srv = server
    slow = tmp_path / "slow"
    make_repo(slow, {".": EXAMPLES / "sync_monitor"})
    (slow / "monitor.py").write_text(
        (slow / "monitor.py").read_text() + "\nimport time as _t\n_t.sleep(25)\n"
    )
    answer: dict[str, Any] = {}

    def add_slow() -> None:
        t0 = time.monotonic()
        r = srv.call(
            "POST", "/tasks", {"name": "slow", "local_path": str(slow)}, token=TOKEN, timeout=30
        )
        answer["status"], answer["body"] = r.status, r.content
        answer["took"] = time.monotonic() - t0

    h0 = srv.call("GET", "/health").body["generation"]
    adder = threading.Thread(target=add_slow)
    adder.start()
    wait_for_sync(lambda: srv.importing("slow"), timeout=10, what="the slow import to run")
    t0 = time.monotonic()
    r = srv.call(
        "DELETE", "/tasks/async_monitor", token=TOKEN, timeout=30
    )  # another change: a reload
    assert r.status == 200, r.content
    # Part of the test, not a wait for a condition: the reload falls due (IOCMNG_RELOAD_DELAY)
    # and stays put off for the add; HTTP must answer promptly meanwhile.
    time.sleep(2.0)
    t1 = time.monotonic()
    assert srv.call("GET", "/health", timeout=30).status == 200 and time.monotonic() - t1 < 2.0
    wait_for_sync(
        lambda: srv.call("GET", "/health").body["generation"] > h0,
        timeout=60,
        interval=0.2,
        what="the next generation",
    )
    served = time.monotonic() - t0
    adder.join(60)
    assert served < 20, f"the reload waited {served:.1f}s for the add in flight"
    assert answer["status"] == 503 and b"send the request again" in answer["body"], answer
    assert answer["took"] < 20, answer["took"]
    assert srv.call("GET", "/tasks/slow").status == 404
    for sub in ("repos", "deps"):
        d = srv.data_dir / sub
        assert not d.exists() or not [p for p in d.iterdir() if p.name.startswith("slow")], sub


def _hostile_plugin(root: Path, marker: Path) -> Path:
    """A plugin whose import writes ``marker``: if it exists, the service ran the code."""
    make_repo(root, {".": EXAMPLES / "sync_monitor"})
    (root / "monitor.py").write_text(
        (root / "monitor.py").read_text() + f"\nopen({str(marker)!r}, 'w').write('imported')\n"
    )
    return root


def test_secure_default_bind_address(tmp_path: Path, server_factory: ServerFactory) -> None:
    """Issue 14, item 1: with no settings the API listens on loopback only; a non-loopback
    address without a token refuses to start, unless IOCMNG_ALLOW_INSECURE says so (and then
    each start logs a warning); the token can come from a file (a mounted Secret)."""
    # defaults: no IOCMNG_HOST, no token -> 127.0.0.1
    srv = server_factory("d1", data_dir=tmp_path / "d1", env={"IOCMNG_HOST": None})
    listening = {
        c.laddr for c in psutil.Process(srv.pid).net_connections("tcp") if c.status == "LISTEN"
    }
    assert ("127.0.0.1", srv.http_port) in listening, listening
    assert f"HTTP on 127.0.0.1:{srv.http_port}" in srv.log()
    assert "IOCMNG_ALLOW_INSECURE" not in srv.log()
    srv.kill()
    # all interfaces, no token: refused before anything listens (exit 2, the fix named)
    srv = server_factory(
        "d2", data_dir=tmp_path / "d2", env={"IOCMNG_HOST": "0.0.0.0"}, start=False
    )
    proc = subprocess.run(
        [sys.executable, "-m", "iocmng"],
        env=srv.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    for fix in (
        "IOCMNG_API_TOKEN",
        "IOCMNG_API_TOKEN_FILE",
        "IOCMNG_HOST=127.0.0.1",
        "IOCMNG_ALLOW_INSECURE",
    ):
        assert fix in proc.stderr, (fix, proc.stderr)
    assert not (tmp_path / "d2").exists(), "nothing was set up"
    # IOCMNG_ALLOW_INSECURE=true on a non-loopback *name*: serves, and says so at the start.
    # (The machine's host name, when it resolves to a loopback address here: no test binds
    # an interface other machines could reach.)
    name = socket.gethostname()
    try:
        resolves_to_loopback = ipaddress.ip_address(socket.gethostbyname(name)).is_loopback
    except OSError:
        resolves_to_loopback = False
    if resolves_to_loopback:
        srv = server_factory(
            "d3",
            data_dir=tmp_path / "d3",
            env={"IOCMNG_HOST": name, "IOCMNG_ALLOW_INSECURE": "true"},
        )
        assert "IOCMNG_ALLOW_INSECURE=true: the API on" in srv.log() and "has no token" in srv.log()
        srv.kill()
    # the token from a file: the API is guarded by it, and it never reaches the log
    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    srv = server_factory(
        "d4", data_dir=tmp_path / "d4", env={"IOCMNG_API_TOKEN_FILE": str(token_file)}
    )
    assert srv.call("POST", "/jobs/nothing/run").status == 401
    assert srv.call("POST", "/jobs/nothing/run", token=TOKEN).status == 404
    assert TOKEN not in srv.log()
    srv.kill()
    assert TOKEN not in "".join(
        p.read_text(errors="replace") for p in (tmp_path / "d4").rglob("*") if p.is_file()
    )


def test_dns_rebinding_is_refused(tmp_path: Path, server_factory: ServerFactory) -> None:
    """Issue 14, item 2: a page whose own name was made to resolve to this machine (DNS
    rebinding) sends its name as Host; with the defaults (loopback, no token) it could add
    code. Only IP addresses, loopback names, this machine's names and IOCMNG_ALLOWED_HOSTS pass."""
    srv = server_factory(
        env={"IOCMNG_HOST": None, "IOCMNG_ALLOWED_HOSTS": "iocmng.example.org, *.lab.example"}
    )
    marker = tmp_path / "imported.marker"
    plugin = _hostile_plugin(tmp_path / "hostile", marker)
    add = json.dumps({"name": "rebound", "local_path": str(plugin)}).encode()
    port = srv.http_port
    for host in (
        f"attacker.example:{port}",
        "attacker.example",
        f"lab.example.attacker.example:{port}",
        f"iocmng.example.org.attacker.example:{port}",
    ):
        status, body = _raw(
            srv, "POST", "/tasks", add, {"Host": host, "Content-Type": "application/json"}
        )
        assert status == 403 and b"IOCMNG_ALLOWED_HOSTS" in body, (host, status, body[:300])
        status, body = _raw(srv, "GET", "/plugins", None, {"Host": host})
        assert status == 403, (host, status, body[:200])
    assert not marker.exists(), "the plugin's code ran"
    assert srv.call("GET", "/plugins/rebound").status == 404
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "LOCALHOST",
        f"{socket.gethostname()}:{port}",
        f"iocmng.example.org:{port}",
        "a.lab.example",
        f"[::1]:{port}",
        "10.1.2.3",
    ):
        status, body = _raw(srv, "GET", "/plugins", None, {"Host": host})
        assert status == 200, (host, status, body[:200])
