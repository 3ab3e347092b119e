"""cli parameter parsing and JobResult normalization."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from iocmng import JobResult as TopJobResult
from iocmng.cli import build_parser
from iocmng.client.cli import params_dict, parse_param
from iocmng.plugin.job import JobResult
from iocmng.runtime.local import name_from_dir
from iocmng.runtime.runtime import normalize_result


# -- cli -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("n=3", ("n", 3)),
        ("x=0.5", ("x", 0.5)),
        ("flag=true", ("flag", True)),
        ("flag=no", ("flag", False)),
        ("name=abc", ("name", "abc")),
        ("s='3'", ("s", "3")),
        ("empty=", ("empty", "")),
        ("eq=a=b", ("eq", "a=b")),
        ("lst=[1, 2]", ("lst", [1, 2])),
        ("d={a: 1}", ("d", {"a": 1})),
        (" spaced =1", ("spaced", 1)),
        ("bad=[unclosed", ("bad", "[unclosed")),
    ],
)
def test_parse_param(text: str, expected: tuple) -> None:
    assert parse_param(text) == expected


def test_parse_param_needs_equals() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        parse_param("novalue")


def test_params_dict_nests_dotted_keys() -> None:
    pairs = [("interval", 0.1), ("opts.a", 1), ("opts.b.c", "x"), ("threshold", 5)]
    assert params_dict(pairs) == {
        "interval": 0.1,
        "threshold": 5,
        "opts": {"a": 1, "b": {"c": "x"}},
    }
    assert params_dict(None) == {}
    assert params_dict([("k", 1), ("k", 2)]) == {"k": 2}, "the last of repeated keys wins"


def test_run_arguments() -> None:
    args = build_parser().parse_args(
        ["run", "a", "b", "--prefix", "X:Y", "-p", "n=1", "--param", "m.k=on"]
    )
    assert args.dirs == [Path("a"), Path("b")]
    assert args.prefix == "X:Y"
    assert params_dict(args.param) == {"n": 1, "m": {"k": True}}


def test_run_needs_a_directory(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run"])
    assert info.value.code == 2
    assert "PLUGIN_DIR" in capsys.readouterr().err


@pytest.mark.parametrize(
    "dirname,expected",
    [
        ("sync_monitor", "sync_monitor"),
        ("My Plugin", "my-plugin"),
        ("--x--", "x"),
        ("___", "plugin"),
        ("a" * 50, "a" * 40),
    ],
)
def test_name_from_dir(tmp_path: Path, dirname: str, expected: str) -> None:
    d = tmp_path / dirname
    d.mkdir()
    assert name_from_dir(d) == expected


# -- JobResult -----------------------------------------------------------------------------------
def test_jobresult_import_paths_are_the_same_class() -> None:
    assert TopJobResult is JobResult


def test_jobresult_defaults_and_dict() -> None:
    r = JobResult(success=True)
    assert r.to_dict() == {"success": True, "data": {}, "message": ""}
    assert JobResult(True).data is not JobResult(True).data, "no shared mutable default"


@pytest.mark.parametrize(
    "value,expected",
    [
        (JobResult(False, {"a": 1}, "m"), (False, {"a": 1}, "m")),
        (None, (True, {}, "")),
        ({"success": False, "message": "bad"}, (False, {}, "bad")),
        ({"success": 1, "data": {"x": 2}}, (True, {"x": 2}, "")),
        ({"success": True, "data": None}, (True, {}, "")),
        ({"uptime": 3}, (True, {"uptime": 3}, "")),
        (True, (True, {}, "")),
        (False, (False, {}, "")),
        (42, (True, {"result": 42}, "")),
        ("text", (True, {"result": "text"}, "")),
    ],
)
def test_normalize_result(value: object, expected: tuple) -> None:
    r = normalize_result(value)
    assert isinstance(r, JobResult)
    assert (r.success, r.data, r.message) == expected
    assert isinstance(r.success, bool)
