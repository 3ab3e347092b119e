"""The C-level stall timer's trace names the plugin on the loop thread (iocmng/runtime/watchdog.py).

The trace is a real one: ``faulthandler`` dumps every thread while a
function in a plugin-like directory runs inside an asyncio loop, with a
second thread running code of another plugin (a sync plugin's worker) that
must not be blamed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from pathlib import Path

from iocmng.runtime.watchdog import plugin_of_task, stalled_plugin_in_trace


def load(path: Path, name: str) -> object:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_trace(tmp_path: Path) -> str:
    (tmp_path / "looper").mkdir()
    (tmp_path / "looper" / "plugin.py").write_text(
        "import faulthandler\n"
        "def spin(out):\n"
        "    faulthandler.dump_traceback(file=out, all_threads=True)\n"
    )
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "plugin.py").write_text(
        "def work(started, release):\n    started.set()\n    release.wait(10)\n"
    )
    looper = load(tmp_path / "looper" / "plugin.py", "looper_plugin")
    worker = load(tmp_path / "worker" / "plugin.py", "worker_plugin")
    started, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=worker.work, args=(started, release))  # type: ignore[attr-defined]
    thread.start()
    started.wait(5)
    out = tmp_path / "trace.txt"
    try:
        with open(out, "w") as f:

            async def main() -> None:
                looper.spin(f)  # type: ignore[attr-defined]

            asyncio.run(main())
    finally:
        release.set()
        thread.join()
    return out.read_text()


def test_the_plugin_on_the_loop_thread_is_named(tmp_path: Path) -> None:
    text = real_trace(tmp_path)
    assert "worker" in text and "looper" in text  # both threads are in the dump
    dirs = {
        "looper": tmp_path / "looper",
        "worker": tmp_path / "worker",
        "other": tmp_path / "nothing",
    }
    plugin, where = stalled_plugin_in_trace(text, dirs)
    assert plugin == "looper", text
    assert where.startswith(str(tmp_path / "looper" / "plugin.py") + ":3 in spin"), where


def test_no_plugin_on_the_loop_thread(tmp_path: Path) -> None:
    text = real_trace(tmp_path)
    assert stalled_plugin_in_trace(text, {"worker": tmp_path / "worker"}) == (None, "")
    assert stalled_plugin_in_trace("", {"worker": tmp_path / "worker"}) == (None, "")
    assert stalled_plugin_in_trace('garbage\n  File "x", line 1 in y\n', {}) == (None, "")


def test_plugin_of_task() -> None:
    names = {"my_plugin": "my-plugin", "b": "b"}

    async def main() -> list[str | None]:
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(asyncio.sleep(0), name=n)
            for n in ("plugin:my-plugin", "plugin:b:input", "plugin:c", "iocmng:start", "plugin")
        ]
        await asyncio.gather(*tasks)
        return [plugin_of_task(t, names) for t in tasks]

    assert asyncio.run(main()) == ["my-plugin", "b", None, None, None]
    assert plugin_of_task(None, names) is None
