"""The runner refuses bad plugins before iocInit, naming the file and the field."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import EXAMPLES, EpicsPorts, free_port, runner_command

GOOD_TASK = """
from iocmng import TaskBase

class Good(TaskBase):
    def initialize(self): pass
    def execute(self): pass
    def cleanup(self): pass
"""


def plugin(root: Path, name: str, files: dict[str, str]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for fname, text in files.items():
        (d / fname).write_text(textwrap.dedent(text))
    return d


def run_refused(dirs: list[Path], params: list[str] = (), prefix: str | None = "BAD") -> str:
    """Run the runner; assert it exits non-zero without reaching iocInit; return its output."""
    ports = EpicsPorts(free_port(), free_port(), free_port(), free_port())
    proc = subprocess.run(
        runner_command(dirs, prefix, list(params)),
        env=ports.env(),
        cwd=dirs[0].parent if dirs else None,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"the runner accepted a bad plugin:\n{output}"
    assert "iocInit" not in output, f"refused only after iocInit:\n{output}"
    assert "Traceback" not in output, f"a crash, not a refusal:\n{output}"
    return proc.stderr


def test_malformed_yaml(tmp_path: Path) -> None:
    d = plugin(
        tmp_path,
        "badyaml",
        {"p.py": GOOD_TASK, "config.yaml": "parameters: {interval: 1\npvs: [\n"},
    )
    err = run_refused([d])
    assert str(d / "config.yaml") in err
    assert "not valid YAML at line" in err


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    cfg = "pvs:\n  outputs:\n    TEMP: {type: double}\n"
    d = plugin(tmp_path, "badtype", {"p.py": GOOD_TASK, "config.yaml": cfg})
    err = run_refused([d])
    assert str(d / "config.yaml") in err
    assert "pvs.outputs.TEMP.type" in err and "'float'" in err


def test_unknown_key_names_the_field(tmp_path: Path) -> None:
    cfg = "pvs:\n  inputs:\n    SP: {type: float, units: mm}\n"
    d = plugin(tmp_path, "badkey", {"p.py": GOOD_TASK, "config.yaml": cfg})
    err = run_refused([d])
    assert "pvs.inputs.SP.units" in err and "unknown key" in err


def test_missing_config(tmp_path: Path) -> None:
    d = plugin(tmp_path, "noconfig", {"p.py": GOOD_TASK})
    err = run_refused([d])
    assert str(d / "config.yaml") in err and "missing" in err


def test_no_plugin_class(tmp_path: Path) -> None:
    d = plugin(tmp_path, "noclass", {"p.py": "class Helper:\n    pass\n", "config.yaml": ""})
    err = run_refused([d])
    assert str(d) in err
    assert "no plugin class" in err and "TaskBase" in err


def test_two_plugin_classes(tmp_path: Path) -> None:
    second = GOOD_TASK.replace("class Good", "class Other")
    d = plugin(tmp_path, "twoclasses", {"a.py": GOOD_TASK, "b.py": second, "config.yaml": ""})
    err = run_refused([d])
    assert "more than one plugin class" in err
    assert "Good (a.py)" in err and "Other (b.py)" in err


def test_missing_abstract_method(tmp_path: Path) -> None:
    code = """
    from iocmng import TaskBase

    class Incomplete(TaskBase):
        def initialize(self): pass
        def execute(self): pass
    """
    d = plugin(tmp_path, "abstract", {"inc.py": code, "config.yaml": ""})
    err = run_refused([d])
    assert "Incomplete (inc.py)" in err
    assert "does not implement cleanup" in err


def test_import_error(tmp_path: Path) -> None:
    d = plugin(tmp_path, "importerr", {"p.py": "import no_such_module_qq\n", "config.yaml": ""})
    err = run_refused([d])
    assert "p.py: import failed: ModuleNotFoundError" in err


def test_pv_name_too_long(tmp_path: Path) -> None:
    long_name = "A" * 50
    cfg = f"pvs:\n  outputs:\n    {long_name}: {{type: float}}\n"
    d = plugin(tmp_path, "longpv", {"p.py": GOOD_TASK, "config.yaml": cfg})
    err = run_refused([d], prefix="BL:NS")
    assert f"pvs.outputs.{long_name}" in err
    assert f"BL:NS:LONGPV:{long_name}" in err
    assert "over the EPICS limit of 60" in err
    assert "config.yaml" in err


def test_pv_collides_with_default(tmp_path: Path) -> None:
    cfg = "pvs:\n  inputs:\n    ENABLE: {type: bool}\n"
    d = plugin(tmp_path, "collide", {"p.py": GOOD_TASK, "config.yaml": cfg})
    err = run_refused([d])
    assert "pvs.inputs.ENABLE" in err and "default PV" in err


def test_bad_parameter_override(tmp_path: Path) -> None:
    err = run_refused([EXAMPLES / "sync_monitor"], ["interval=0"])
    assert "parameters.interval" in err
    assert str(EXAMPLES / "sync_monitor" / "config.yaml") in err


def test_bad_mode_override(tmp_path: Path) -> None:
    err = run_refused([EXAMPLES / "sync_monitor"], ["mode=sometimes"])
    assert "parameters.mode" in err


def test_one_bad_plugin_refuses_the_whole_run(tmp_path: Path) -> None:
    bad = plugin(tmp_path, "broken", {"p.py": GOOD_TASK, "config.yaml": "bogus: 1\n"})
    err = run_refused([EXAMPLES / "sync_monitor", bad])
    assert "bogus" in err
    assert "sync_monitor" not in err.split("refused", 1)[-1].split("\n")[0]
    assert "starting with threshold" not in err, (
        "a plugin was initialized although the run is refused"
    )


def test_not_a_directory(tmp_path: Path) -> None:
    err = run_refused([tmp_path / "does-not-exist"])
    assert "does-not-exist: not a directory" in err


@pytest.mark.parametrize("prefix", ["BAD PREFIX", "A$B", "P" * 41])
def test_bad_prefix(tmp_path: Path, prefix: str) -> None:
    # a prefix that cannot make record names is refused too
    err = run_refused([EXAMPLES / "sync_monitor"], prefix=prefix)
    assert f"--prefix {prefix!r}" in err
