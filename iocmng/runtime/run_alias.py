"""``iocmng-run``: one plugin as a soft IOC, the reference's runner command line.

::

    iocmng-run [-m MODULE [-c CLASS]] [--config FILE] [--prefix P] [--name N]
               [--pva true|false] [-p KEY=VALUE]... [--log-level L] [--pvout FILE]

This is how the epik8s ioc-chart starts a soft IOC: its pod renders
``start.sh`` in ``/epics/ioc/config`` and runs it, and ``start.sh`` runs
``iocmng-run --config config.yaml`` there (docs/container.md).

What runs:

- ``-m MODULE``: a plugin's Python file (``monitor.py``, ``src/monitor.py``)
  or an importable module path (``my_plugin``, ``pkg.monitor``; the current
  directory is on ``sys.path`` as in the reference); ``-c`` picks the class,
  else the one concrete TaskBase/JobBase subclass the module defines.
- without ``-m``: the one plugin ``.py`` file beside the config (files
  starting with ``_`` are ignored, as in the service; among several files,
  the one that defines a TaskBase/JobBase subclass, read without importing
  anything); with no ``.py`` file there, the config alone is a declarative
  task (it must declare links, rules or transforms). Two candidates are an
  error naming both.
- ``--config``: the plugin's config.yaml; without it and without ``-m``,
  ``config.yaml`` (or ``config.yml``) in the current directory.

PV names: ``--prefix P``, else the environment's ``IOC_PREFIX`` (set by the
ioc-chart from the softioc's ``iocprefix``), is the **whole** PV prefix, as
in the reference: PVs are ``P:<PV>``, no plugin segment is added (one
trailing ``:`` is dropped, ``SPARC:TASK:`` names ``SPARC:TASK:STATUS``).
Without either: ``<IOCMNG_PREFIX or IOCMNG>:<NAME>:<PV>`` as ``iocmng run``.
``--name``, else ``IOC_NAME``, else the class name in lower case (the
config's directory name for a declarative task), names the plugin.
``--pva false`` becomes the parameter ``pva: false`` (CA for links) and
the protocol of :mod:`iocmng.core.pv_client`. ``-p``
values are read as the reference does: int, then float, then
``true``/``false``, else the string.

How it maps onto the runner: a throw-away plugin directory holds the config
as ``config.yaml`` and, for a Python plugin, a one-line module defining a
subclass of the chosen class; ``iocmng run``'s machinery
(:func:`iocmng.runtime.local.run_plugins`) runs it with the module's own directory on
the plugin's import path.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import importlib
import importlib.util
import inspect
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("iocmng.run")

#: Base-class names that mark a file as a plugin (read from its AST, not imported).
PLUGIN_BASES = {"TaskBase", "JobBase", "DeclarativeTask"}


class UsageError(ValueError):
    """A command line that cannot be run; the message says why (exit 2)."""


def ref_value(text: str) -> Any:
    """The reference's ``-p`` conversion: int, float, true/false, else the string."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.lower() == "true" if text.lower() in ("true", "false") else text


def import_module(spec: str) -> Any:
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UsageError(f"-m {spec}: no such file")
        name = "iocmng_run_" + re.sub(r"\W", "_", path.stem)
        mod_spec = importlib.util.spec_from_file_location(name, path.resolve())
        if mod_spec is None or mod_spec.loader is None:
            raise UsageError(f"-m {spec}: cannot be imported")
        sys.path.append(str(path.resolve().parent))  # sibling imports, as for a plugin directory
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        mod_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def resolve_class(module: Any, class_name: str | None, label: str | None = None) -> type:
    """``-c CLASS``, else the one concrete TaskBase/JobBase subclass the module defines.

    ``label`` names the module in messages (default: ``-m <module name>``).
    """
    from ..plugin.job import JobBase
    from ..plugin.task import TaskBase

    label = label or f"-m {module.__name__}"
    if class_name:
        cls = getattr(module, class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, (TaskBase, JobBase))):
            raise UsageError(
                f"-c {class_name}: no TaskBase/JobBase subclass of that name in {module.__name__}"
            )
        return cls
    defined = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, (TaskBase, JobBase)) and c.__module__ == module.__name__
    ]
    found = [c for c in defined if not inspect.isabstract(c)]
    if not found and defined:  # say what is missing rather than "none"
        missing = "; ".join(
            f"{c.__name__} does not implement {', '.join(sorted(c.__abstractmethods__))}"
            for c in defined
        )
        raise UsageError(f"{label}: {missing}")
    if len(found) != 1:
        what = ", ".join(c.__name__ for c in found) or "none"
        raise UsageError(
            f"{label}: expected one plugin class defined in it (found: {what}); use -c CLASS"
        )
    return found[0]


def _defines_plugin(path: Path) -> bool:
    """Whether the file defines a class deriving (by name) from TaskBase/JobBase/DeclarativeTask."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return True  # let the import report it: a broken plugin file is still the candidate
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
                if name in PLUGIN_BASES:
                    return True
    return False


def plugin_file_beside(config: Path) -> Path | None:
    """The one plugin ``.py`` file in the config's directory; None when there is none."""
    from .loader import plugin_files

    files = plugin_files(config.parent)
    if len(files) > 1:
        files = [f for f in files if _defines_plugin(f)] or files
    if len(files) > 1:
        names = ", ".join(f.name for f in files)
        raise UsageError(
            f"{len(files)} candidate plugin files beside {config.name}: {names}; choose one with -m FILE"
        )
    return files[0] if files else None


def check_declarative(config: Path) -> None:
    """A config alone must be a valid declarative task."""
    from ..config.models import parse_config
    from ..errors import ConfigError

    try:
        parsed = parse_config(config.read_text(encoding="utf-8"), str(config))
    except ConfigError as exc:
        raise UsageError(exc.detail) from None
    if not parsed.has_logic:
        raise UsageError(
            f"no plugin .py file beside {config}, and it declares no links, rules or transforms "
            "(a declarative task needs them); give the plugin with -m FILE"
        )


def _env(var: str) -> str | None:
    return (os.environ.get(var) or "").strip() or None


@dataclass
class Plan:
    """What to run, resolved from the command line and the environment."""

    cls: type | None  # None: a declarative task (config only)
    config: Path | None
    name: str
    prefix: str | None  # the whole prefix (exact), or None for the default
    source: Path | None  # the module's directory (import path)


def resolve(args: argparse.Namespace) -> Plan:
    from ..config.models import find_config
    from ..config.settings import PREFIX_RE
    from .local import name_from_dir

    config: Path | None = args.config
    if config is not None and not config.is_file():
        raise UsageError(f"--config {config}: no such file")
    if config is None and args.module is None:
        config = find_config(Path.cwd())
        if config is None:
            raise UsageError(
                "no -m MODULE and no config.yaml here; give --config FILE (and -m MODULE)"
            )
    prefix = args.prefix if args.prefix is not None else _env("IOC_PREFIX")
    if prefix is not None:
        flag = "--prefix" if args.prefix is not None else "IOC_PREFIX"
        prefix = prefix.removesuffix(":")
        if not PREFIX_RE.match(prefix):
            raise UsageError(f"{flag} {prefix!r}: use 1-40 letters, digits, '_', '-' or ':'")
    module, label = args.module, f"-m {args.module}"
    if module is None:
        assert config is not None
        beside = plugin_file_beside(config)
        module, label = (str(beside), str(beside)) if beside is not None else (None, "")
    if module is None:
        assert config is not None
        check_declarative(config)
        cls, source, default_name = None, None, config.resolve().parent.name
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            imported = import_module(module)
        except ImportError as exc:
            raise UsageError(str(exc)) from exc
        except (Exception, SystemExit) as exc:  # the plugin's own code failed at import
            raise UsageError(f"{label}: import failed: {type(exc).__name__}: {exc}") from exc
        cls = resolve_class(imported, args.class_name, label)
        source, default_name = Path(inspect.getfile(cls)).resolve().parent, cls.__name__.lower()
    name = name_from_dir(Path(args.name or _env("IOC_NAME") or default_name))
    return Plan(cls, config, name, prefix, source)


def run_staged(
    cls: type | None,
    write_config: Callable[[Path], None],
    name: str,
    prefix: str,
    params: dict[str, Any],
    *,
    exact_prefix: bool,
    extra_paths: list[Path],
    pvout: Path | None,
) -> int:
    """Run one plugin through ``iocmng run``'s machinery (:func:`iocmng.runtime.local.run_plugins`):
    its config.yaml (``write_config(path)``) in a throw-away directory, and the class itself
    (``cls`` None: a declarative task). Used by ``iocmng-run`` and ``run_ioc()``."""
    from .local import run_plugins

    with tempfile.TemporaryDirectory(prefix="iocmng-run-") as tmp:
        staged = Path(tmp) / name
        staged.mkdir()
        write_config(staged / "config.yaml")
        return asyncio.run(
            run_plugins(
                [staged],
                prefix,
                params,
                name,
                exact_prefix=exact_prefix,
                extra_paths=extra_paths,
                pvout=pvout,
                cls=cls,
            )
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iocmng-run", description="Run one plugin as a soft IOC (alias of `iocmng run`)."
    )
    p.add_argument(
        "-m",
        "--module",
        help="plugin file (x.py) or module path (pkg.mod); default: the one .py beside "
        "the config, else the config alone (declarative)",
    )
    p.add_argument(
        "-c",
        "--class-name",
        "--class",
        dest="class_name",
        help="class in the module (default: the one defined)",
    )
    p.add_argument(
        "--config", type=Path, help="the plugin's config.yaml (default without -m: ./config.yaml)"
    )
    p.add_argument(
        "--prefix", help="the whole PV prefix: PVs are PREFIX:<PV> (default: $IOC_PREFIX)"
    )
    p.add_argument(
        "--name", help="plugin name (default: $IOC_NAME, else the class name, lower case)"
    )
    p.add_argument(
        "--pva", choices=["true", "false"], default=None, help="false: CA for links (parameter pva)"
    )
    p.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    p.add_argument("--pvout", type=Path, help="write the PV names there, one a line")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter (repeatable)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from ..config.settings import load_settings, read_service_config, resolve_prefix
    from ..errors import IocmngError, SettingsError
    from ..logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level.lower())
    if args.class_name and not args.module:
        parser.error("-c CLASS needs -m MODULE")
    params: dict[str, Any] = {}
    for kv in args.param:
        if "=" not in kv:
            parser.error(f"-p {kv!r}: expected KEY=VALUE")
        key, _, val = kv.partition("=")
        params[key.strip()] = ref_value(val)
    if args.pva is not None:
        params["pva"] = args.pva == "true"
    try:
        plan = resolve(args)
        prefix = plan.prefix or resolve_prefix(load_settings(), read_service_config(None))
    except UsageError as exc:
        print(f"iocmng-run: {exc}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"iocmng-run: {exc.detail}", file=sys.stderr)
        return 2
    if args.pva is not None:  # 2.7.9's pv_client follows --pva too, as under its iocmng-run
        from ..epics import blocking_client

        blocking_client.init(pva=args.pva == "true")
    what = (
        f"class {plan.cls.__name__} from {plan.source}"
        if plan.cls
        else f"declarative task {plan.config}"
    )
    log.info(
        "%s: %s; %s",
        plan.name,
        what,
        f"PVs {prefix}:<PV>" if plan.prefix else f"PV prefix {prefix}",
    )

    def copy_config(dest: Path) -> None:
        if plan.config is not None:
            shutil.copyfile(plan.config, dest)
        else:
            dest.write_text("parameters: {}\n")

    try:
        return run_staged(
            plan.cls,
            copy_config,
            plan.name,
            prefix,
            params,
            exact_prefix=plan.prefix is not None,
            extra_paths=[plan.source] if plan.source else [],
            pvout=args.pvout,
        )
    except IocmngError as exc:
        print(f"iocmng-run: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
