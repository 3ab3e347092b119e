"""Running plugins on the one event loop: the runtime, each plugin's handle and
wiring, the worker pool for sync methods, the loader and the loop watchdog."""
