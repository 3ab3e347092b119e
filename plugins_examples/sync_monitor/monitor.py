"""A continuous monitor written with plain (sync) methods."""

from iocmng import TaskBase


class SyncMonitor(TaskBase):
    def initialize(self):
        self.attempts = 0  # cycle_count counts successes only; failures need their own count
        self.logger.info("starting with threshold %s", self.parameters["threshold"])

    def execute(self):
        self.attempts += 1
        fail_every = int(self.parameters.get("fail_every", 0))
        if fail_every and self.attempts % fail_every == 0:
            raise RuntimeError("simulated failure")
        reading = self.get_pv("SETPOINT") * self.get_pv("GAIN")
        self.set_pv("READING", reading)
        self.set_pv("ALARM", reading > self.parameters["threshold"])

    def on_input(self, name, value):
        self.set_pv("LAST_INPUT", f"{name}={value}")

    def cleanup(self):
        self.logger.info("stopped after %d cycles", self.cycle_count)
