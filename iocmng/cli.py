"""The ``iocmng`` command: local commands and the client of a running service.

``iocmng run DIR...`` is the standalone runner for plugin authors
(:func:`iocmng.runtime.local.run_plugins`); ``iocmng validate DIR`` runs the
validation pipeline on a directory, no server needed; ``iocmng schema``
prints config.yaml's JSON schema. ``iocmng task|job|plugin ...``,
``screen`` and ``health`` are the client of a running service
(:mod:`iocmng.client.cli`). Exit codes: 0 success, 1 refused by the server
or failed, 2 usage error, 3 server unreachable.

The server itself is ``iocmng-server`` (:func:`iocmng.server.main`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from .client.cli import add_client_commands, client_options, params_dict, parse_param, usage
from .errors import IocmngError, SettingsError
from .logs import setup_logging
from .runtime.local import name_from_dir


def cmd_run(args: argparse.Namespace) -> int:
    from .config.settings import PREFIX_RE, load_settings, read_service_config, resolve_prefix
    from .runtime.local import run_plugins

    setup_logging(args.log_level)
    if args.prefix and not PREFIX_RE.match(args.prefix):
        # refused here: softioc would fail an assertion deep inside record creation
        print(
            f"iocmng run: --prefix {args.prefix!r}: use 1-40 letters, digits, '_', '-' or ':'",
            file=sys.stderr,
        )
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
        return asyncio.run(run_plugins(args.dirs, prefix, params_dict(args.param), args.name))
    except IocmngError as exc:
        print(f"iocmng run: {exc.detail}", file=sys.stderr)
        return 2


def cmd_schema(args: argparse.Namespace) -> int:
    from .config.models import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """The §7 pipeline on a local directory, in a throw-away data directory."""
    import tempfile

    from .api.models import check_name
    from .config.settings import PREFIX_RE, load_settings, read_service_config, resolve_prefix
    from .errors import ValidationFailed
    from .service.validation import Options, Pipeline, Request

    setup_logging("warning")
    if not args.dir.is_dir():
        return usage(f"validate: {args.dir}: not a directory")
    if args.prefix and not PREFIX_RE.match(args.prefix):
        return usage(
            f"validate: --prefix {args.prefix!r}: use 1-40 letters, digits, '_', '-' or ':'"
        )
    name = args.name or name_from_dir(args.dir)
    try:
        check_name(name)
        settings = load_settings()
        prefix = args.prefix or resolve_prefix(settings, read_service_config(None))
    except ValueError as exc:
        return usage(f"validate: --name: {exc}")
    except SettingsError as exc:
        return usage(f"validate: {exc.detail}")
    req = Request(name=name, local_path=str(args.dir.resolve()), parameters=params_dict(args.param))
    out: dict[str, Any] = {"name": name, "directory": req.local_path}
    with tempfile.TemporaryDirectory(prefix="iocmng-validate-") as tmp:
        try:
            # The service's own limits apply (IOCMNG_IMPORT_TIMEOUT, IOCMNG_ALLOW_REQUIREMENTS, ...).
            options = Options(
                data_dir=Path(tmp),
                prefix=prefix,
                allow_requirements=settings.allow_requirements,
                pip_timeout=settings.pip_timeout,
                import_timeout=settings.import_timeout,
            )
            cand = asyncio.run(Pipeline(options).run(req))
        except ValidationFailed as exc:
            out.update(ok=False, steps=exc.extra.get("steps", []), error=exc.detail)
        else:
            out.update(
                ok=True,
                steps=[s.to_dict() for s in cand.steps],
                kind=cand.kind,
                class_name=cand.class_name,
                records=cand.records,
            )
    if args.output == "json":
        print(json.dumps(out, indent=2))
        return 0 if out["ok"] else 1
    good, bad = ("✓", "✗") if _can_print("✓✗") else ("ok", "FAIL")
    width = max(len(s["step"]) for s in out["steps"])
    for s in out["steps"]:
        print(f"{good if s['ok'] else bad} {s['step'].ljust(width)}  {s['detail']}")
    if out["ok"]:
        print(f"{args.dir}: valid {out['kind']} {out['class_name']}, {len(out['records'])} PV(s):")
        print("\n".join(f"  {r}" for r in out["records"]))
        return 0
    print(f"{args.dir}: refused at step {out['steps'][-1]['step']}", file=sys.stderr)
    return 1


def _can_print(text: str) -> bool:
    try:
        text.encode(sys.stdout.encoding or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iocmng", description="iocmng: EPICS IOC manager")
    client_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run plugin directories locally with their PVs")
    run.add_argument("dirs", nargs="+", type=Path, metavar="PLUGIN_DIR")
    run.add_argument("--prefix", help="PV prefix (default: IOCMNG_PREFIX or IOCMNG)")
    run.add_argument("--name", help="plugin name (one directory only; default: the directory name)")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        type=parse_param,
        metavar="KEY=VALUE",
        help="override a parameter (repeatable; dotted keys for nested values)",
    )
    run.add_argument("--log-level", default="info")
    run.set_defaults(func=cmd_run)

    schema = sub.add_parser("schema", help="print the JSON schema of a plugin config.yaml")
    schema.set_defaults(func=cmd_schema)

    val = sub.add_parser(
        "validate", help="run the validation pipeline on a plugin directory (no server)"
    )
    val.add_argument("dir", type=Path, metavar="DIR")
    val.add_argument(
        "-p",
        "--param",
        action="append",
        type=parse_param,
        metavar="KEY=VALUE",
        help="parameter override (repeatable)",
    )
    val.add_argument("--prefix", help="PV prefix for the PV plan (default: as `iocmng run`)")
    val.add_argument("--name", help="plugin name (default: the directory name)")
    val.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS)
    val.set_defaults(func=cmd_validate)

    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `iocmng task ls | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
