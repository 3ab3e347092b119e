"""The plugin-author API is pinned: a change here is a change for every plugin."""

from __future__ import annotations

import inspect

import iocmng
from iocmng.base.job import JobBase as JobBaseAtOriginalPath
from iocmng.base.job import JobResult as JobResultAtOriginalPath
from iocmng.base.task import TaskBase as TaskBaseAtOriginalPath


def test_top_level_exports() -> None:
    assert sorted(iocmng.__all__) == ["DeclarativeTask", "JobBase", "JobResult", "TaskBase", "__version__",
                                      "pv_client", "run_ioc"]


def test_names_of_iocmng_2_7_9() -> None:
    """2.7.9 exported ``pv_client`` (a module) and ``run_ioc``; ours are aliases in iocmng.core."""
    import iocmng.core.pv_client
    import iocmng.core.runner

    assert iocmng.pv_client is iocmng.core.pv_client
    assert iocmng.run_ioc is iocmng.core.runner.run_ioc
    assert list(inspect.signature(iocmng.run_ioc).parameters) == [
        "plugin_class", "config", "parameters", "prefix", "pva", "name", "pvout"]
    for name in ("init", "get_provider", "get", "put", "monitor", "unmonitor", "unmonitor_all",
                 "active_monitors", "close"):
        assert name in iocmng.pv_client.__all__, name


def test_declarative_task_shim_of_iocmng_2_7_9() -> None:
    from iocmng.declarative import DeclarativeTask

    assert iocmng.DeclarativeTask is DeclarativeTask
    assert issubclass(DeclarativeTask, iocmng.TaskBase)
    assert not inspect.isabstract(DeclarativeTask)


def test_original_import_paths_are_the_same_objects() -> None:
    assert iocmng.TaskBase is TaskBaseAtOriginalPath
    assert iocmng.JobBase is JobBaseAtOriginalPath
    assert iocmng.JobResult is JobResultAtOriginalPath


def test_abstract_methods() -> None:
    assert iocmng.TaskBase.__abstractmethods__ == {"initialize", "execute", "cleanup"}
    assert iocmng.JobBase.__abstractmethods__ == {"initialize", "execute"}


def test_what_plugins_get_on_self() -> None:
    members = {name for name, _ in inspect.getmembers(iocmng.TaskBase)}
    for name in ("set_pv", "get_pv", "set_status", "set_message", "get_device", "list_devices",
                 "cycle_count", "mode", "pv_prefix", "on_input", "triggered"):
        assert name in members, name
    task = type("T", (iocmng.TaskBase,), {"initialize": lambda s: None, "execute": lambda s: None,
                                          "cleanup": lambda s: None})(name="demo", parameters={"x": 1})
    assert task.name == "demo" and task.parameters == {"x": 1}
    assert task.logger.name == "iocmng.plugin.demo"


def test_job_result_shape() -> None:
    r = iocmng.JobResult(success=True, data={"a": 1}, message="OK")
    assert r.to_dict() == {"success": True, "data": {"a": 1}, "message": "OK"}
