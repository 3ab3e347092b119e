"""Command line: ``iocmng-server`` and the ``iocmng`` command.

``iocmng run DIR...`` is the standalone runner for plugin authors: it loads
the plugins, builds their records, runs ``iocInit`` once and runs them until
Ctrl-C/SIGTERM, exiting 0 after every ``cleanup()`` ran. ``iocmng validate
DIR`` runs the validation pipeline on a directory, no server needed.

``iocmng task|job|plugin ...`` and ``iocmng health`` are the client of a
running service (HTTP side in :mod:`iocmng.client.http`). Exit codes: 0 success,
1 refused by the server or failed (a job, a plugin that did not come up),
2 usage error, 3 server unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from ..errors import IocmngError, SettingsError

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


async def _run_plugins(dirs: list[Path], prefix: str, params: dict[str, Any], name: str | None, *,
                       exact_prefix: bool = False, extra_paths: list[Path] | None = None,
                       pvout: Path | None = None) -> int:
    """Run plugin directories; ``exact_prefix`` (iocmng-run, one plugin): PVs are ``<prefix>:<PV>``."""
    from ..config.settings import load_settings
    from ..epics.ioc import IocBridge
    from ..runtime.runtime import PluginSpec, Runtime, State

    bridge = IocBridge(prefix, exact=exact_prefix)
    runtime = Runtime(bridge)
    runtime.channelfinder_url = os.environ.get("IOCMNG_CHANNELFINDER_URL") or None
    runtime.link_protocol = load_settings().default_link_protocol
    failed = []
    for d in dirs:
        plugin = name if name and len(dirs) == 1 else name_from_dir(d)
        h = runtime.prepare(PluginSpec(plugin, d.resolve(), params, list(extra_paths or [])))
        if h.state == State.FAILED:
            failed.append(f"{d}: {h.last_error}")
    if failed:
        for line in failed:
            print(f"iocmng run: refused {line}", file=sys.stderr)
        return 2
    if pvout is not None:  # the reference's --pvout: one full PV name a line
        names = sorted(n for h in runtime.handles.values() if h.records for n in h.records.names())
        await asyncio.to_thread(_write_lines, pvout, names)
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


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def cmd_run(args: argparse.Namespace) -> int:
    from ..config.settings import PREFIX_RE, load_settings, read_service_config, resolve_prefix

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
    from ..config.models import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """The §7 pipeline on a local directory, in a throw-away data directory."""
    import tempfile

    from ..api.models import check_name
    from ..config.settings import PREFIX_RE, load_settings, read_service_config, resolve_prefix
    from ..errors import ValidationFailed
    from ..service.validation import Options, Pipeline, Request

    setup_logging("warning")
    if not args.dir.is_dir():
        return _usage(f"validate: {args.dir}: not a directory")
    if args.prefix and not PREFIX_RE.match(args.prefix):
        return _usage(f"validate: --prefix {args.prefix!r}: use 1-40 letters, digits, '_', '-' or ':'")
    name = args.name or name_from_dir(args.dir)
    try:
        check_name(name)
        settings = load_settings()
        prefix = args.prefix or resolve_prefix(settings, read_service_config(None))
    except ValueError as exc:
        return _usage(f"validate: --name: {exc}")
    except SettingsError as exc:
        return _usage(f"validate: {exc.detail}")
    req = Request(name=name, local_path=str(args.dir.resolve()), parameters=params_dict(args.param))
    out: dict[str, Any] = {"name": name, "directory": req.local_path}
    with tempfile.TemporaryDirectory(prefix="iocmng-validate-") as tmp:
        try:
            # The service's own limits apply (IOCMNG_IMPORT_TIMEOUT, IOCMNG_ALLOW_REQUIREMENTS, ...).
            options = Options(data_dir=Path(tmp), prefix=prefix, allow_requirements=settings.allow_requirements,
                              pip_timeout=settings.pip_timeout, import_timeout=settings.import_timeout)
            cand = asyncio.run(Pipeline(options).run(req))
        except ValidationFailed as exc:
            out.update(ok=False, steps=exc.extra.get("steps", []), error=exc.detail)
        else:
            out.update(ok=True, steps=[s.to_dict() for s in cand.steps], kind=cand.kind,
                       class_name=cand.class_name, records=cand.records)
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


# -- client commands (a running service; the HTTP side is iocmng.client) ---------------------
COLLECTION = {"task": "tasks", "job": "jobs", "plugin": "plugins"}


def _usage(message: str) -> int:
    print(f"iocmng: error: {message}", file=sys.stderr)
    return 2


def run_client(args: argparse.Namespace) -> int:
    from . import http as client

    args.params = params_dict(getattr(args, "param", None))
    return client.run(lambda c: args.handler(c, args), args.server, args.token)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.output == "json" else text)


def cmd_add(c: Any, args: argparse.Namespace) -> int:
    from .http import read_pat

    body: dict[str, Any] = {"name": args.name, "path": args.path or "", "parameters": args.params}
    if args.git:
        body["git_url"] = args.git
    else:
        body["local_path"] = str(args.local.resolve())
    if args.branch:
        body["branch"] = args.branch
    if args.no_start:
        body["auto_start"] = False
    if args.no_start_on_boot:
        body["auto_start_on_boot"] = False
    if args.order is not None:
        body["autostart_order"] = args.order
    pat = read_pat(args.git, args.pat_prompt)
    if pat:
        body["pat"] = pat
    answer = c.post(f"/{args.coll}", body, timeout=900)
    gen = answer.get("generation")
    text = f"added {(answer.get('plugin') or {}).get('kind', args.kind)} {args.name}; generation {gen} will serve it"
    if args.wait:
        answer["plugin"] = p = c.follow_change(answer, args.coll, args.name, True, args.wait_timeout)
        text = f"{p['kind']} {args.name} is {p['state']} (generation {gen})"
    _emit(args, answer, text)
    return 0


def cmd_ls(c: Any, args: argparse.Namespace) -> int:
    from .http import PLUGIN_HEADERS, plugin_rows, table

    listing = c.get(f"/{args.coll}")  # {"plugins": [...], "count": N}
    items = listing["plugins"]
    if args.output != "json" and not items:
        print(f"no {args.coll}", file=sys.stderr)
        return 0
    _emit(args, listing, table(plugin_rows(items), PLUGIN_HEADERS))
    return 0


def cmd_show(c: Any, args: argparse.Namespace) -> int:
    from .http import plugin_detail

    info = c.get(f"/{args.coll}/{args.name}")
    _emit(args, info, plugin_detail(info))
    return 0


def cmd_rm(c: Any, args: argparse.Namespace) -> int:
    answer = c.delete(f"/{args.coll}/{args.name}", timeout=120)
    gen = answer.get("generation")
    text = f"removed {args.name}; generation {gen} drops its PVs"
    if args.wait:
        c.follow_change(answer, args.coll, args.name, False, args.wait_timeout)
        text = f"removed {args.name}; generation {gen} is live"
    _emit(args, answer, text)
    return 0


def cmd_restart(c: Any, args: argparse.Namespace) -> int:
    body = {"parameters": args.params} if args.param else None
    answer = c.post(f"/{args.coll}/{args.name}/restart", body, timeout=300)
    gen = answer.get("generation")
    text = (f"restart of {args.name} committed; generation {gen} will serve it" if answer.get("reload_pending")
            else f"restarted {args.name} live")
    if args.wait:
        answer["plugin"] = p = c.follow_change(answer, args.coll, args.name, True, args.wait_timeout)
        text = f"{args.name} is {p['state']} (generation {gen})"
    _emit(args, answer, text)
    return 0


def cmd_trigger(c: Any, args: argparse.Namespace) -> int:
    r = c.post(f"/tasks/{args.name}/trigger", timeout=args.http_timeout)
    ok = bool(r.get("success"))
    text = f"task {args.name}: cycle {'ok' if ok else 'FAILED'} in {float(r.get('duration_s') or 0):.3f} s"
    text += f" (cycles: {r.get('cycle_count')})" + ("" if ok else f"\nerror: {r.get('error')}")
    _emit(args, r, text)
    return 0 if ok else 1


def cmd_run_job(c: Any, args: argparse.Namespace) -> int:
    from .http import job_result_text

    body: dict[str, Any] = {"parameters": args.params}
    if args.timeout is not None:
        body["timeout"] = args.timeout
    wait = (args.timeout + 30) if args.timeout is not None else args.http_timeout
    r = c.post(f"/jobs/{args.name}/run", body, timeout=wait)
    _emit(args, r, job_result_text(r))
    return 0 if r.get("success") else 1


def cmd_logs(c: Any, args: argparse.Namespace) -> int:
    from .http import log_line

    for rec in c.logs(args.coll, args.name, args.limit, args.follow):
        print(json.dumps(rec) if args.output == "json" else log_line(rec), flush=True)
    return 0


def cmd_screen(c: Any, args: argparse.Namespace) -> int:
    """Save a Phoebus Display Builder screen with the service's real PV names."""
    path = f"/plugins/{args.name}/display.bob" if args.name else "/display.bob"
    data = c.get(path, raw_body=True)
    out = args.file or Path(f"{args.name or 'iocmng'}.bob")
    out.write_bytes(data)
    print(f"saved {out} ({len(data)} bytes); open it in Phoebus with File → Open", file=sys.stderr)
    return 0


def cmd_health(c: Any, args: argparse.Namespace) -> int:
    from .http import health_text

    h = c.get("/health")
    _emit(args, h, health_text(h))
    return 0 if h.get("status") == "ok" else 1


def _client_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    # Accepted before the command and after the verb; the verb's copies default to
    # SUPPRESS so they do not overwrite a value given before the command.
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    parser.add_argument("--server", default=d(None), metavar="URL",
                        help="service URL (default: $IOCMNG_URL or http://127.0.0.1:8080)")
    parser.add_argument("--token", default=d(None), help="API token (default: $IOCMNG_API_TOKEN)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default=d("table"),
                        help="json: machine-readable output")


def _add_client_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    _client_options(common, defaults=False)
    param = {"action": "append", "type": parse_param, "metavar": "KEY=VALUE",
             "help": "parameter override (repeatable; dotted keys for nested values)"}
    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument("--wait", action="store_true", help="follow the reload until the change is live")
    wait.add_argument("--wait-timeout", type=float, default=60.0, metavar="S", help="give up after S seconds (60)")
    http = {"type": float, "default": 3600.0, "dest": "http_timeout", "help": argparse.SUPPRESS}

    def verb(verbs: Any, name: str, handler: Any, help: str, *parents: argparse.ArgumentParser,
             named: bool = True) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help, parents=[common, *parents])
        if named:
            p.add_argument("name", metavar="NAME")
        p.set_defaults(func=run_client, handler=handler)
        return p

    for kind, coll in COLLECTION.items():
        group = sub.add_parser(kind, help=f"manage {coll} of a running service")
        group.set_defaults(kind=kind, coll=coll)
        v = group.add_subparsers(dest="verb", required=True)
        add = verb(v, "add", cmd_add, f"add a {kind} from git or a local directory", wait)
        src = add.add_mutually_exclusive_group(required=True)
        src.add_argument("--git", metavar="URL", help="https://, http:// or file:// repository")
        src.add_argument("--local", type=Path, metavar="DIR", help="a directory on the server's host")
        add.add_argument("--branch", help="branch or tag (default: the repository's HEAD)")
        add.add_argument("--path", default="", help="plugin directory inside the repository")
        add.add_argument("--param", **param)
        add.add_argument("--pat-prompt", action="store_true",
                         help="ask for the https PAT (else $IOCMNG_GIT_PAT is used)")
        add.add_argument("--no-start", action="store_true", help="register it and build its PVs, but do not start it")
        add.add_argument("--no-start-on-boot", action="store_true",
                         help="do not start it when the service itself restarts (reloads still start it)")
        add.add_argument("--order", type=int, metavar="N", help="start order (lower first; plugins without one last)")
        verb(v, "ls", cmd_ls, f"list {coll}", named=False)
        verb(v, "show", cmd_show, f"show one {kind}")
        verb(v, "rm", cmd_rm, f"remove a {kind}", wait)
        verb(v, "restart", cmd_restart, f"re-import and restart a {kind}", wait).add_argument("--param", **param)
        logs = verb(v, "logs", cmd_logs, "recent log records")
        logs.add_argument("-f", "--follow", action="store_true", help="keep printing new records (Ctrl-C stops)")
        logs.add_argument("--limit", type=int, default=100, help="records to show first (100)")
        if kind in ("task", "plugin"):
            verb(v, "trigger", cmd_trigger, "run one cycle of a triggered task").add_argument("--http-timeout", **http)
        if kind in ("job", "plugin"):
            run = verb(v, "run", cmd_run_job, "run a job once and print its result")
            run.add_argument("--param", **param)
            run.add_argument("--timeout", type=float, metavar="S", help="seconds before the run counts as failed")
            run.add_argument("--http-timeout", **http)

    screen = sub.add_parser("screen", help="save a Phoebus screen (.bob) of a plugin, or the overview")
    screen.add_argument("name", nargs="?", metavar="NAME", help="plugin (default: the overview of all plugins)")
    screen.add_argument("-o", "--output-file", dest="file", type=Path, metavar="FILE",
                        help="where to save it (default: NAME.bob, or iocmng.bob for the overview)")
    screen.add_argument("--server", default=argparse.SUPPRESS, metavar="URL", help="service URL")
    screen.add_argument("--token", default=argparse.SUPPRESS, help="API token (needed with IOCMNG_READ_AUTH)")
    screen.set_defaults(func=run_client, handler=cmd_screen)
    health = sub.add_parser("health", help="the service's health", parents=[common])
    health.set_defaults(func=run_client, handler=cmd_health)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iocmng", description="iocmng: EPICS IOC manager")
    _client_options(parser, defaults=True)
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

    val = sub.add_parser("validate", help="run the validation pipeline on a plugin directory (no server)")
    val.add_argument("dir", type=Path, metavar="DIR")
    val.add_argument("-p", "--param", action="append", type=parse_param, metavar="KEY=VALUE",
                     help="parameter override (repeatable)")
    val.add_argument("--prefix", help="PV prefix for the PV plan (default: as `iocmng run`)")
    val.add_argument("--name", help="plugin name (default: the directory name)")
    val.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS)
    val.set_defaults(func=cmd_validate)

    _add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `iocmng task ls | head`: the reader left, not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def server_main(argv: list[str] | None = None) -> int:
    from ..service.service import main as service_main

    return service_main(argv)


if __name__ == "__main__":
    sys.exit(main())
