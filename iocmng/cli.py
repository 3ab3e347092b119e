"""Command line: ``iocmng-server`` and the ``iocmng`` command.

``iocmng run DIR...`` is the standalone runner for plugin authors: it loads
the plugins, builds their records, runs ``iocInit`` once and runs them until
Ctrl-C/SIGTERM, exiting 0 after every ``cleanup()`` ran.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import re
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from .errors import IocmngError, SettingsError

log = logging.getLogger("iocmng.cli")


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``3`` is an int, ``true`` a bool)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected key=value")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def params_dict(pairs: list[tuple[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs or []:
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def name_from_dir(directory: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", directory.resolve().name.lower()).strip("-_")
    return (name or "plugin")[:40]


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _run_plugins(dirs: list[Path], prefix: str, params: dict[str, Any], name: str | None) -> int:
    from .ioc import IocBridge
    from .runtime import PluginSpec, Runtime, State

    bridge = IocBridge(prefix)
    runtime = Runtime(bridge)
    failed = []
    for d in dirs:
        plugin = name if name and len(dirs) == 1 else name_from_dir(d)
        h = runtime.prepare(PluginSpec(plugin, d.resolve(), params))
        if h.state == State.FAILED:
            failed.append(f"{d}: {h.last_error}")
    if failed:
        for line in failed:
            print(f"iocmng run: refused {line}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    bridge.start(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    # Everything built so far (modules, records, plugin objects) lives until
    # exit: move it out of the collector's generations so full collections
    # do not walk it while the loop is ticking (docs/performance.md).
    gc.freeze()
    for h in runtime.handles.values():
        log.info("%s %s (%s): %s", h.kind, h.name, h.mode, ", ".join(h.records.names() if h.records else []))
        if h.kind == "job" and h.state == State.IDLE:
            result = await runtime.run_job(h.name)
            print(json.dumps(result), flush=True)
    print("iocmng run: serving; Ctrl-C to stop", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("stopping")
    await runtime.stop()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .settings import PREFIX_RE, load_settings, read_service_config, resolve_prefix

    setup_logging(args.log_level)
    if args.prefix and not PREFIX_RE.match(args.prefix):
        # refused here: softioc would fail an assertion deep inside record creation
        print(f"iocmng run: --prefix {args.prefix!r}: use 1-40 letters, digits, '_', '-' or ':'", file=sys.stderr)
        return 2
    for d in args.dirs:
        if not d.is_dir():
            print(f"iocmng run: {d}: not a directory", file=sys.stderr)
            return 2
    try:
        prefix = args.prefix or resolve_prefix(load_settings(), read_service_config(None))
    except SettingsError as exc:
        print(f"iocmng run: {exc.detail}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run_plugins(args.dirs, prefix, params_dict(args.param), args.name))
    except IocmngError as exc:
        print(f"iocmng run: {exc.detail}", file=sys.stderr)
        return 2


def cmd_schema(args: argparse.Namespace) -> int:
    from .config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iocmng", description="iocmng: EPICS IOC manager")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run plugin directories locally with their PVs")
    run.add_argument("dirs", nargs="+", type=Path, metavar="PLUGIN_DIR")
    run.add_argument("--prefix", help="PV prefix (default: IOCMNG_PREFIX or IOCMNG)")
    run.add_argument("--name", help="plugin name (one directory only; default: the directory name)")
    run.add_argument("-p", "--param", action="append", type=parse_param, metavar="KEY=VALUE",
                     help="override a parameter (repeatable; dotted keys for nested values)")
    run.add_argument("--log-level", default="info")
    run.set_defaults(func=cmd_run)

    schema = sub.add_parser("schema", help="print the JSON schema of a plugin config.yaml")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def server_main(argv: list[str] | None = None) -> int:
    from .service import main as service_main

    return service_main(argv)


if __name__ == "__main__":
    sys.exit(main())
