"""API fuzzing (issue 7, item 1): schemathesis against a real ``iocmng-server``.

The schema is the server's own ``/api/v1/openapi.json``. Every operation is
fuzzed twice: with schema-valid data (positive) and with data that breaks
the schema (negative), path parameters and bodies generated. Every answer
must pass these checks:

* no 5xx (``not_a_server_error``);
* the status code is one the document declares (``status_code_conformance``);
* the content type and the body conform to the document where it gives a
  schema (``content_type_conformance``, ``response_schema_conformance``);
* every 4xx is ``application/problem+json`` with ``status`` equal to the
  HTTP status and a non-empty ``detail``.

A second pass aims at the plugins that exist (the ``--demo`` set), so that
restarts, job runs, triggers and logs reach real plugins with generated
parameters instead of answering 404. ``GET /api/v1/events`` is an endless
SSE stream and is left out (tests/system/test_observability.py covers it).

The number of examples per operation and mode is ``IOCMNG_FUZZ_EXAMPLES``
(default 20: ~50 s on 2 cores); ``scripts/fuzz.sh`` runs a long session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import Server, ServerFactory  # noqa: E402

pytestmark = pytest.mark.timeout(400)

EXAMPLES = int(os.environ.get("IOCMNG_FUZZ_EXAMPLES", "20"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
PROBLEM = "application/problem+json"
#: Plugins of the --demo set, by the collection that holds them.
DEMO = {"tasks": ["sync_monitor", "async_monitor", "triggered_scan"], "jobs": ["diagnostics_job"]}
SKIP = {"/api/v1/events", "/api/v1/pvs/{pv}/monitor"}  # endless SSE streams


@pytest.fixture(scope="module")
def fuzz_server(module_server_factory: ServerFactory) -> Server:
    return module_server_factory(
        demo=True,
        # A generated http(s):// git_url must not hold a request for the default 120 s.
        env={
            "IOCMNG_GIT_TIMEOUT": "3",
            "IOCMNG_IMPORT_TIMEOUT": "10",
            "IOCMNG_RELOAD_DELAY": "0.2",
            # a generated PV name waits for its read timeout: keep it short
            "IOCMNG_PV_MAX_TIMEOUT": "0.5",
            "IOCMNG_PV_TIMEOUT": "0.2",
        },
    )


def check_problem(response: Any) -> None:
    """A 4xx is problem+json whose status matches and whose detail says something."""
    if not 400 <= response.status_code < 500:
        return
    ctype = next((v for k, v in response.headers.items() if k.lower() == "content-type"), "")
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    assert ctype.split(";")[0].strip() == PROBLEM, (
        f"{response.status_code} with {ctype!r}: {response.text[:300]}"
    )
    body = json.loads(response.text)
    assert body["status"] == response.status_code, body
    assert isinstance(body.get("detail"), str) and body["detail"].strip(), body


def fuzz_operation(
    op: Any, base: str, mode: GenerationMode, stats: dict[str, int], **fixed: Any
) -> None:
    @given(case=op.as_strategy(generation_mode=mode, **fixed))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(base_url=base, timeout=30)
        stats[str(response.status_code)] = stats.get(str(response.status_code), 0) + 1
        case.validate_response(response, checks=CHECKS)
        check_problem(response)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        stats["no-negative"] = stats.get("no-negative", 0) + 1  # nothing to break (no parameters)


def operations(srv: Server) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    return [op for op in ops if op.path not in SKIP]


def test_fuzz_every_operation(fuzz_server: Server, tmp_path: Path) -> None:
    srv = fuzz_server
    base = f"http://127.0.0.1:{srv.http_port}"
    ops = operations(srv)
    assert len(ops) >= 20, [f"{o.method} {o.path}" for o in ops]
    stats: dict[str, int] = {}
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(op, base, mode, stats)
    # The same operations on the plugins that exist (not DELETE: that would end the pass).
    for op in ops:
        if "{name}" not in op.path or op.method.upper() == "DELETE":
            continue
        coll = op.path.split("/")[3]
        names = DEMO.get(coll, DEMO["tasks"] + DEMO["jobs"])
        for name in names:
            fuzz_operation(op, base, GenerationMode.POSITIVE, stats, path_parameters={"name": name})
    skipped = stats.pop("no-negative", 0)
    total = sum(stats.values())
    print(
        f"\nfuzz: {total} requests over {len(ops)} operations; by status {dict(sorted(stats.items()))}; "
        f"{skipped} operation(s) have nothing a negative case could break"
    )
    (Path(os.environ.get("IOCMNG_FUZZ_REPORT", tmp_path / "fuzz.json"))).write_text(
        json.dumps({"requests": total, "operations": len(ops), "by_status": stats})
    )
    assert not any(code.startswith("5") for code in stats), stats
    # The service is still serving, and nothing in its log is a traceback of ours.
    assert srv.health()["status"] == "ok"
    log = srv.log()
    ours = [chunk for chunk in log.split("Traceback")[1:] if "aiohttp.http_exceptions" not in chunk]
    assert not ours, log[-4000:]
