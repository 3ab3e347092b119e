"""The validation pipeline and the registry, in process (real files, a real import-check child).

The system tests reach both only through a running service; these pin what
each guarantees on its own: a candidate carries its own kind, class, plan and
steps (two validated at once never mix), a refused plugin leaves nothing in
the data directory, and a registry change is persisted as committed (a full or
read-only data directory: tests/system/test_storage.py).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from iocmng.errors import ValidationFailed
from iocmng.service.mutations import entry_of
from iocmng.service.registry import REGISTRY_FILE, Registry
from iocmng.service.validation import Options, Pipeline, Request

EXAMPLES = Path(__file__).resolve().parents[2] / "plugins_examples"


def pipeline(data: Path) -> Pipeline:
    return Pipeline(Options(data_dir=data, prefix="UT", import_timeout=60.0))


def copy_example(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / "src" / name
    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


async def test_a_local_task_and_a_job_validated_at_once_keep_their_own_results(
    tmp_path: Path,
) -> None:
    p = pipeline(tmp_path / "data")
    task_dir, job_dir = (
        copy_example(tmp_path, "sync_monitor"),
        copy_example(tmp_path, "diagnostics_job"),
    )
    task, job = await asyncio.gather(
        p.run(Request(name="mon", local_path=str(task_dir))),
        p.run(Request(name="diag", local_path=str(job_dir))),
    )
    assert (task.kind, job.kind) == ("task", "job")
    assert task.class_name != job.class_name and task.class_name and job.class_name
    assert task.child is not job.child
    assert [s.name for s in task.steps] == [s.name for s in job.steps]
    assert all(s.ok for s in task.steps + job.steps), task.steps + job.steps
    assert task.plan is not None and job.plan is not None
    assert task.records == list(task.plan.names) and all(
        r.startswith("UT:MON:") for r in task.records
    )
    assert all(r.startswith("UT:DIAG:") for r in job.records)
    # A local source is used in place: nothing copied into the data directory.
    assert task.owned_dir is None and task.plugin_dir == task_dir


async def test_a_refused_plugin_names_the_step_and_leaves_no_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    src = copy_example(tmp_path, "sync_monitor")
    (src / "monitor.py").write_text("class Broken(:\n")
    with pytest.raises(ValidationFailed) as info:
        await pipeline(data).run(Request(name="bad", local_path=str(src)))
    steps = info.value.extra["steps"]
    assert steps[-1]["step"] == "syntax" and not steps[-1]["ok"], steps
    assert "monitor.py, line 1" in info.value.detail
    assert not (data / "repos").exists() or not any((data / "repos").iterdir())


async def test_an_import_that_fails_is_reported_from_the_child(tmp_path: Path) -> None:
    src = copy_example(tmp_path, "sync_monitor")
    marker = tmp_path / "imported-in-this-process"
    (src / "monitor.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise RuntimeError('no hardware here')\n"
    )
    with pytest.raises(ValidationFailed) as info:
        await pipeline(tmp_path / "data").run(Request(name="imp", local_path=str(src)))
    assert info.value.extra["steps"][-1]["step"] == "import"
    assert "no hardware here" in info.value.detail
    # The module ran in the child process (the marker), never in this one.
    import sys

    assert marker.exists() and not any("imp" == m.rsplit(".", 1)[-1] for m in sys.modules)


async def test_registry_commit_persists_and_bumps(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.load()
    cand = await pipeline(tmp_path / "data").run(
        Request(name="mon", local_path=str(copy_example(tmp_path, "sync_monitor")))
    )
    reg.commit(add=entry_of(cand), bump=True)
    on_disk = json.loads((tmp_path / REGISTRY_FILE).read_text())
    assert on_disk["generation"] == 2 and list(on_disk["plugins"]) == ["mon"]
    assert on_disk["plugins"]["mon"]["records"] == cand.records
    again = Registry(tmp_path)
    assert again.load() == reg.state
    reg.commit(remove="mon")
    assert Registry(tmp_path).load().plugins == {} and reg.state.generation == 2
