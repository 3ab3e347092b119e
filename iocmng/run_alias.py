"""``iocmng-run``: the reference's runner command line, a thin alias of ``iocmng run``.

::

    iocmng-run -m MODULE [-c CLASS] --config FILE --prefix P --name N
               [--pva true|false] [-p KEY=VALUE]... [--log-level L] [--pvout FILE]

``MODULE`` is a plugin's Python file (``monitor.py``, ``src/monitor.py``) or
an importable module path (``my_plugin``, ``pkg.monitor``; the current
directory is on ``sys.path`` as in the reference). ``--prefix P`` is the
**whole** PV prefix, as in the reference: PVs are ``P:<PV>``, no plugin
segment is added (without ``--prefix``: ``<IOCMNG_PREFIX or IOCMNG>:<NAME>``
as ``iocmng run``). ``--pva false`` becomes the parameter ``pva: false``
(CA for links). ``-p`` values are read as the reference does: int, then
float, then ``true``/``false``, else the string.

How it maps onto the runner: a throw-away plugin directory holds the
``--config`` file as ``config.yaml`` and a one-line module defining a
subclass of the chosen class, and ``iocmng run``'s machinery
(:func:`iocmng.cli._run_plugins`) runs it with the module's own directory on
the plugin's import path.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

#: The class the staged module derives from (set before the runtime imports it).
_TARGET: type | None = None


def target() -> type:
    assert _TARGET is not None, "iocmng-run: no plugin class resolved"
    return _TARGET


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
            raise ValueError(f"-m {spec}: no such file")
        name = "iocmng_run_" + re.sub(r"\W", "_", path.stem)
        mod_spec = importlib.util.spec_from_file_location(name, path.resolve())
        if mod_spec is None or mod_spec.loader is None:
            raise ValueError(f"-m {spec}: cannot be imported")
        sys.path.append(str(path.resolve().parent))  # sibling imports, as for a plugin directory
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        mod_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def resolve_class(module: Any, class_name: str | None) -> type:
    """``-c CLASS``, else the one concrete TaskBase/JobBase subclass the module defines."""
    from .base.job import JobBase
    from .base.task import TaskBase

    if class_name:
        cls = getattr(module, class_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, (TaskBase, JobBase))):
            raise ValueError(f"-c {class_name}: no TaskBase/JobBase subclass of that name in {module.__name__}")
        return cls
    found = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, (TaskBase, JobBase)) and not inspect.isabstract(c) and c.__module__ == module.__name__]
    if len(found) != 1:
        what = ", ".join(c.__name__ for c in found) or "none"
        raise ValueError(f"-m {module.__name__}: expected one plugin class defined in it (found: {what}); use -c CLASS")
    return found[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iocmng-run", description="Run one plugin as a soft IOC (alias of `iocmng run`).")
    p.add_argument("-m", "--module", required=True, help="plugin file (x.py) or module path (pkg.mod)")
    p.add_argument("-c", "--class-name", "--class", dest="class_name", help="class in the module (default: the one defined)")
    p.add_argument("--config", type=Path, help="the plugin's config.yaml")
    p.add_argument("--prefix", help="the whole PV prefix: PVs are PREFIX:<PV>")
    p.add_argument("--name", help="plugin name (default: the class name, lower case)")
    p.add_argument("--pva", choices=["true", "false"], default=None, help="false: CA for links (parameter pva)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--pvout", type=Path, help="write the PV names there, one a line")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="parameter (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    from .cli import _run_plugins, name_from_dir, setup_logging
    from .errors import IocmngError, SettingsError
    from .settings import PREFIX_RE, load_settings, read_service_config, resolve_prefix

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level.lower())
    params: dict[str, Any] = {}
    for kv in args.param:
        if "=" not in kv:
            parser.error(f"-p {kv!r}: expected KEY=VALUE")
        key, _, val = kv.partition("=")
        params[key.strip()] = ref_value(val)
    if args.pva is not None:
        params["pva"] = args.pva == "true"
    if args.prefix and not PREFIX_RE.match(args.prefix):
        parser.error(f"--prefix {args.prefix!r}: use 1-40 letters, digits, '_', '-' or ':'")
    if args.config is not None and not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        cls = resolve_class(import_module(args.module), args.class_name)
    except (ValueError, ImportError, SyntaxError) as exc:
        print(f"iocmng-run: {exc}", file=sys.stderr)
        return 2
    # set on the imported module (under `python -m` this file is also __main__)
    importlib.import_module("iocmng.run_alias")._TARGET = cls
    name = name_from_dir(Path(args.name or cls.__name__.lower()))
    try:
        prefix = args.prefix or resolve_prefix(load_settings(), read_service_config(None))
    except SettingsError as exc:
        print(f"iocmng-run: {exc.detail}", file=sys.stderr)
        return 2
    src = Path(inspect.getfile(cls)).resolve().parent
    with tempfile.TemporaryDirectory(prefix="iocmng-run-") as tmp:
        staged = Path(tmp) / name
        staged.mkdir()
        if args.config is not None:
            shutil.copyfile(args.config, staged / "config.yaml")
        else:
            (staged / "config.yaml").write_text("parameters: {}\n")
        (staged / "plugin.py").write_text(
            "from iocmng.run_alias import target\n\n\n"
            f"class {cls.__name__}(target()):  # the class chosen by iocmng-run\n    pass\n")
        try:
            return asyncio.run(_run_plugins([staged], prefix, params, name, exact_prefix=bool(args.prefix),
                                            extra_paths=[src], pvout=args.pvout))
        except IocmngError as exc:
            print(f"iocmng-run: {exc.detail}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
