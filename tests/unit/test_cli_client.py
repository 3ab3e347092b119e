"""The client side of the CLI without a server: tables, parameters, errors, waiting, exit codes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from iocmng.cli import build_parser
from iocmng.client import http as client
from iocmng.client.cli import params_dict
from iocmng.client.http import (
    ApiError,
    Client,
    Failed,
    Unreachable,
    Usage,
    _problem,
    base_url,
    cell,
    fields,
    job_result_text,
    plugin_rows,
    read_pat,
    source_text,
    table,
)


# -- tables -----------------------------------------------------------------------------------
def test_table_aligns_columns_without_trailing_blanks() -> None:
    out = table([["scan", "task", None], ["a-much-longer-name", "job", 12]], ["NAME", "KIND", "N"])
    lines = out.splitlines()
    assert lines == [
        "NAME                KIND  N",
        "scan                task  -",
        "a-much-longer-name  job   12",
    ]
    assert all(line == line.rstrip() for line in lines)


def test_table_with_no_rows_is_the_header() -> None:
    assert table([], ["NAME", "STATE"]) == "NAME  STATE"


@pytest.mark.parametrize(
    "value,text",
    [
        (None, "-"),
        (True, "yes"),
        (False, "no"),
        (0.5, "0.5"),
        (3.0, "3"),
        (7, "7"),
        ("x", "x"),
        ({"a": 1}, '{"a": 1}'),
        ([1, 2], "[1, 2]"),
    ],
)
def test_cell(value: Any, text: str) -> None:
    assert cell(value) == text


def test_fields_align_values() -> None:
    assert fields([("name", "scan"), ("last error", None)]).splitlines() == [
        "name:       scan",
        "last error: -",
    ]


def test_source_text() -> None:
    src = {
        "type": "git",
        "url": "https://h/r.git",
        "branch": "main",
        "path": "src/p",
        "commit": "0123456789abcdef",
    }
    assert source_text(src) == "https://h/r.git@main:src/p (01234567)"
    assert source_text({"type": "local", "local_path": "/srv/p"}) == "/srv/p"
    assert source_text(None) == "-"


def test_plugin_rows() -> None:
    item = {
        "name": "mon",
        "kind": "task",
        "mode": "continuous",
        "state": "running",
        "cycle_count": 4,
        "error_count": 0,
        "source": {"local_path": "/p"},
    }
    assert plugin_rows([item]) == [["mon", "task", "continuous", "running", 4, 0, "/p"]]


def test_job_result_text() -> None:
    text = job_result_text(
        {"job": "d", "success": False, "message": "boom", "data": {"a": 1}, "duration_s": 0.5}
    )
    assert text.splitlines() == ["job d: FAILED in 0.500 s", "message: boom", "data:", "  a: 1"]


# -- parameters and the parser --------------------------------------------------------------------
def test_add_params_parse_as_yaml_and_nest() -> None:
    args = build_parser().parse_args(
        [
            "task",
            "add",
            "m",
            "--git",
            "file:///r",
            "--param",
            "threshold=80.5",
            "--param",
            "limits.low=1",
            "--param",
            "limits.high=2",
            "--param",
            "on=true",
        ]
    )
    assert params_dict(args.param) == {
        "threshold": 80.5,
        "limits": {"low": 1, "high": 2},
        "on": True,
    }
    assert args.coll == "tasks" and args.kind == "task" and args.path == "" and args.wait is False
    assert args.wait_timeout == 60.0


@pytest.mark.parametrize(
    "argv,output,server",
    [
        (["task", "ls"], "table", None),
        (["-o", "json", "task", "ls"], "json", None),
        (["task", "ls", "-o", "json"], "json", None),
        (["--server", "http://a:1", "-o", "json", "job", "ls"], "json", "http://a:1"),
        (["job", "ls", "--server", "http://b:2"], "table", "http://b:2"),
        (["health", "-o", "json"], "json", None),
    ],
)
def test_common_options_before_or_after_the_command(
    argv: list[str], output: str, server: str | None
) -> None:
    args = build_parser().parse_args(argv)
    assert args.output == output and args.server == server


def test_verbs_per_kind() -> None:
    parser = build_parser()
    assert parser.parse_args(["job", "run", "d", "--timeout", "5"]).timeout == 5.0
    assert parser.parse_args(["plugin", "trigger", "t"]).coll == "plugins"
    for argv in (["task", "run", "x"], ["job", "trigger", "x"], ["task", "add", "x"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2


def test_the_pat_is_never_an_argument() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["task", "add", "x", "--git", "https://h/r", "--pat", "ghp_x"])


def test_read_pat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOCMNG_GIT_PAT", "ghp_env")
    assert read_pat("https://h/r.git", prompt=False) == "ghp_env"
    assert read_pat("file:///r", prompt=False) is None  # never sent where the server refuses it
    monkeypatch.setattr(client.getpass, "getpass", lambda prompt: "ghp_typed")
    assert read_pat("https://h/r.git", prompt=True) == "ghp_typed"
    with pytest.raises(Usage, match="https"):
        read_pat("file:///r", prompt=True)
    monkeypatch.delenv("IOCMNG_GIT_PAT")
    assert read_pat("https://h/r.git", prompt=False) is None


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "given,base",
    [
        ("http://h:8080", "http://h:8080"),
        ("http://h:8080/", "http://h:8080"),
        ("http://h:8080/api/v1", "http://h:8080"),
        ("h:9000", "http://h:9000"),
    ],
)
def test_base_url(given: str, base: str) -> None:
    assert base_url(given) == base


def test_problem_line_with_the_failed_step() -> None:
    body = {
        "title": "Plugin validation failed",
        "status": 422,
        "detail": "syntax: p.py, line 1: invalid syntax",
        "steps": [
            {"step": "clone", "ok": True},
            {"step": "syntax", "ok": False, "detail": "p.py, line 1"},
        ],
    }
    err = _problem(422, "Unprocessable Entity", json.dumps(body).encode())
    assert err.line() == (
        "error: 422 Plugin validation failed: syntax: p.py, line 1: invalid syntax "
        "(failed step: syntax)"
    )


def test_problem_line_plain() -> None:
    err = _problem(
        401, "Unauthorized", b'{"title": "Unauthorized", "status": 401, "detail": "needs a token"}'
    )
    assert err.line() == "error: 401 Unauthorized: needs a token"
    err = _problem(502, "Bad Gateway", b"<html>proxy down</html>\nmore")
    assert err.line() == "error: 502 Bad Gateway: <html>proxy down</html>"
    assert (
        _problem(500, "Internal Server Error", b"").line()
        == "error: 500 Internal Server Error: (no details)"
    )


@pytest.mark.parametrize(
    "exc,code,start",
    [
        (
            ApiError(404, "Not found", "no task named 'x'"),
            1,
            "error: 404 Not found: no task named 'x'",
        ),
        (Failed("x failed: boom"), 1, "error: x failed: boom"),
        (
            Unreachable("http://h:1", "connection refused"),
            3,
            "cannot reach iocmng at http://h:1: connection refused",
        ),
        (Usage("--pat-prompt: https only"), 2, "iocmng: error: --pat-prompt"),
    ],
)
def test_run_maps_failures_to_one_line_and_an_exit_code(
    capsys: pytest.CaptureFixture[str], exc: Exception, code: int, start: str
) -> None:
    def handler(c: Client) -> int:
        raise exc

    assert client.run(handler, "http://h:1", None) == code
    err = capsys.readouterr().err
    assert err.startswith(start) and err.count("\n") == 1


def test_run_takes_url_and_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOCMNG_URL", "http://env:1/api/v1")
    monkeypatch.setenv("IOCMNG_API_TOKEN", "tok")
    seen: list[Client] = []
    assert client.run(lambda c: seen.append(c) or 0, None, None) == 0
    assert (seen[0].url, seen[0].token) == ("http://env:1", "tok")
    client.run(lambda c: seen.append(c) or 0, "http://flag:2", "flagtok")
    assert (seen[1].url, seen[1].token) == ("http://flag:2", "flagtok")


def test_unreachable_for_a_closed_port() -> None:
    from conftest import free_port

    port = free_port()
    with pytest.raises(Unreachable) as exc:
        Client(f"http://127.0.0.1:{port}", timeout=5).get("/health")
    assert str(exc.value) == f"cannot reach iocmng at http://127.0.0.1:{port}: connection refused"


# -- waiting ---------------------------------------------------------------------------------------
class Scripted(Client):
    """A Client whose GETs answer from a script (an exception is raised)."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__("http://scripted:1")
        self.answers = answers
        self.paths: list[tuple[str, Any]] = []

    def get(self, path: str, **kw: Any) -> Any:
        self.paths.append((path, kw.get("query")))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client.time, "sleep", lambda s: None)


def test_wait_generation_retries_through_the_reexec(no_sleep: None) -> None:
    down = Unreachable("http://scripted:1", "connection reset")
    c = Scripted(
        [{"generation": 1}, down, ApiError(503, "Service Unavailable", ""), {"generation": 2}]
    )
    assert c.wait_generation(2, time.monotonic() + 5)["generation"] == 2
    assert len(c.paths) == 4


def test_wait_generation_times_out(no_sleep: None) -> None:
    c = Scripted([Unreachable("http://scripted:1", "connection refused")])
    with pytest.raises(Failed, match="generation 3 .*connection refused"):
        c.wait_generation(3, time.monotonic() - 1)


def test_wait_generation_stops_on_a_client_error(no_sleep: None) -> None:
    with pytest.raises(ApiError):
        Scripted([ApiError(401, "Unauthorized", "token")]).wait_generation(3, time.monotonic() + 5)


def test_wait_plugin(no_sleep: None) -> None:
    c = Scripted([{"state": "pending"}, {"state": "starting"}, {"state": "running", "name": "m"}])
    assert c.wait_plugin("tasks", "m", time.monotonic() + 5)["state"] == "running"
    c = Scripted(
        [{"state": "starting"}, {"state": "failed", "last_error": "initialize: RuntimeError: boom"}]
    )
    with pytest.raises(Failed, match="m failed: initialize: RuntimeError: boom"):
        c.wait_plugin("tasks", "m", time.monotonic() + 5)


def test_follow_change_without_a_reload_only_waits_for_the_plugin(no_sleep: None) -> None:
    c = Scripted([{"state": "running"}])
    c.follow_change({"reload_pending": False, "generation": 4}, "tasks", "m", True, 5)
    assert [p for p, _ in c.paths] == ["/tasks/m"]


def test_logs_follow_polls_since_the_last_record_without_repeats(no_sleep: None) -> None:
    r1 = {"time": 10.0, "level": "INFO", "logger": "iocmng.plugin.m", "message": "one"}
    r2 = {"time": 11.0, "level": "INFO", "logger": "iocmng.plugin.m", "message": "two"}
    c = Scripted(
        [
            {"records": [r1]},
            Unreachable("http://scripted:1", "reset"),
            {"records": [r1, r2]},
            {"records": []},
        ]
    )
    it = c.logs("tasks", "m", 100, follow=True)
    assert [next(it), next(it)] == [r1, r2]
    assert c.paths[0] == ("/tasks/m/logs", {"limit": 100})
    assert c.paths[1] == ("/tasks/m/logs", {"since": "10.0"})
    next_query = c.paths[-1][1]
    assert next_query == {"since": "10.0"}
    it.close()
