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
from iocmng.service.registry import REGISTRY_FILE, Entry, Registry, Source
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


def _entry(name: str, plugin_dir: Path, owned: Path | None, deps: Path | None) -> Entry:
    return Entry(
        name=name,
        kind="task",
        source=Source(type="git", url="file:///x"),
        plugin_dir=str(plugin_dir),
        owned_dir=str(owned) if owned else None,
        deps_dir=str(deps) if deps else None,
    )


def test_registry_paths_inside_the_data_dir_are_relative_on_disk(tmp_path: Path) -> None:
    """A data directory restored at another path keeps working (operations.md, backup)."""
    old, new, elsewhere = tmp_path / "old", tmp_path / "new", tmp_path / "plugins" / "local"
    reg = Registry(old)
    reg.commit(
        add=_entry(
            "git", old / "repos" / "git-1" / "src", old / "repos" / "git-1", old / "deps" / "git"
        )
    )
    reg.commit(add=_entry("local", elsewhere, None, None))
    on_disk = json.loads((old / REGISTRY_FILE).read_text())
    assert on_disk["version"] == 2
    assert on_disk["plugins"]["git"]["plugin_dir"] == "repos/git-1/src"
    assert on_disk["plugins"]["git"]["owned_dir"] == "repos/git-1"
    assert on_disk["plugins"]["git"]["deps_dir"] == "deps/git"
    assert on_disk["plugins"]["local"]["plugin_dir"] == str(elsewhere)  # outside: as it is
    assert Registry(old).load() == reg.state  # in memory: absolute, as used
    shutil.copytree(old, new)
    moved = Registry(new).load().plugins
    assert moved["git"].plugin_dir == str(new / "repos" / "git-1" / "src")
    assert moved["git"].owned_dir == str(new / "repos" / "git-1")
    assert moved["local"].plugin_dir == str(elsewhere)


def test_registry_of_version_1_loads_its_paths_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 1 kept the paths as made: with IOCMNG_PLUGINS_DIR=data, relative to the cwd."""
    monkeypatch.chdir(tmp_path)
    data = Path("data")
    data.mkdir()
    entry = _entry("p", data / "repos" / "p-1", data / "repos" / "p-1", None)
    (data / REGISTRY_FILE).write_text(
        json.dumps({"version": 1, "generation": 3, "plugins": {"p": entry.model_dump()}})
    )
    reg = Registry(data)
    assert reg.load().plugins["p"].plugin_dir == "data/repos/p-1"  # as version 1 meant it
    reg.commit(bump=True)  # the next write: version 2, relative to the data directory
    on_disk = json.loads((data / REGISTRY_FILE).read_text())
    assert on_disk["version"] == 2 and on_disk["generation"] == 4
    assert on_disk["plugins"]["p"]["plugin_dir"] == "repos/p-1"
    assert Registry(data).load().plugins["p"].plugin_dir == str(tmp_path / "data" / "repos" / "p-1")
