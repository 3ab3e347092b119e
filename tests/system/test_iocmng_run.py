"""``iocmng-run``: the reference's runner command line as a thin alias of ``iocmng run``.

The PV names are the reference's: ``--prefix P`` is the whole prefix, PVs
are ``P:<PV>`` with no plugin segment. A plugin given as a file and as an
importable module (``-c CLASS``), ``-p`` values converted as the reference
does, ``--pvout``, and the refusals (unknown module, unknown class).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, EpicsPorts, pv_answers, random_prefix, wait_for_sync

pytestmark = pytest.mark.timeout(90)


def start(args: list[str], cwd: Path) -> tuple[subprocess.Popen[bytes], EpicsPorts, Path]:
    ports = EpicsPorts.allocate()
    log = cwd / f"run-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "iocmng.run_alias", *args], env=ports.env(), cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, ports, log


def serve(args: list[str], cwd: Path, probe: str) -> tuple[subprocess.Popen[bytes], EpicsPorts, Path]:
    proc, ports, log = start(args, cwd)

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"iocmng-run exited with {proc.returncode}:\n{log.read_text()}")
        return pv_answers(ports, probe)

    try:
        wait_for_sync(ready, timeout=30, interval=0.2, what=f"{probe} to answer")
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, ports, log


def stop(proc: subprocess.Popen[bytes], log: Path) -> str:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0, log.read_text()
    return log.read_text()


def test_file_module_with_the_references_pv_names(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "sync_monitor", tmp_path / "src")
    prefix = f"{random_prefix()}:SOFTINTLK"
    args = ["-m", "src/monitor.py", "--config", "src/config.yaml", "--prefix", prefix, "--name", "softinterlock",
            "-p", "threshold=5", "-p", "interval=0.5", "--pvout", "out/pvs.txt"]
    proc, ports, log = serve(args, tmp_path, f"{prefix}:STATUS")
    try:
        assert pv_answers(ports, f"{prefix}:READING")
        with pytest.raises(TimeoutError):  # no plugin segment is added
            pv_answers(ports, f"{prefix}:SOFTINTERLOCK:STATUS", timeout=0.5)
        pvs = (tmp_path / "out" / "pvs.txt").read_text().split()
        assert pvs == sorted(f"{prefix}:{k}" for k in ("ENABLE", "STATUS", "MESSAGE", "CYCLE_COUNT", "SETPOINT",
                                                       "GAIN", "READING", "ALARM", "LAST_INPUT"))
    finally:
        text = stop(proc, log)
    assert "starting with threshold 5" in text  # -p threshold=5 is the int 5, as in the reference
    assert "softinterlock: stopped after" in text


def test_importable_module_and_class(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "diagnostics_job" / "diagnostics.py", tmp_path / "diagjob.py")
    shutil.copy(EXAMPLES / "diagnostics_job" / "config.yaml", tmp_path / "diag.yaml")
    prefix = f"{random_prefix()}:DIAG"
    args = ["-m", "diagjob", "-c", "Diagnostics", "--config", "diag.yaml", "--prefix", prefix,
            "--pva", "false", "-p", "check_disk=false"]
    proc, ports, log = serve(args, tmp_path, f"{prefix}:STATUS")
    try:
        assert pv_answers(ports, f"{prefix}:MESSAGE")
    finally:
        text = stop(proc, log)
    result = json.loads(next(line for line in text.splitlines() if line.startswith("{")))
    assert result["success"] is True and result["job"] == "diagnostics"


@pytest.mark.parametrize("args, message", [
    (["-m", "no_such_module_xyz"], "No module named 'no_such_module_xyz'"),
    (["-m", "missing.py"], "-m missing.py: no such file"),
    (["-m", "diagjob", "-c", "Nope"], "-c Nope: no TaskBase/JobBase subclass"),
    (["-m", "diagjob", "--prefix", "bad prefix!"], "--prefix 'bad prefix!'"),
])
def test_refusals(tmp_path: Path, args: list[str], message: str) -> None:
    shutil.copy(EXAMPLES / "diagnostics_job" / "diagnostics.py", tmp_path / "diagjob.py")
    proc, _, log = start(args, tmp_path)
    assert proc.wait(30) == 2
    assert message in log.read_text(), log.read_text()
