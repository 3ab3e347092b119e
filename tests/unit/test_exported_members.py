"""The plugin-author API is pinned: a change here is a change for every plugin."""

from __future__ import annotations

import inspect
from typing import Any

import iocmng
from iocmng.plugin.job import JobBase as JobBaseAtOriginalPath
from iocmng.plugin.job import JobResult as JobResultAtOriginalPath
from iocmng.plugin.task import TaskBase as TaskBaseAtOriginalPath


def test_top_level_exports() -> None:
    assert sorted(iocmng.__all__) == [
        "DeclarativeTask",
        "JobBase",
        "JobResult",
        "TaskBase",
        "__version__",
        "pv_client",
        "run_ioc",
    ]


def test_names_of_iocmng_2_7_9() -> None:
    """2.7.9 exported ``pv_client`` (a module) and ``run_ioc``; ours are aliases in iocmng.core."""
    import iocmng.core.pv_client
    import iocmng.core.runner

    assert iocmng.pv_client is iocmng.core.pv_client
    assert iocmng.run_ioc is iocmng.core.runner.run_ioc
    assert list(inspect.signature(iocmng.run_ioc).parameters) == [
        "plugin_class",
        "config",
        "parameters",
        "prefix",
        "pva",
        "name",
        "pvout",
    ]
    for name in (
        "init",
        "get_provider",
        "get",
        "put",
        "monitor",
        "unmonitor",
        "unmonitor_all",
        "active_monitors",
        "close",
    ):
        assert name in iocmng.pv_client.__all__, name


def test_declarative_task_shim_of_iocmng_2_7_9() -> None:
    from iocmng.plugin.declarative import DeclarativeTask

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
    for name in (
        "set_pv",
        "get_pv",
        "set_status",
        "set_message",
        "get_device",
        "list_devices",
        "cycle_count",
        "mode",
        "pv_prefix",
        "on_input",
        "triggered",
    ):
        assert name in members, name
    task = type(
        "T",
        (iocmng.TaskBase,),
        {"initialize": lambda s: None, "execute": lambda s: None, "cleanup": lambda s: None},
    )(name="demo", parameters={"x": 1})
    assert task.name == "demo" and task.parameters == {"x": 1}
    assert task.logger.name == "iocmng.plugin.demo"


def test_job_result_shape() -> None:
    r = iocmng.JobResult(success=True, data={"a": 1}, message="OK")
    assert r.to_dict() == {"success": True, "data": {"a": 1}, "message": "OK"}


def test_members_of_iocmng_2_7_9() -> None:
    """What 2.7.9's base classes and docs (README/HOWTO/MANUAL/QUICKSTART/examples) give plugin authors."""
    both = (
        "set_output",
        "get_output",
        "set_input",
        "get_input",
        "pvs",
        "pv_definitions",
        "beamline_config",
        "get_datetime",
        "get_timems",
        "create_device",
        "_link_buffers",
        "link_values",
        "link_put",
        "on_input_changed",
        "cf_search",
        "cf_discover_devices",
        "cf_create_device",
    )
    task_members = {name for name, _ in inspect.getmembers(iocmng.TaskBase)}
    job_members = {name for name, _ in inspect.getmembers(iocmng.JobBase)}
    for name in (*both, "running", "enabled"):
        assert name in task_members, name
    for name in (*both, "last_result"):
        assert name in job_members, name


def test_2_7_9_members_detached_and_assignable() -> None:
    from iocmng.plugin.base import _Detached

    task = type(
        "T",
        (iocmng.TaskBase,),
        {"initialize": lambda s: None, "execute": lambda s: None, "cleanup": lambda s: "done"},
    )(name="demo")
    task._attach(_Detached())
    assert task.running is False and task.enabled is True
    assert dict(task.pvs) == {} and task.pv_definitions == {"inputs": {}, "outputs": {}}
    assert task.beamline_config == {} and task._link_buffers == {}
    assert abs(task.get_timems() - __import__("time").time() * 1000) < 5000
    assert len(task.get_datetime()) == len("2024-01-01 00:00:00.000")
    assert task.cleanup() == "done" and task.running is False
    # a plugin's own attribute of the same name wins (no AttributeError, as before)
    task.running, task.pvs, task.enabled = "mine", {"A": 1}, 0
    assert (task.running, task.pvs, task.enabled) == ("mine", {"A": 1}, 0)


def test_job_last_result() -> None:
    from iocmng.plugin.base import _Detached

    def execute(self: Any) -> Any:
        seen.append(self.last_result)
        if self.parameters.get("fail"):
            raise RuntimeError("boom")
        return {"n": len(seen)}

    seen: list[Any] = []
    job = type("J", (iocmng.JobBase,), {"initialize": lambda s: None, "execute": execute})(name="j")
    assert job.last_result is None
    job._attach(_Detached())
    job.execute()
    assert job.last_result == iocmng.JobResult(True, {"n": 1}, "") and seen == [None]
    job.parameters["fail"] = True
    try:
        job.execute()
    except RuntimeError:
        pass
    assert job.last_result == iocmng.JobResult(False, {}, "RuntimeError: boom")
    assert seen[1] == iocmng.JobResult(True, {"n": 1}, "")


def test_output_aliases_follow_2_7_9_on_unknown_names() -> None:
    """set_* ignore and get_* answer None for a name that is not a PV (2.7.9); known names are set_pv/get_pv."""

    class Records:
        def __init__(self) -> None:
            self.records = {"OUT": 0.0, "STATUS": 0}

    class Ctx:
        pv_prefix = "P:DEMO"
        records = Records()
        written: dict[str, Any] = {}

        def set_pv(self, name: str, value: Any) -> None:
            if name == "STATUS":
                raise KeyError(name)
            self.written[name] = value

        def get_pv(self, name: str) -> Any:
            return self.written.get(name, self.records.records[name])

    task = type(
        "T",
        (iocmng.TaskBase,),
        {"initialize": lambda s: None, "execute": lambda s: None, "cleanup": lambda s: None},
    )(name="demo")
    ctx = Ctx()
    task._attach(ctx)  # type: ignore[arg-type]
    task.set_output("OUT", 2.5)
    assert task.get_output("OUT") == 2.5 and task.get_input("OUT") == 2.5
    task.set_output("NOPE", 1)
    task.set_input("NOPE", 1)
    assert task.get_output("NOPE") is None and "NOPE" not in ctx.written
    assert sorted(task.pvs) == ["OUT", "STATUS"] and task.pvs["OUT"].name == "P:DEMO:OUT"
    task.pvs["OUT"].set(4)
    assert task.pvs["OUT"].get() == 4
    try:
        task.set_output("STATUS", 1)
    except KeyError:
        pass
    else:
        raise AssertionError("managed PVs stay refused")


def test_parameter_names_of_iocmng_2_7_9() -> None:
    """2.7.9's plugins may call these with keywords (``set_pv(pv_name=..., value=...)``)."""
    expected = {
        "set_pv": ["pv_name", "value"],
        "get_pv": ["pv_name"],
        "set_output": ["pv_name", "value"],
        "get_output": ["pv_name"],
        "set_input": ["pv_name", "value"],
        "get_input": ["pv_name"],
        "set_status": ["status"],
        "set_message": ["message"],
        "get_device": ["device_name"],
        "link_put": ["key", "value", "timeout"],
    }
    for cls in (iocmng.TaskBase, iocmng.JobBase):
        for method, names in expected.items():
            params = list(inspect.signature(getattr(cls, method)).parameters)[1:]
            assert params == names, (cls.__name__, method, params)


def test_keyword_calls_of_iocmng_2_7_9() -> None:
    from iocmng.plugin.base import _Detached

    task = type(
        "T",
        (iocmng.TaskBase,),
        {"initialize": lambda s: None, "execute": lambda s: None, "cleanup": lambda s: None},
    )(name="demo")
    task._attach(_Detached())
    task.set_pv(pv_name="X", value=3)
    assert task.get_pv(pv_name="X") == 3
    assert task.get_device(device_name="motor") is None
    try:
        task.link_put(key="valve", value=0, timeout=2.0)
    except KeyError as exc:
        assert "valve" in str(exc)
    else:
        raise AssertionError("link_put of an unwired PV must raise KeyError")
