"""A plugin written the iocmng 2.7.9 way (its base-class members: set_output,
get_input, self.pvs, self.running, self.enabled, self.beamline_config,
self.pv_definitions, get_datetime, get_timems; last_result for jobs) runs
unchanged under ``iocmng run``, read over Channel Access."""

from __future__ import annotations

import re
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aioca import caget, caput
from conftest import EpicsPorts, wait_for

TASK = """
import threading
import time

from iocmng import TaskBase


class LegacyTask(TaskBase):
    def initialize(self):
        self.start_ms = self.get_timems()
        self.ticks = 0
        self.set_output("BEAMLINE", self.beamline_config.get("beamline", "none"))
        self.set_output("NDEF", len(self.pv_definitions["inputs"]) + len(self.pv_definitions["outputs"]))
        self.set_output("NOSUCH", 1)  # 2.7.9 ignored an unknown name
        self.worker = threading.Thread(target=self.work, daemon=True)
        self.worker.start()

    def work(self):
        while not self.running:  # running: after initialize() (2.7.9: after start())
            time.sleep(0.02)
        while self.running:
            self.ticks += 1
            time.sleep(0.02)
        self.logger.info("worker ended")

    def execute(self):
        gain = self.get_input("GAIN")
        self.set_output("OUT", gain * 2)
        self.pvs["VIA_PVS"].set(gain + 1)
        self.set_output("FLAGS", int(self.running) * 10 + int(self.enabled))
        self.set_output("TICKING", int(self.ticks > 0))
        self.set_output("STAMP", self.get_datetime()[:10])
        self.set_output("AGE_MS", self.get_timems() - self.start_ms)
        self.pvs["MESSAGE"].set("legacy " + str(self.get_output("NOSUCH")))

    def cleanup(self):
        self.worker.join(5)
        self.logger.info("legacy cleanup, worker alive=%s", self.worker.is_alive())
"""

TASK_CONFIG = """
parameters: {interval: 0.1}
arguments:
  inputs:
    GAIN: {type: float, value: 1.5}
  outputs:
    OUT: {type: float}
    VIA_PVS: {type: float}
    FLAGS: {type: int}
    TICKING: {type: int}
    NDEF: {type: int}
    AGE_MS: {type: float}
    BEAMLINE: {type: string}
    STAMP: {type: string}
"""

JOB = """
from iocmng import JobBase
from iocmng.plugin.job import JobResult


class LegacyJob(JobBase):
    def initialize(self):
        pass

    def execute(self):
        self.set_output("PREV", "none" if self.last_result is None else self.last_result.message)
        self.set_output("WHEN", self.get_datetime())
        return JobResult(success=True, data={"ms": self.get_timems()}, message="legacy done")
"""

JOB_CONFIG = """
arguments:
  outputs:
    PREV: {type: string}
    WHEN: {type: string}
"""


def write(root: Path, name: str, code: str, config: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "plugin.py").write_text(textwrap.dedent(code))
    (d / "config.yaml").write_text(textwrap.dedent(config))
    return d


async def _equal(pv: str, expected: Any) -> bool:
    return await caget(pv, timeout=5) == expected


async def test_plugin_written_for_2_7_9_runs_unchanged(
    runner_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("beamline: sparc\nnamespace: sparc\n")
    env = EpicsPorts.env
    monkeypatch.setattr(
        EpicsPorts, "env", lambda self: {**env(self), "IOCMNG_BEAMLINE_CONFIG": str(values)}
    )
    task = write(tmp_path, "legacy_task", TASK, TASK_CONFIG)
    job = write(tmp_path, "legacy_job", JOB, JOB_CONFIG)
    runner = runner_factory([task, job])

    def pv(short: str, plugin: str = "legacy_task") -> str:
        return runner.pv(plugin, short)

    await wait_for(lambda: _equal(pv("OUT"), 3.0), what="set_output of get_input * 2")
    assert await caget(pv("VIA_PVS")) == 2.5
    assert await caget(pv("FLAGS")) == 11, "running and enabled"
    await wait_for(lambda: _equal(pv("TICKING"), 1), what="the plugin's thread saw running")
    assert await caget(pv("BEAMLINE")) == "sparc"
    assert await caget(pv("NDEF")) == 9
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", await caget(pv("STAMP")))
    assert 0 <= await caget(pv("AGE_MS")) < 60_000
    assert await caget(pv("MESSAGE")) == "legacy None"

    await caput(pv("GAIN"), 4.0, wait=True, timeout=5)
    await wait_for(lambda: _equal(pv("OUT"), 8.0), what="a new input through get_input")
    await caput(pv("ENABLE"), 0, wait=True, timeout=5)
    await wait_for(lambda: _equal(pv("STATUS"), 2), what="paused")
    await caput(pv("ENABLE"), 1, wait=True, timeout=5)
    await wait_for(lambda: _equal(pv("FLAGS"), 11), what="running again")

    # the runner ran the job once at start: no previous result then
    assert await caget(pv("PREV", "legacy_job")) == "none"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", await caget(pv("WHEN", "legacy_job"))
    )
    assert await caget(pv("MESSAGE", "legacy_job")) == "legacy done"

    rc = runner.stop(signal.SIGINT)
    log = runner.stderr()
    assert rc == 0, log
    assert "worker ended" in log and "worker alive=False" in log, log
    assert "is not a PV of this plugin" in log and log.count("'NOSUCH' is not a PV") == 1, log
