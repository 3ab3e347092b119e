"""Reads one ophyd device per cycle; works (and says why) without it."""

from iocmng import TaskBase


def reading(device):
    """A number from the common device shapes: motors (position), signals/devices with get()."""
    if hasattr(device, "position"):
        return float(device.position)
    value = device.get()
    return float(getattr(value, "user_readback", value))


class DeviceMonitor(TaskBase):
    # Plain `def` methods run in a worker thread: ophyd calls block on
    # Channel Access, which must never happen on the event loop.
    def initialize(self):
        self.logger.info("devices available: %s", ", ".join(self.list_devices()) or "none")

    def execute(self):
        name = self.parameters["device"]
        available = self.list_devices()
        self.set_pv("DEVICES", len(available))
        device = self.get_device(name)
        if device is None:
            self.set_pv("CONNECTED", 0)
            if available:
                self.set_message(f"no device {name!r}; have {', '.join(available)}")
            else:
                self.set_message(f"{name}: devices off or not built")  # MESSAGE holds 40 chars
            return
        self.set_pv("POSITION", reading(device))
        self.set_pv("CONNECTED", bool(getattr(device, "connected", True)))
        self.set_message(f"{name}: ok")

    def cleanup(self):
        pass
