"""iocmng 2.7.9's ``run_ioc()``: one plugin class as a soft IOC, without the REST service.

Maps to ``iocmng-run`` (:mod:`iocmng.runtime.run_alias`), that is to ``iocmng run``'s
machinery (:func:`iocmng.runtime.local.run_plugins`): the class runs as is, its
config written to a throw-away directory, as ``iocmng-run -m`` does, until
SIGINT or SIGTERM::

    from iocmng import run_ioc
    from my_plugin import MyTask

    run_ioc(MyTask, config="config.yaml", prefix="MY:IOC")

The arguments are 2.7.9's. ``prefix`` is the whole PV prefix (PVs are
``PREFIX:<PV>``); without it, PVs are ``<IOCMNG_PREFIX or IOCMNG>:<NAME>:<PV>``
as with ``iocmng run``. ``pva`` chooses the protocol of :mod:`iocmng.core.pv_client`
and, unless ``parameters`` sets ``pva``, of the plugin's links (the parameter
``pva``).

What differs from 2.7.9:

- the plugin runs as under ``iocmng run``: on an asyncio loop, its config.yaml
  checked strictly (an unknown key or a bad link is refused before the IOC
  starts: ``RuntimeError``, the reason on stderr), a job run once at start
  and its result printed as JSON on stdout;
- without ``prefix``, the default is the service's (above), not ``NAME`` in
  upper case;
- like every soft IOC, it can run once per process (``iocInit`` happens once);
- it does not configure logging: the calling script does.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["run_ioc"]


def run_ioc(
    plugin_class: type,
    *,
    config: str | Path | Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    prefix: str | None = None,
    pva: bool = True,
    name: str | None = None,
    pvout: str | Path | None = None,
) -> None:
    """Run a soft IOC for ``plugin_class`` (a TaskBase or JobBase subclass) until SIGINT/SIGTERM.

    ``config``: a config.yaml path or its content as a dict; ``parameters``:
    overrides deep-merged on top of its ``parameters``; ``prefix``: the whole
    PV prefix; ``pva``: PV Access (else Channel Access) for pv_client and
    links; ``name``: the plugin's name (default: the class name, lower case);
    ``pvout``: a file to write the PV names to, one a line.
    """
    from ..config.settings import PREFIX_RE, load_settings, read_service_config, resolve_prefix
    from ..plugin.job import JobBase
    from ..plugin.task import TaskBase
    from ..runtime import run_alias
    from ..runtime.local import name_from_dir
    from . import pv_client

    if not (inspect.isclass(plugin_class) and issubclass(plugin_class, TaskBase | JobBase)):
        raise TypeError(f"run_ioc: {plugin_class!r} is not a TaskBase or JobBase subclass")
    if prefix is not None and not PREFIX_RE.match(prefix):
        raise ValueError(f"run_ioc: prefix {prefix!r}: use 1-40 letters, digits, '_', '-' or ':'")
    params = dict(parameters or {})
    params.setdefault("pva", pva)
    plugin = name_from_dir(Path(name or plugin_class.__name__.lower()))
    whole_prefix = prefix or resolve_prefix(load_settings(), read_service_config(None))
    extra_paths = []
    try:  # the class's own directory, for its sibling imports (as iocmng-run -m)
        extra_paths.append(Path(inspect.getfile(plugin_class)).resolve().parent)
    except (TypeError, OSError):  # a class without a source file
        pass
    pv_client.init(pva=pva)
    try:
        code = run_alias.run_staged(
            plugin_class,
            lambda dest: _write_config(dest, config),
            plugin,
            whole_prefix,
            params,
            exact_prefix=prefix is not None,
            extra_paths=extra_paths,
            pvout=Path(pvout) if pvout else None,
        )
    finally:
        pv_client.close()
    if code != 0:
        raise RuntimeError(
            f"run_ioc: {plugin_class.__name__} was refused (the reason is on stderr)"
        )


def _write_config(path: Path, config: str | Path | Mapping[str, Any] | None) -> None:
    if config is None:
        path.write_text("parameters: {}\n")
    elif isinstance(config, Mapping):
        import yaml

        path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    else:
        shutil.copyfile(config, path)
