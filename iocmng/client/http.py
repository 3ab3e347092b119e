"""The HTTP side of the ``iocmng`` client commands: requests, errors, waiting, tables.

Built on :mod:`urllib.request` rather than aiohttp: a CLI makes one request
at a time, so a blocking call is the simplest correct shape, it needs no
event loop, and it keeps ``iocmng task ls`` fast to start (no aiohttp
import). The command tree itself lives in :mod:`iocmng.client.cli` and :mod:`iocmng.cli`.

Failures are two exceptions the CLI turns into one line each:

* :class:`ApiError`: the server answered with an error (problem+json, RFC 9457);
* :class:`Unreachable`: no answer at all (refused, reset, timed out, bad host).
"""

from __future__ import annotations

import getpass
import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
#: States a plugin passes through before it is up (or has failed).
TRANSIENT = {"pending", "starting"}


class ApiError(Exception):
    """The server refused a request; ``line()`` is what the user sees."""

    def __init__(self, status: int, title: str, detail: str, body: Any = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail, self.body = status, title, detail, body

    def failed_step(self) -> dict[str, Any] | None:
        steps = self.body.get("steps") if isinstance(self.body, dict) else None
        return next((s for s in steps or [] if isinstance(s, dict) and not s.get("ok")), None)

    def line(self) -> str:
        text = f"error: {self.status} {self.title}: {self.detail}"
        step = self.failed_step()
        if step is not None and not self.detail.startswith(f"{step.get('step')}:"):
            text += f" (failed step: {step.get('step')}: {step.get('detail')})"
        elif step is not None:
            text += f" (failed step: {step.get('step')})"
        return text


class Unreachable(Exception):
    """No HTTP answer from the server."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach iocmng at {url}: {reason}")
        self.url, self.reason = url, reason


class Failed(Exception):
    """A command ran but its outcome is a failure (exit 1): a failed plugin, a timeout."""


class Usage(Exception):
    """A usage mistake found after parsing (exit 2)."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


def base_url(url: str) -> str:
    """``http://host:port`` from what the user gave (a trailing ``/api/v1`` is fine)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url.removesuffix("/api/v1")


def _problem(status: int, reason: str, raw: bytes) -> ApiError:
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if isinstance(body, dict) and ("detail" in body or "title" in body):
        return ApiError(
            int(body.get("status") or status),
            str(body.get("title") or reason),
            str(body.get("detail") or ""),
            body,
        )
    first = text.splitlines()[0][:200] if text else "(no details)"
    return ApiError(status, reason, first, body)


class Client:
    """A thin JSON client of ``/api/v1`` (one blocking request at a time)."""

    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0
    ) -> None:
        self.url = base_url(url)
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
        raw_body: bool = False,
    ) -> Any:
        url = f"{self.url}/api/v1{path}"
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json, application/problem+json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _problem(exc.code, exc.reason, exc.read()) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.url, _reason(exc)) from None
        if raw_body:  # not JSON: e.g. a Phoebus screen (.bob)
            return raw
        try:
            return json.loads(raw) if raw.strip() else None
        except ValueError:
            raise Unreachable(
                self.url, "the answer is not JSON (is this an iocmng server?)"
            ) from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)

    # -- waiting for a reload ---------------------------------------------------------------
    def wait_generation(
        self, generation: int, deadline: float, on_wait: Callable[[], None] | None = None
    ) -> dict:
        """Poll /health until it reports ``generation`` (or later); the server re-execs
        meanwhile, so refused/reset connections and 5xx answers are retried."""
        last = "no answer yet"
        while True:
            try:
                health = self.get(
                    "/health", timeout=max(1.0, min(10.0, deadline - time.monotonic()))
                )
                if int(health.get("generation", 0)) >= generation:
                    return health
                last = f"generation {health.get('generation')}"
            except Unreachable as exc:
                last = exc.reason
            except ApiError as exc:
                if exc.status < 500:
                    raise
                last = exc.line()
            if time.monotonic() >= deadline:
                raise Failed(f"timed out waiting for generation {generation} (last: {last})")
            if on_wait is not None:
                on_wait()
            time.sleep(0.2)

    def wait_plugin(self, collection: str, name: str, deadline: float) -> dict[str, Any]:
        """Poll the plugin until it leaves pending/starting; Failed if it ends ``failed``."""
        while True:
            try:
                info = self.get(f"/{collection}/{name}")
            except Unreachable:
                info = None
            if info is not None and info.get("state") not in TRANSIENT:
                if info.get("state") == "failed":
                    raise Failed(f"{name} failed: {info.get('last_error') or 'no error recorded'}")
                return info
            if time.monotonic() >= deadline:
                state = info.get("state") if info else "unknown"
                raise Failed(f"timed out waiting for {name} to start (state: {state})")
            time.sleep(0.2)

    def follow_change(
        self, answer: dict[str, Any], collection: str, name: str, up: bool, timeout: float
    ) -> dict[str, Any] | None:
        """``--wait``: the reload to its generation, then (``up``) the plugin to its state."""
        deadline = time.monotonic() + timeout
        if answer.get("reload_pending") and answer.get("apply") == "manual":
            raise Failed(
                "the change is pending (the service has IOCMNG_APPLY=manual): "
                "`iocmng apply --wait` applies it"
            )
        if answer.get("reload_pending"):
            self.wait_generation(int(answer["generation"]), deadline)
        return self.wait_plugin(collection, name, deadline) if up else None

    def logs(
        self, collection: str, name: str, limit: int, follow: bool
    ) -> Iterator[dict[str, Any]]:
        """The last ``limit`` records, then (``follow``) new ones, polling once a second."""
        path = f"/{collection}/{name}/logs"
        records = self.get(path, query={"limit": limit})["records"]
        yield from records
        last = records[-1]["time"] if records else time.time() - 0.001
        printed = {_key(r) for r in records if r["time"] == last}
        while follow:
            time.sleep(1.0)
            try:
                records = self.get(path, query={"since": repr(last)})["records"]
            except Unreachable:  # a reload in progress: the next poll reaches the new generation
                continue
            # `since` is exclusive on the server; drop repeats anyway should it ever be inclusive
            fresh = [r for r in records if _key(r) not in printed]
            yield from fresh
            if fresh:
                last = max(r["time"] for r in fresh)
                printed = {_key(r) for r in fresh if r["time"] == last}


def _key(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)


def read_pat(git_url: str | None, prompt: bool) -> str | None:
    """The PAT comes from IOCMNG_GIT_PAT or a prompt, never from the command line;
    it is sent for https:// repositories only (the server refuses it otherwise)."""
    https = bool(git_url) and str(git_url).lower().startswith("https://")
    if prompt:
        if not https:
            raise Usage("--pat-prompt: a PAT is used for https:// repositories only")
        return getpass.getpass(f"PAT for {git_url}: ") or None
    pat = os.environ.get("IOCMNG_GIT_PAT")
    return pat if pat and https else None


def run(handler: Callable[[Client], int], url: str | None, token: str | None) -> int:
    """Run one client command; every failure is one line on stderr and an exit code."""
    url = url or os.environ.get("IOCMNG_URL") or DEFAULT_URL
    token = token or os.environ.get("IOCMNG_API_TOKEN") or None
    try:
        return handler(Client(url, token))
    except Usage as exc:
        print(f"iocmng: error: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(exc.line(), file=sys.stderr)
        return 1
    except Failed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Unreachable as exc:
        print(str(exc), file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


# -- output ------------------------------------------------------------------------------
def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    body = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    lines = [list(headers)] + body
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """``key: value`` lines with the values aligned."""
    items = [(k, cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in items), default=0) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}".rstrip() for k, v in items)


def source_text(src: dict[str, Any] | None) -> str:
    if not src:
        return "-"
    where = src.get("url") or src.get("local_path") or "?"
    if src.get("branch"):
        where += f"@{src['branch']}"
    if src.get("path"):
        where += f":{src['path']}"
    if src.get("commit"):
        where += f" ({src['commit'][:8]})"
    return where


PLUGIN_HEADERS = ("NAME", "KIND", "MODE", "STATE", "CYCLES", "ERRORS", "SOURCE")


def plugin_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            p.get("name"),
            p.get("kind"),
            p.get("mode"),
            p.get("state"),
            p.get("cycle_count"),
            p.get("error_count"),
            source_text(p.get("source")),
        ]
        for p in items
    ]


def plugin_detail(p: dict[str, Any]) -> str:
    pairs: list[tuple[str, Any]] = [
        ("name", p.get("name")),
        ("kind", p.get("kind")),
        ("mode", p.get("mode")),
        ("state", p.get("state")),
        ("enabled", p.get("enabled")),
        ("cycles", p.get("cycle_count")),
        ("errors", p.get("error_count")),
        ("overruns", p.get("overruns")),
        ("last error", p.get("last_error")),
        ("source", source_text(p.get("source"))),
        ("pv prefix", p.get("pv_prefix")),
    ]
    out = fields(pairs)
    params = p.get("parameters") or {}
    if params:
        out += "\nparameters:\n" + "\n".join(
            f"  {k} = {json.dumps(v, default=str)}" for k, v in params.items()
        )
    pvs = p.get("pvs") or []
    if pvs:
        out += "\npvs:\n" + "\n".join(f"  {pv}" for pv in pvs)
    return out


def health_text(h: dict[str, Any]) -> str:
    plugins = h.get("plugins") or {}
    counts = ", ".join(f"{k} {v}" for k, v in plugins.items() if k != "total")
    pairs = [
        ("status", h.get("status")),
        ("version", h.get("version")),
        ("generation", h.get("generation")),
        ("pending", h.get("pending_generation")),
        ("uptime", f"{float(h.get('uptime_s') or 0):.0f} s"),
        ("prefix", h.get("prefix")),
        ("plugins", f"{plugins.get('total', 0)}" + (f" ({counts})" if counts else "")),
    ]
    reload = h.get("reload") or {}
    if reload.get("state") not in (None, "none"):
        pairs.append(("reload", reload["state"]))
    out = fields(pairs)
    for change in h.get("pending_changes") or []:
        out += f"\npending: {change.get('change')} {change.get('kind')} {change.get('plugin')}"
    for work in reload.get("waiting_for") or []:
        out += f"\nreload waits for: {work.get('plugin')} ({work.get('work')}, {work.get('running_s')} s)"
    for err in h.get("boot_errors") or []:
        out += f"\nboot error: {cell(err)}"
    return out


def job_result_text(r: dict[str, Any]) -> str:
    verdict = "SUCCESS" if r.get("success") else "FAILED"
    out = f"job {r.get('job')}: {verdict} in {float(r.get('duration_s') or 0):.3f} s"
    if r.get("message"):
        out += f"\nmessage: {r['message']}"
    data = r.get("data") or {}
    if data:
        out += "\ndata:\n" + "\n".join("  " + line for line in fields(data.items()).splitlines())
    return out


def log_line(rec: dict[str, Any]) -> str:
    try:
        stamp = datetime.fromtimestamp(float(rec["time"])).strftime("%H:%M:%S.%f")[:-3]
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        stamp = "?"
    return (
        f"{stamp} {str(rec.get('level', '')):<7} {rec.get('logger', '')}: {rec.get('message', '')}"
    )
