"""Find and import a plugin's class from its directory.

A plugin directory holds ``.py`` files (those starting with ``_`` are
ignored) defining exactly one concrete ``TaskBase``/``JobBase`` subclass.
Modules are imported under a private package name per plugin
(``iocmng_plugins.<name>.<module>``) so two plugins with a ``monitor.py`` do
not clash in ``sys.modules``; the plugin directory (and its requirements
directory) is put on ``sys.path`` so sibling imports work (at the end, see load_class).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import sys
from pathlib import Path

from ..errors import PluginLoadError
from ..plugin.base import PluginBase
from ..plugin.job import JobBase
from ..plugin.task import TaskBase

NAMESPACE = "iocmng_plugins"


class _FreshSourceLoader(importlib.machinery.SourceFileLoader):
    """Compile from source every time, never through ``__pycache__``.

    The bytecode cache is keyed on (mtime in seconds, size): a code update
    landing in the same second with the same size would run the old code.
    It also keeps ``__pycache__`` out of the plugin's checkout.
    """

    def get_code(self, fullname: str):  # type: ignore[override]
        return self.source_to_code(self.get_data(self.path), self.path)


def plugin_files(directory: Path) -> list[Path]:
    """The plugin's Python files, in a stable order."""
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))


def is_declarative(directory: Path) -> bool:
    """No ``.py`` file, and a config.yaml with links, rules or transforms: a declarative task."""
    from ..config.models import load_config
    from ..errors import ConfigError

    if plugin_files(directory):
        return False
    try:
        return load_config(directory).has_logic
    except ConfigError:
        return False


def kind_of(cls: type) -> str:
    return "task" if issubclass(cls, TaskBase) else "job"


def missing_abstract(cls: type) -> list[str]:
    return sorted(getattr(cls, "__abstractmethods__", ()))


def _module_name(plugin: str, stem: str) -> str:
    return f"{NAMESPACE}.{plugin.replace('-', '_')}.{stem}"


def unload(plugin: str) -> None:
    """Forget a plugin's modules so the next load re-imports its code."""
    base = f"{NAMESPACE}.{plugin.replace('-', '_')}."
    for mod in [m for m in sys.modules if m.startswith(base)]:
        del sys.modules[mod]


def load_class(
    directory: Path, plugin: str, extra_paths: list[Path] | None = None
) -> type[PluginBase]:
    """Import the plugin's files and return its one concrete plugin class.

    Raises PluginLoadError naming the file and the problem; its ``step`` is
    ``import``, ``inheritance`` or ``abstract`` (the validation steps). A
    directory without ``.py`` files is a declarative task (config.yaml only).
    """
    if not plugin_files(directory) and is_declarative(directory):
        from ..plugin.declarative import DeclarativeTask

        return DeclarativeTask
    return choose_class(import_files(directory, plugin, extra_paths))


def _error(detail: str, step: str) -> PluginLoadError:
    err = PluginLoadError(detail)
    err.step = step  # type: ignore[attr-defined]
    return err


def import_files(
    directory: Path, plugin: str, extra_paths: list[Path] | None = None
) -> list[tuple[Path, type]]:
    """Import every plugin file; return the TaskBase/JobBase subclasses they define."""
    files = plugin_files(directory)
    if not files:
        raise _error(
            f"{directory.name}: no .py file (files starting with '_' are ignored); a plugin of config.yaml "
            "alone (declarative) must declare links, rules or transforms",
            "import",
        )
    unload(plugin)
    # Appended, not prepended: the service's own packages always win, so a
    # plugin's requirements (or a file named like a stdlib module) cannot
    # replace what the service itself imports.
    for path in [directory, *(extra_paths or [])]:
        if str(path) not in sys.path:
            sys.path.append(str(path))
    candidates: list[tuple[Path, type]] = []
    for file in files:
        name = _module_name(plugin, file.stem)
        spec = importlib.util.spec_from_file_location(
            name, file, loader=_FreshSourceLoader(name, str(file))
        )
        if spec is None or spec.loader is None:
            raise _error(f"{file.name}: cannot be imported", "import")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except (
            Exception,
            SystemExit,
        ) as exc:  # sys.exit() at import is a broken plugin, not a stop
            unload(plugin)
            raise _error(
                f"{file.name}: import failed: {type(exc).__name__}: {exc}", "import"
            ) from exc
        for _, obj in inspect.getmembers(module, inspect.isclass):
            # classes defined in this file only: imported ones do not count
            if (
                obj.__module__ == name
                and issubclass(obj, (TaskBase, JobBase))
                and obj not in (TaskBase, JobBase)
            ):
                candidates.append((file, obj))
    return candidates


def choose_class(candidates: list[tuple[Path, type]]) -> type[PluginBase]:
    """Pick the plugin class: the one concrete leaf among the candidates."""
    if not candidates:
        raise _error(
            "no plugin class: define one class deriving from iocmng.TaskBase or iocmng.JobBase",
            "inheritance",
        )
    classes = [c for _, c in candidates]
    # A class another candidate derives from is an intermediate base, not the plugin.
    leaves = [
        (f, c) for f, c in candidates if not any(o is not c and issubclass(o, c) for o in classes)
    ]
    concrete = [(f, c) for f, c in leaves if not inspect.isabstract(c)]
    if len(concrete) == 1:
        return concrete[0][1]
    if len(concrete) > 1:
        names = ", ".join(f"{c.__name__} ({f.name})" for f, c in concrete)
        raise _error(
            f"more than one plugin class: {names}; a plugin directory must define exactly one",
            "inheritance",
        )
    problems = "; ".join(
        f"{c.__name__} ({f.name}) does not implement {', '.join(missing_abstract(c))}"
        for f, c in leaves
    )
    raise _error(f"missing abstract methods: {problems}", "abstract")
