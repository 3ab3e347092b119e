"""The ``iocmng`` commands that drive a running service over HTTP: ``task``,
``job``, ``plugin``, ``screen``, ``health``, ``apply`` (the HTTP side is
:mod:`iocmng.client.http`). Imports no server module: the command tree with
the local commands (``run``, ``validate``, ``schema``) is :mod:`iocmng.cli`.

Exit codes: 0 success, 1 refused by the server or failed (a job, a plugin
that did not come up), 2 usage error, 3 server unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml


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


# -- client commands (a running service; the HTTP side is iocmng.client) ---------------------
COLLECTION = {"task": "tasks", "job": "jobs", "plugin": "plugins"}


def usage(message: str) -> int:
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
        answer["plugin"] = p = c.follow_change(
            answer, args.coll, args.name, True, args.wait_timeout
        )
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
    text = (
        f"restart of {args.name} committed; generation {gen} will serve it"
        if answer.get("reload_pending")
        else f"restarted {args.name} live"
    )
    if args.wait:
        answer["plugin"] = p = c.follow_change(
            answer, args.coll, args.name, True, args.wait_timeout
        )
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


def cmd_apply(c: Any, args: argparse.Namespace) -> int:
    """Apply the pending changes (a reload); ``--wait``: until the new generation answers."""
    answer = c.post("/apply", timeout=60)
    text = answer.get("message", "")
    if answer.get("reload_pending") and args.wait:
        import time

        gen = int(answer["generation"])
        c.wait_generation(gen, time.monotonic() + args.wait_timeout)
        text = f"applied {len(answer.get('pending') or [])} change(s); generation {gen} is live"
    _emit(args, answer, text)
    return 0


def client_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    # Accepted before the command and after the verb; the verb's copies default to
    # SUPPRESS so they do not overwrite a value given before the command.
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    parser.add_argument(
        "--server",
        default=d(None),
        metavar="URL",
        help="service URL (default: $IOCMNG_URL or http://127.0.0.1:8080)",
    )
    parser.add_argument("--token", default=d(None), help="API token (default: $IOCMNG_API_TOKEN)")
    parser.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default=d("table"),
        help="json: machine-readable output",
    )


def add_client_commands(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    client_options(common, defaults=False)
    param: dict[str, Any] = {
        "action": "append",
        "type": parse_param,
        "metavar": "KEY=VALUE",
        "help": "parameter override (repeatable; dotted keys for nested values)",
    }
    wait = argparse.ArgumentParser(add_help=False)
    wait.add_argument(
        "--wait", action="store_true", help="follow the reload until the change is live"
    )
    wait.add_argument(
        "--wait-timeout", type=float, default=60.0, metavar="S", help="give up after S seconds (60)"
    )
    http: dict[str, Any] = {
        "type": float,
        "default": 3600.0,
        "dest": "http_timeout",
        "help": argparse.SUPPRESS,
    }

    def verb(
        verbs: Any,
        name: str,
        handler: Any,
        help: str,
        *parents: argparse.ArgumentParser,
        named: bool = True,
    ) -> argparse.ArgumentParser:
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
        src.add_argument(
            "--local", type=Path, metavar="DIR", help="a directory on the server's host"
        )
        add.add_argument("--branch", help="branch or tag (default: the repository's HEAD)")
        add.add_argument("--path", default="", help="plugin directory inside the repository")
        add.add_argument("--param", **param)
        add.add_argument(
            "--pat-prompt",
            action="store_true",
            help="ask for the https PAT (else $IOCMNG_GIT_PAT is used)",
        )
        add.add_argument(
            "--no-start",
            action="store_true",
            help="register it and build its PVs, but do not start it",
        )
        add.add_argument(
            "--no-start-on-boot",
            action="store_true",
            help="do not start it when the service itself restarts (reloads still start it)",
        )
        add.add_argument(
            "--order",
            type=int,
            metavar="N",
            help="start order (lower first; plugins without one last)",
        )
        verb(v, "ls", cmd_ls, f"list {coll}", named=False)
        verb(v, "show", cmd_show, f"show one {kind}")
        verb(v, "rm", cmd_rm, f"remove a {kind}", wait)
        verb(v, "restart", cmd_restart, f"re-import and restart a {kind}", wait).add_argument(
            "--param", **param
        )
        logs = verb(v, "logs", cmd_logs, "recent log records")
        logs.add_argument(
            "-f", "--follow", action="store_true", help="keep printing new records (Ctrl-C stops)"
        )
        logs.add_argument("--limit", type=int, default=100, help="records to show first (100)")
        if kind in ("task", "plugin"):
            verb(v, "trigger", cmd_trigger, "run one cycle of a triggered task").add_argument(
                "--http-timeout", **http
            )
        if kind in ("job", "plugin"):
            run = verb(v, "run", cmd_run_job, "run a job once and print its result")
            run.add_argument("--param", **param)
            run.add_argument(
                "--timeout", type=float, metavar="S", help="seconds before the run counts as failed"
            )
            run.add_argument("--http-timeout", **http)

    screen = sub.add_parser(
        "screen", help="save a Phoebus screen (.bob) of a plugin, or the overview"
    )
    screen.add_argument(
        "name", nargs="?", metavar="NAME", help="plugin (default: the overview of all plugins)"
    )
    screen.add_argument(
        "-o",
        "--output-file",
        dest="file",
        type=Path,
        metavar="FILE",
        help="where to save it (default: NAME.bob, or iocmng.bob for the overview)",
    )
    screen.add_argument("--server", default=argparse.SUPPRESS, metavar="URL", help="service URL")
    screen.add_argument(
        "--token", default=argparse.SUPPRESS, help="API token (needed with IOCMNG_READ_AUTH)"
    )
    screen.set_defaults(func=run_client, handler=cmd_screen)
    health = sub.add_parser("health", help="the service's health", parents=[common])
    health.set_defaults(func=run_client, handler=cmd_health)
    apply = sub.add_parser(
        "apply",
        help="apply the pending changes now (a reload; IOCMNG_APPLY=manual holds them)",
        parents=[common, wait],
    )
    apply.set_defaults(func=run_client, handler=cmd_apply)
