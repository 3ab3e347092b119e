"""A job that reports a few facts about the host it runs on."""

import os
import shutil
import time

from iocmng import JobBase, JobResult


class Diagnostics(JobBase):
    def initialize(self):
        self.started = time.time()

    def execute(self) -> JobResult:
        time.sleep(float(self.parameters.get("sleep", 0)))
        if self.parameters.get("fail"):
            raise RuntimeError("diagnostics asked to fail")
        data = {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 3),
            "load": os.getloadavg()[0],
        }
        if self.parameters.get("check_disk"):
            usage = shutil.disk_usage("/")
            data["disk_free_gb"] = round(usage.free / 1e9, 2)
        return JobResult(success=True, data=data, message="OK")
