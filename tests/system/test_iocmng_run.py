"""``iocmng-run``: the reference's runner command line as a thin alias of ``iocmng run``.

The PV names are the reference's: ``--prefix P`` is the whole prefix, PVs
are ``P:<PV>`` with no plugin segment. A plugin given as a file and as an
importable module (``-c CLASS``), ``-p`` values converted as the reference
does, ``--pvout``, and the refusals (unknown module, unknown class).

The three call forms of the epik8s ioc-chart and dashboard, with the prefix
and name from the chart's ``IOC_PREFIX`` / ``IOC_NAME``: ``-m FILE``; no
``-m`` with one plugin ``.py`` beside config.yaml; config.yaml alone (a
declarative task). PVs are read with aioca (CA) and p4p (PVA).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    EXAMPLES,
    EpicsPorts,
    _purge_ca_channels,
    pv_answers,
    pva_context,
    random_prefix,
    wait_for,
    wait_for_sync,
)

pytestmark = pytest.mark.timeout(90)


def start(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], EpicsPorts, Path]:
    """``iocmng-run ARGS`` in ``cwd``; IOC_PREFIX/IOC_NAME only from ``env`` (the chart sets them)."""
    ports = EpicsPorts.allocate()
    full = {k: v for k, v in ports.env().items() if k not in ("IOC_PREFIX", "IOC_NAME")}
    full.update(env or {})
    log = cwd.parent / f"run-{time.monotonic_ns()}.log"  # not among the plugin's files
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "iocmng.runtime.run_alias", *args],
            env=full,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return proc, ports, log


def serve(
    args: list[str], cwd: Path, probe: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], EpicsPorts, Path]:
    proc, ports, log = start(args, cwd, env)

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


def stop(proc: subprocess.Popen[bytes], log: Path, sig: int = signal.SIGINT) -> str:
    _purge_ca_channels()  # before the server goes: no CA callbacks into the test's closed loop
    proc.send_signal(sig)
    assert proc.wait(30) == 0, log.read_text()
    return log.read_text()


def test_file_module_with_the_references_pv_names(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES / "sync_monitor", tmp_path / "src")
    prefix = f"{random_prefix()}:SOFTINTLK"
    args = [
        "-m",
        "src/monitor.py",
        "--config",
        "src/config.yaml",
        "--prefix",
        prefix,
        "--name",
        "softinterlock",
        "-p",
        "threshold=5",
        "-p",
        "interval=0.5",
        "--pvout",
        "out/pvs.txt",
    ]
    proc, ports, log = serve(args, tmp_path, f"{prefix}:STATUS")
    try:
        assert pv_answers(ports, f"{prefix}:READING")
        with pytest.raises(TimeoutError):  # no plugin segment is added
            pv_answers(ports, f"{prefix}:SOFTINTERLOCK:STATUS", timeout=0.5)
        pvs = (tmp_path / "out" / "pvs.txt").read_text().split()
        assert pvs == sorted(
            f"{prefix}:{k}"
            for k in (
                "ENABLE",
                "STATUS",
                "MESSAGE",
                "CYCLE_COUNT",
                "SETPOINT",
                "GAIN",
                "READING",
                "ALARM",
                "LAST_INPUT",
            )
        )
    finally:
        text = stop(proc, log)
    assert "starting with threshold 5" in text  # -p threshold=5 is the int 5, as in the reference
    assert "softinterlock: stopped after" in text


def test_importable_module_and_class(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "diagnostics_job" / "diagnostics.py", tmp_path / "diagjob.py")
    shutil.copy(EXAMPLES / "diagnostics_job" / "config.yaml", tmp_path / "diag.yaml")
    prefix = f"{random_prefix()}:DIAG"
    args = [
        "-m",
        "diagjob",
        "-c",
        "Diagnostics",
        "--config",
        "diag.yaml",
        "--prefix",
        prefix,
        "--pva",
        "false",
        "-p",
        "check_disk=false",
    ]
    proc, ports, log = serve(args, tmp_path, f"{prefix}:STATUS")
    try:
        assert pv_answers(ports, f"{prefix}:MESSAGE")
    finally:
        text = stop(proc, log)
    result = json.loads(next(line for line in text.splitlines() if line.startswith("{")))
    assert result["success"] is True and result["job"] == "diagnostics"


@pytest.mark.parametrize(
    "args, message",
    [
        (["-m", "no_such_module_xyz"], "No module named 'no_such_module_xyz'"),
        (["-m", "missing.py"], "-m missing.py: no such file"),
        (["-m", "diagjob", "-c", "Nope"], "-c Nope: no TaskBase/JobBase subclass"),
        (["-m", "diagjob", "--prefix", "bad prefix!"], "--prefix 'bad prefix!'"),
    ],
)
def test_refusals(tmp_path: Path, args: list[str], message: str) -> None:
    shutil.copy(EXAMPLES / "diagnostics_job" / "diagnostics.py", tmp_path / "diagjob.py")
    proc, _, log = start(args, tmp_path)
    assert proc.wait(30) == 2
    assert message in log.read_text(), log.read_text()


# -- the call forms of the epik8s ioc-chart / dashboard ------------------------------------
DECLARATIVE = """# a declarative task: config.yaml alone, no Python
parameters: {mode: continuous, interval: 0.2}
pvs:
  inputs:
    x: {type: float, value: 2.0}
  outputs:
    y: {type: float}
    big: {type: bool}
transforms:
  - {output: y, expression: "x * 3"}
rules:
  - {id: BIG, condition: "y > 10", outputs: {big: 1}}
rule_defaults: {big: 0}
"""

HELPER = "SCALE = 2.0  # a helper module beside the plugin, imported by nobody here\n"
MONITOR = (EXAMPLES / "sync_monitor" / "monitor.py").read_text()
ABSTRACT = (
    "from iocmng import TaskBase\n\n\nclass Half(TaskBase):\n    def execute(self):\n        pass\n"
)
BROKEN = "from iocmng import TaskBase\n\nraise RuntimeError('boom')\n"


def chart_env(prefix: str, name: str) -> dict[str, str]:
    """What the ioc-chart puts in the pod's environment (iocprefix often ends in ':')."""
    return {"IOC_PREFIX": f"{prefix}:", "IOC_NAME": name, "IOC_VERSION": "latest"}


async def _equal(pv: str, expected: object) -> bool:
    from aioca import caget

    return await caget(pv, timeout=5) == expected


async def _pva_equal(ctx: Any, pv: str, expected: float) -> bool:
    return float(await ctx.get(pv)) == expected


async def test_chart_form_module_given_prefix_and_name_from_the_env(tmp_path: Path) -> None:
    """``iocmng-run -m monitor.py --config config.yaml``: IOC_PREFIX is the whole prefix, IOC_NAME the name."""
    from aioca import caput

    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLES / "sync_monitor", cfg)
    prefix = f"{random_prefix()}:SOFTINTLK"
    proc, ports, log = serve(
        ["-m", "monitor.py", "--config", "config.yaml", "-p", "interval=0.2"],
        cfg,
        f"{prefix}:STATUS",
        env=chart_env(prefix, "softinterlock"),
    )
    try:
        await wait_for(
            lambda: _equal(f"{prefix}:READING", 50.0), timeout=20, what="READING over CA"
        )
        await caput(f"{prefix}:SETPOINT", 80.0, wait=True, timeout=5)
        await wait_for(
            lambda: _equal(f"{prefix}:ALARM", 1), timeout=20, what="ALARM after SETPOINT 80"
        )
    finally:
        text = stop(proc, log, signal.SIGTERM)  # what a pod gets
    assert "softinterlock: stopped after" in text  # IOC_NAME named the plugin; cleanup() ran


async def test_chart_form_config_only_finds_the_one_plugin_file(tmp_path: Path) -> None:
    """``iocmng-run --config config.yaml`` in a directory with one plugin ``.py`` (and helpers) runs it."""
    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLES / "sync_monitor", cfg)
    (cfg / "helpers.py").write_text(HELPER)  # not a plugin: no TaskBase/JobBase class in it
    (cfg / "_private.py").write_text("raise SystemExit('never imported')\n")
    (cfg / "start.sh").write_text("#!/bin/sh\nexec iocmng-run --config config.yaml\n")
    prefix = f"{random_prefix()}:MON"
    proc, ports, log = serve(
        ["--config", "config.yaml", "-p", "interval=0.2", "--pvout", "../pvs.txt"],
        cfg,
        f"{prefix}:STATUS",
        env=chart_env(prefix, "mon"),
    )
    ctx = pva_context(ports)
    try:
        await wait_for(
            lambda: _pva_equal(ctx, f"{prefix}:READING", 50.0), timeout=20, what="READING over PVA"
        )
        await ctx.put(f"{prefix}:GAIN", 0.5)
        await wait_for(
            lambda: _pva_equal(ctx, f"{prefix}:READING", 25.0),
            timeout=20,
            what="READING = 50 * 0.5",
        )
    finally:
        ctx.close()
        text = stop(proc, log)
    assert f"{prefix}:READING" in (tmp_path / "pvs.txt").read_text().split()
    assert "class SyncMonitor from" in text and "mon: stopped after" in text


async def test_chart_form_declarative_config_alone(tmp_path: Path) -> None:
    """config.yaml with no ``.py`` beside it is a declarative task (the dashboard's declarative template)."""
    from aioca import caput

    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "config.yaml").write_text(DECLARATIVE)
    (cfg / "requirements.txt").write_text("iocmng>=2.5.0\n")  # as the dashboard writes it
    prefix = f"{random_prefix()}:DECL"
    proc, ports, log = serve(
        ["--config", "config.yaml"], cfg, f"{prefix}:y", env=chart_env(prefix, "decl")
    )
    ctx = pva_context(ports)
    try:
        await wait_for(lambda: _equal(f"{prefix}:y", 6.0), timeout=20, what="y = x * 3 over CA")
        await caput(f"{prefix}:x", 5.0, wait=True, timeout=5)
        await wait_for(lambda: _equal(f"{prefix}:y", 15.0), timeout=20, what="y after x = 5")
        assert (await ctx.get(f"{prefix}:big")).raw.value.index == 1  # the rule, seen over PVA
    finally:
        ctx.close()
        text = stop(proc, log)
    assert "declarative task" in text


@pytest.mark.parametrize(
    "files, args, message",
    [
        (
            {"a.py": MONITOR, "b.py": MONITOR, "util.py": HELPER},
            ["--config", "config.yaml"],
            "2 candidate plugin files beside config.yaml: a.py, b.py; choose one with -m FILE",
        ),
        ({"half.py": ABSTRACT}, [], "half.py: Half does not implement cleanup, initialize"),
        ({"bad.py": BROKEN}, [], "bad.py: import failed: RuntimeError: boom"),
        ({}, ["--config", "config.yaml"], "declares no links, rules or transforms"),
        ({}, [], "declares no links, rules or transforms"),  # ./config.yaml by default
        ({"config.yaml": None}, [], "no -m MODULE and no config.yaml here"),
        ({}, ["--config", "nope.yaml"], "--config nope.yaml: no such file"),
        ({}, ["-c", "SyncMonitor"], "-c CLASS needs -m MODULE"),
    ],
    ids=[
        "two-candidates",
        "abstract",
        "import-fails",
        "no-logic",
        "no-logic-default-config",
        "nothing",
        "missing-config",
        "class-alone",
    ],
)
def test_chart_form_refusals(
    tmp_path: Path, files: dict[str, str | None], args: list[str], message: str
) -> None:
    cfg = tmp_path / "config"
    cfg.mkdir()
    shutil.copy(EXAMPLES / "sync_monitor" / "config.yaml", cfg / "config.yaml")
    for name, text in files.items():
        if text is None:
            (cfg / name).unlink()
        else:
            (cfg / name).write_text(text)
    proc, _, log = start(args, cfg)
    assert proc.wait(30) == 2
    assert message in log.read_text(), log.read_text()


def test_bad_ioc_prefix_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLES / "sync_monitor", cfg)
    proc, _, log = start(["--config", "config.yaml"], cfg, env={"IOC_PREFIX": "bad prefix"})
    assert proc.wait(30) == 2
    assert "IOC_PREFIX 'bad prefix'" in log.read_text(), log.read_text()
