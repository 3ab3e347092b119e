"""loader: exactly one concrete TaskBase/JobBase class per plugin directory."""

from __future__ import annotations

import itertools
import os
import sys
import textwrap
from pathlib import Path

import pytest

from iocmng import JobBase, TaskBase
from iocmng.errors import PluginLoadError
from iocmng.runtime.loader import NAMESPACE, kind_of, load_class, plugin_files, unload

_ids = itertools.count()

TASK = """
from iocmng import TaskBase

class {name}(TaskBase):
    def initialize(self): pass
    def execute(self): pass
    def cleanup(self): pass
"""

JOB = """
from iocmng import JobBase, JobResult

class {name}(JobBase):
    def initialize(self): pass
    def execute(self): return JobResult(True)
"""


def make_plugin(tmp_path: Path, files: dict[str, str]) -> tuple[Path, str]:
    """Write ``files`` into a fresh plugin directory; return it and a unique plugin name."""
    name = f"plug{next(_ids)}"
    d = tmp_path / name
    d.mkdir()
    for fname, text in files.items():
        (d / fname).write_text(textwrap.dedent(text))
    return d, name


@pytest.fixture(autouse=True)
def _restore_sys_path():
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def test_one_task(tmp_path: Path) -> None:
    d, name = make_plugin(tmp_path, {"mon.py": TASK.format(name="Mon")})
    cls = load_class(d, name)
    assert cls.__name__ == "Mon" and issubclass(cls, TaskBase)
    assert kind_of(cls) == "task"
    assert cls.__module__ == f"{NAMESPACE}.{name}.mon"


def test_one_job(tmp_path: Path) -> None:
    d, name = make_plugin(tmp_path, {"diag.py": JOB.format(name="Diag")})
    cls = load_class(d, name)
    assert issubclass(cls, JobBase) and kind_of(cls) == "job"


def test_two_classes_refused_and_named(tmp_path: Path) -> None:
    d, name = make_plugin(
        tmp_path, {"a.py": TASK.format(name="First"), "b.py": JOB.format(name="Second")}
    )
    with pytest.raises(PluginLoadError) as info:
        load_class(d, name)
    msg = info.value.detail
    assert "more than one plugin class" in msg
    assert "First (a.py)" in msg and "Second (b.py)" in msg


def test_two_classes_in_one_file_refused(tmp_path: Path) -> None:
    text = TASK.format(name="One") + TASK.format(name="Two")
    d, name = make_plugin(tmp_path, {"m.py": text})
    with pytest.raises(PluginLoadError, match="more than one plugin class"):
        load_class(d, name)


def test_no_class(tmp_path: Path) -> None:
    d, name = make_plugin(tmp_path, {"m.py": "class NotAPlugin:\n    pass\n"})
    with pytest.raises(PluginLoadError, match="no plugin class"):
        load_class(d, name)


def test_no_py_file(tmp_path: Path) -> None:
    d, name = make_plugin(tmp_path, {"config.yaml": "", "_hidden.py": TASK.format(name="Hidden")})
    with pytest.raises(PluginLoadError, match=r"no \.py file"):
        load_class(d, name)


def test_underscore_files_ignored(tmp_path: Path) -> None:
    d, name = make_plugin(
        tmp_path, {"_private.py": TASK.format(name="Hidden"), "m.py": TASK.format(name="Seen")}
    )
    assert [p.name for p in plugin_files(d)] == ["m.py"]
    assert load_class(d, name).__name__ == "Seen"


def test_abstract_intermediate_class_allowed(tmp_path: Path) -> None:
    base = """
    from abc import abstractmethod
    from iocmng import TaskBase

    class MyBase(TaskBase):
        def initialize(self): pass
        def cleanup(self): pass
        @abstractmethod
        def measure(self): ...
        def execute(self): self.measure()
    """
    leaf = """
    from base import MyBase

    class Leaf(MyBase):
        def measure(self): return 1
    """
    d, name = make_plugin(tmp_path, {"base.py": base, "leaf.py": leaf})
    cls = load_class(d, name)
    assert cls.__name__ == "Leaf"


def test_concrete_intermediate_class_is_not_a_second_plugin(tmp_path: Path) -> None:
    text = TASK.format(name="Parent") + "\nclass Child(Parent):\n    pass\n"
    d, name = make_plugin(tmp_path, {"m.py": text})
    assert load_class(d, name).__name__ == "Child"


def test_imported_classes_do_not_count(tmp_path: Path) -> None:
    # helper module defines a full plugin class; the plugin file imports it and defines its own
    lib = tmp_path / f"lib{next(_ids)}"
    lib.mkdir()
    (lib / "shared_plugin_lib.py").write_text(TASK.format(name="Imported"))
    text = "from shared_plugin_lib import Imported\n" + TASK.format(name="Own")
    d, name = make_plugin(tmp_path, {"m.py": text})
    cls = load_class(d, name, extra_paths=[lib])
    assert cls.__name__ == "Own"
    sys.modules.pop("shared_plugin_lib", None)


def test_only_imported_class_means_no_plugin(tmp_path: Path) -> None:
    d, name = make_plugin(
        tmp_path, {"m.py": "from iocmng import TaskBase, JobBase\nAlias = TaskBase\n"}
    )
    with pytest.raises(PluginLoadError, match="no plugin class"):
        load_class(d, name)


def test_missing_abstract_methods_named(tmp_path: Path) -> None:
    text = """
    from iocmng import TaskBase

    class Half(TaskBase):
        def initialize(self): pass
    """
    d, name = make_plugin(tmp_path, {"half.py": text})
    with pytest.raises(PluginLoadError) as info:
        load_class(d, name)
    msg = info.value.detail
    assert "Half (half.py)" in msg
    assert "cleanup" in msg and "execute" in msg
    assert "initialize" not in msg


def test_job_needs_only_initialize_and_execute(tmp_path: Path) -> None:
    text = """
    from iocmng import JobBase

    class J(JobBase):
        def initialize(self): pass
    """
    d, name = make_plugin(tmp_path, {"j.py": text})
    with pytest.raises(PluginLoadError) as info:
        load_class(d, name)
    assert "execute" in info.value.detail and "cleanup" not in info.value.detail


def test_import_error_names_the_file(tmp_path: Path) -> None:
    d, name = make_plugin(tmp_path, {"broken.py": "import definitely_not_a_module_xyz\n"})
    with pytest.raises(PluginLoadError) as info:
        load_class(d, name)
    assert "broken.py" in info.value.detail
    assert "ModuleNotFoundError" in info.value.detail
    assert not [m for m in sys.modules if m.startswith(f"{NAMESPACE}.{name}.")], (
        "failed import must be unloaded"
    )


def test_syntax_error_names_the_file(tmp_path: Path) -> None:
    d, name = make_plugin(tmp_path, {"bad.py": "def x(:\n"})
    with pytest.raises(PluginLoadError, match=r"bad\.py: import failed: SyntaxError"):
        load_class(d, name)


def test_sibling_import_and_private_namespace(tmp_path: Path) -> None:
    helper = "FACTOR = 7\n"
    main = "from helpers import FACTOR\n" + TASK.format(name="UsesHelper") + "    factor = FACTOR\n"
    d, name = make_plugin(
        tmp_path, {"_helpers_unused.py": "", "helpers.py": helper, "main.py": main}
    )
    cls = load_class(d, name)
    assert cls.factor == 7


def test_two_plugins_with_same_module_name_do_not_clash(tmp_path: Path) -> None:
    d1, n1 = make_plugin(tmp_path, {"monitor.py": TASK.format(name="A")})
    d2, n2 = make_plugin(tmp_path, {"monitor.py": TASK.format(name="B")})
    c1, c2 = load_class(d1, n1), load_class(d2, n2)
    assert (c1.__name__, c2.__name__) == ("A", "B")
    assert sys.modules[f"{NAMESPACE}.{n1}.monitor"].A is c1


def test_reload_picks_up_new_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Same size, same second: a bytecode cache keyed on (mtime, size) would serve the old code.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    d, name = make_plugin(tmp_path, {"m.py": TASK.format(name="Old")})
    assert load_class(d, name).__name__ == "Old"
    stat = (d / "m.py").stat()
    (d / "m.py").write_text(TASK.format(name="New"))
    os.utime(d / "m.py", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_class(d, name).__name__ == "New"
    unload(name)
    assert not [m for m in sys.modules if m.startswith(f"{NAMESPACE}.{name}.")]
