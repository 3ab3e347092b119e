"""Issue 14, item 3: the cost of config.yaml expressions is bounded, on a real ``iocmng-server``.

* The rule ``[[[0]*10000]*10000]*10000 == [[[0]*10000]*10000]*10000`` (each
  ``*`` small, the value 10^12 elements) is refused at add: a 422 naming the
  rule and the expression, nothing registered, no clone left behind. Before,
  it was accepted and its first evaluation never gave the event loop back.
* A chain of transforms longer than 32 is refused at add, naming the transform.
* Chains of 21 squaring (ints) and doubling (strings) transforms are accepted
  and run with failed cycles: ``last_error`` and STATUS show the cap, the
  plugin keeps running. Before, step 21 alone took 16 s of the loop.

Throughout, a thread polls ``GET /api/v1/health`` (10 s timeout per request,
a generous bound: no other timing is asserted); a stalled event loop fails it.
The server gets loopback-only EPICS with its own ports (conftest.Server
and conftest.EpicsPorts: EPICS_CA_ADDR_LIST=127.0.0.1, AUTO_ADDR_LIST=NO,
EPICS_CAS_INTF_ADDR_LIST=127.0.0.1).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for_sync

from .conftest import Server, ServerFactory, make_repo

pytestmark = pytest.mark.timeout(180)

NESTED = "[[[0]*10000]*10000]*10000 == [[[0]*10000]*10000]*10000"
HEALTH_TIMEOUT = 10.0


class HealthWatch:
    """Polls /health from a thread while the test runs; any failure or slow answer is kept."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.srv.call("GET", "/health", timeout=HEALTH_TIMEOUT)
                if r.status == 200 and isinstance(r.body, dict) and r.body.get("status") == "ok":
                    self.ok += 1
                else:
                    self.failures.append(f"{r.status} {r.text}")
            except (OSError, ValueError) as exc:  # a timeout: the loop did not answer within 10 s
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(0.2)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(HEALTH_TIMEOUT + 5)

    def check(self) -> None:
        assert not self.failures, f"/health did not answer promptly: {self.failures[:3]}"
        assert self.ok >= 1


@pytest.fixture(scope="module")
def srv(module_server_factory: ServerFactory) -> Iterator[Server]:
    server = module_server_factory()
    yield server
    server.stop()  # kills it if its loop is stuck


def config(
    transforms: list[tuple[str, str]] = (),
    rules: list[dict[str, Any]] = (),
    outputs: dict[str, str] | None = None,
    parameters: dict[str, Any] | None = None,
) -> str:
    outs = dict(outputs or {}) | {
        name: "string" for name, _ in transforms if name not in (outputs or {})
    }
    doc = {
        "parameters": {"mode": "continuous", "interval": 0.2, **(parameters or {})},
        "arguments": {
            "inputs": {"x": {"type": "float"}},
            "outputs": {n: {"type": t} for n, t in outs.items()},
        },
        "transforms": [{"output": o, "expression": e} for o, e in transforms],
        "rules": list(rules),
    }
    return json.dumps(doc)


def clones(srv: Server) -> list[str]:
    repos = srv.data_dir / "repos"
    return sorted(p.name for p in repos.iterdir()) if repos.is_dir() else []


@pytest.mark.parametrize("source", ["git_url", "local_path"])
def test_nested_list_repetition_is_refused_at_add(srv: Server, tmp_path: Path, source: str) -> None:
    text = config(
        rules=[{"id": "R1", "condition": NESTED, "outputs": {"flag": 1}}], outputs={"flag": "bool"}
    )
    if source == "git_url":
        where = make_repo(tmp_path / "repo", {"config.yaml": text})
    else:
        (tmp_path / "plugin").mkdir()
        (tmp_path / "plugin" / "config.yaml").write_text(text)
        where = str(tmp_path / "plugin")
    before = clones(srv)
    with HealthWatch(srv) as watch:
        r = srv.call("POST", "/plugins", {"name": "nested", source: where})
        status, problem = r.status, r.body
        assert status == 422, (status, problem)
        assert "rules.R1.condition" in problem["detail"], problem
        assert NESTED in problem["detail"] and "nested list repetition" in problem["detail"], (
            problem
        )
        assert srv.call("GET", "/plugins/nested").status == 404
        names = [p["name"] for p in srv.call("GET", "/plugins").body["plugins"]]
        assert "nested" not in names
        assert clones(srv) == before, "a refused add leaves no clone behind"
        watch.ok or wait_for_sync(lambda: watch.ok, timeout=HEALTH_TIMEOUT, what="a /health answer")
    watch.check()


def squares(n: int) -> list[tuple[str, str]]:
    return [("t1", "seed * seed")] + [(f"t{i}", f"t{i - 1} * t{i - 1}") for i in range(2, n + 1)]


def test_a_transform_chain_over_the_limit_is_refused_at_add(srv: Server, tmp_path: Path) -> None:
    (tmp_path / "chain").mkdir()
    (tmp_path / "chain" / "config.yaml").write_text(config(squares(40), parameters={"seed": 3}))
    with HealthWatch(srv) as watch:
        r = srv.call("POST", "/plugins", {"name": "chain", "local_path": str(tmp_path / "chain")})
        status, problem = r.status, r.body
        assert status == 422, (status, problem)
        assert "transforms.32.expression" in problem["detail"], problem
        assert "'t32 * t32'" in problem["detail"] and "limit of 32" in problem["detail"], problem
        assert srv.call("GET", "/plugins/chain").status == 404
        watch.ok or wait_for_sync(lambda: watch.ok, timeout=HEALTH_TIMEOUT, what="a /health answer")
    watch.check()


DOUBLES = [("s1", "word + word")] + [(f"s{i}", f"s{i - 1} + s{i - 1}") for i in range(2, 22)]


@pytest.mark.parametrize(
    ("name", "transforms", "cap"),
    [("squares", squares(21), "4096-bit limit"), ("doubles", DOUBLES, "limit of 10000")],
)
def test_a_doubling_transform_chain_runs_with_failed_cycles(
    srv: Server, tmp_path: Path, name: str, transforms: list[tuple[str, str]], cap: str
) -> None:
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.yaml").write_text(
        config(transforms, parameters={"seed": 3, "word": "ab"})
    )
    with HealthWatch(srv) as watch:
        r = srv.call("POST", "/plugins", {"name": name, "local_path": str(tmp_path / name)})
        status, body = r.status, r.body
        assert status in (200, 201, 202), body
        info = wait_for_sync(
            lambda: (
                (i := srv.call("GET", f"/plugins/{name}", timeout=HEALTH_TIMEOUT).body)[
                    "error_count"
                ]
                >= 3
                and i
            ),
            timeout=60,
            interval=0.3,
            what=f"{name}: failed cycles",
        )
        assert info["state"] == "running", info
        assert cap in info["last_error"] and "transform " in info["last_error"], info
        r = srv.call("GET", f"/pvs/{srv.pv(name, 'STATUS')}", timeout=HEALTH_TIMEOUT)
        status, pv = r.status, r.body
        assert status == 200 and pv["value"] in (4, "ERROR"), pv
        r = srv.call("GET", f"/pvs/{srv.pv(name, 'MESSAGE')}", timeout=HEALTH_TIMEOUT)
        status, pv = r.status, r.body
        assert status == 200 and str(pv["value"]).startswith("transform "), (
            pv
        )  # 40 characters over CA
        assert srv.call("DELETE", f"/plugins/{name}").status == 200
    watch.check()
    assert watch.ok >= 3
