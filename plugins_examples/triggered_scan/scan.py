"""A triggered scan: each RUN=1 moves a simulated axis over a few points."""

import asyncio

from iocmng import TaskBase


class TriggeredScan(TaskBase):
    async def initialize(self):
        self.scans = 0

    async def execute(self):
        start, stop = self.get_pv("START"), self.get_pv("STOP")
        points = int(self.parameters["points"])
        for i in range(points):
            pos = start + (stop - start) * i / max(points - 1, 1)
            self.set_pv("POSITION", pos)
            await asyncio.sleep(float(self.parameters["dwell"]))
        self.scans += 1
        self.set_pv("SCANS", self.scans)
        self.set_pv("RESULT", f"scan {self.scans}: {points} pts")

    async def cleanup(self):
        pass
