"""Churn, short (issue 7, item 4): ``bench/churn.py`` with 10 tasks and 2 cycles.

A warm-up cycle and a measured one, each adding a plugin from a ``file://``
repository (a reload), restarting it live (three times in a row) and removing
it (a reload), while CA and PVA monitors watch three tasks and two pollers
read ``/tasks`` and ``/health``. The script's verdicts (tolerances in its
docstring: fds +-10, threads +-5, RSS +30 %, data directory +-10 %, no failed
request, every monitor resumed after every reload, restarts live and not
growing the process, same PID, all tasks running, clean SIGTERM) must all
pass. The server runs the work tree's code. About 50 s, most of it CA
clients waiting for their next search after each reload (about 9 s each).
The full run (50 tasks, 3 minutes) and its figures: docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, EpicsPorts, free_port

pytestmark = pytest.mark.timeout(240)


def test_churn(tmp_path: Path) -> None:
    ports = EpicsPorts.allocate()
    port_list = [
        ports.ca_server,
        ports.ca_repeater,
        ports.pva_server,
        ports.pva_broadcast,
        free_port(),
    ]
    out = tmp_path / "churn.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "churn.py"),
            "--tasks",
            "10",
            "--cycles",
            "1",
            "--restarts",
            "3",
            "--settle",
            "2",
            "--src",
            "tree",
            "--ports",
            ",".join(map(str, port_list)),
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
    )
    summary = proc.stdout + proc.stderr[-3000:]
    print(proc.stdout)
    assert out.exists(), summary
    r = json.loads(out.read_text())
    failed = [k for k, v in r["verdicts"].items() if not v]
    assert not failed, f"failed verdicts {failed}:\n{summary}"
    assert proc.returncode == 0, summary
    assert r["cycles"] == 1 and r["reloads"] == 4  # the warm-up cycle's two reloads included
    assert r["failure_count"] == 0 and r["requests"] > 100
