"""What the service reads: config.yaml models, the service's settings, the boot list.

pydantic models (``extra="forbid"``) and their loaders; no I/O beyond reading
the files named, nothing of EPICS or of the event loop.
"""
