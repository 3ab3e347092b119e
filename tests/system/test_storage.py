"""Resource limits (issue 7, item 5): the data directory full, then read-only.

The data directory is a 2 MB tmpfs mounted by the test on a directory it
made (needs root and mount; skipped otherwise). A running plugin is added
first. Then the tmpfs is filled by a canary file, and later made read-only
(a read-only bind mount over it). Each time:

* an add is refused with 507 problem+json naming the cause, and leaves no
  clone and no registry change behind;
* a removal is refused with 507 and the plugin keeps running;
* ``registry.json`` is byte-for-byte what it was; the running plugin keeps
  cycling; ``/health`` stays ok.

After space comes back, an add works again.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EXAMPLES, wait_for_sync

from .conftest import Server, ServerFactory, make_repo

pytestmark = pytest.mark.timeout(180)
PROBLEM = "application/problem+json"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "data"
    mnt.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def _writable(d: Path) -> bool:
    probe = d / ".probe"
    try:
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError:
        return False
    return True


def cycles(srv: Server, name: str) -> int:
    return srv.call("GET", f"/tasks/{name}").body["cycle_count"]


def assert_refused(srv: Server, repo: str, registry: bytes, why: str) -> None:
    r = srv.call("POST", "/tasks", {"name": "refused", "git_url": repo})
    assert r.status == 507 and r.content_type == PROBLEM, (r.status, r.body)
    assert why in r.body["detail"] and "nothing was changed" in r.body["detail"], r.body
    r = srv.call("DELETE", "/tasks/keeper")
    assert r.status == 507 and r.content_type == PROBLEM, (r.status, r.body)
    assert (srv.data_dir / "registry.json").read_bytes() == registry
    repos = srv.data_dir / "repos"
    assert [p.name for p in repos.iterdir()] == [
        Path(json.loads(registry)["plugins"]["keeper"]["owned_dir"]).name
    ]
    c0 = cycles(srv, "keeper")
    wait_for_sync(lambda: cycles(srv, "keeper") >= c0 + 3, timeout=10, what="keeper keeps cycling")
    assert srv.call("GET", "/tasks/keeper").body["state"] == "running"
    assert srv.call("GET", "/health").body["status"] == "ok"


def test_full_then_read_only(tmp_path: Path, tmpfs: Path, server_factory: ServerFactory) -> None:
    # (tmpfs before server_factory: the server is stopped before the tmpfs goes)
    srv = server_factory(data_dir=tmpfs, env={"IOCMNG_RELOAD_DELAY": "0.1"}, start=False)
    repo = make_repo(tmp_path / "git" / "monitor", {".": EXAMPLES / "sync_monitor"})
    srv.start()
    r = srv.call(
        "POST", "/tasks", {"name": "keeper", "git_url": repo, "parameters": {"interval": 0.2}}
    )
    assert r.status == 201, r.body
    gen = r.body["generation"]
    wait_for_sync(
        lambda: srv.call("GET", "/health").body["generation"] >= gen, timeout=45, what="reload"
    )
    wait_for_sync(
        lambda: srv.call("GET", "/tasks/keeper").body["state"] == "running",
        timeout=20,
        what="running",
    )
    registry = (srv.data_dir / "registry.json").read_bytes()

    # -- full: a canary file takes every free byte -------------------------------------------------
    canary = tmpfs / "canary-fill"
    with open(canary, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    for block in (4096, 512, 1):  # the last bytes, too
        try:
            with open(tmpfs / f"canary-{block}", "wb") as f:
                while True:
                    f.write(b"\0" * block)
                    f.flush()
        except OSError:
            pass
    assert_refused(srv, repo, registry, "No space left on device")

    # -- read-only ----------------------------------------------------------------------------------
    for f in tmpfs.glob("canary-*"):
        f.unlink()
    # The server keeps one file open for writing here (the watchdog's C-level trace, written
    # only if the process is ended by it), so the tmpfs itself cannot be remounted read-only:
    # a read-only bind mount over it makes every new write fail with EROFS instead. Nothing
    # else may stay open: a refused clone's lock file (deleted) once did, keeping the space used.
    import os

    fds = Path(f"/proc/{srv.pid}/fd")
    held = [os.readlink(p) for p in fds.iterdir() if str(tmpfs) in os.readlink(p)]
    assert str(tmpfs / "watchdog-trace.txt") in held and not [
        h for h in held if "(deleted)" in h
    ], held
    subprocess.run(
        ["mount", "--bind", str(tmpfs), str(tmpfs)], check=True, capture_output=True, timeout=10
    )
    try:
        subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(tmpfs)],
            check=True,
            capture_output=True,
            timeout=10,
        )
        assert not _writable(tmpfs)
        assert_refused(srv, repo, registry, "Read-only file system")
    finally:
        subprocess.run(["umount", str(tmpfs)], check=True, timeout=10)  # the bind mount on top

    # -- space back: adds work again ---------------------------------------------------------------
    wait_for_sync(lambda: _writable(tmpfs), timeout=10, what="the data directory writable again")
    r = srv.call("POST", "/tasks", {"name": "after", "git_url": repo})
    assert r.status == 201, r.body
    # dulwich's lock file, closed by our gc.collect() after the refused clone, reports the
    # ENOSPC of its close as "Exception ignored in _GitFile.__del__": not an error of ours.
    chunks = srv.log().split("Traceback")[1:]
    assert all("dulwich/file.py" in c for c in chunks), srv.log()[-3000:]


def test_a_data_directory_restored_elsewhere_works(
    tmp_path: Path, server_factory: ServerFactory
) -> None:
    """operations.md's backup and restore: the registry holds the clones' paths relative to
    the data directory, so a copy restored under another path serves the same plugins."""
    repo = make_repo(tmp_path / "git" / "mon", {".": EXAMPLES / "sync_monitor"})
    old = tmp_path / "old-data"
    first = server_factory(name="first", data_dir=old)
    r = first.call("POST", "/tasks", {"name": "mon", "git_url": repo}, timeout=120)
    assert r.status == 201, r.text
    first.wait_generation(r.body["generation"])
    assert first.stop() == 0
    on_disk = json.loads((old / "registry.json").read_text())
    assert not Path(on_disk["plugins"]["mon"]["plugin_dir"]).is_absolute(), on_disk

    new = tmp_path / "restored" / "data"
    new.parent.mkdir()
    old.rename(new)  # the old path is gone: nothing can be read from it
    second = server_factory(name="second", data_dir=new)
    mon = wait_for_sync(
        lambda: (i := second.call("GET", "/tasks/mon").body)["state"] == "running" and i,
        timeout=30,
        what="the restored plugin running",
    )
    assert mon["last_error"] is None, mon
    start = mon["cycle_count"]
    wait_for_sync(lambda: cycles(second, "mon") > start, timeout=15, what="the plugin cycling")
    assert sorted(p.name for p in (new / "repos").iterdir()) == [
        Path(on_disk["plugins"]["mon"]["owned_dir"]).name
    ]  # the clone was kept, not taken for an orphan
