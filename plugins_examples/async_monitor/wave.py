"""A 10 Hz continuous task written with async methods."""

import asyncio
import math

from iocmng import TaskBase


class AsyncWave(TaskBase):
    async def initialize(self):
        self.samples = 0

    async def execute(self):
        if self.parameters.get("fail"):
            raise ValueError("configured to fail")
        await asyncio.sleep(0)  # a real plugin would await I/O here
        self.samples += 1
        value = self.parameters["amplitude"] * math.sin(self.samples / 10) + self.get_pv("OFFSET")
        self.set_pv("WAVE", value)
        self.set_pv("SAMPLES", self.samples)

    async def cleanup(self):
        self.logger.info("wave stopped")
