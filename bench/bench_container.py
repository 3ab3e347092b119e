"""Container image size and cold start (container start to /health 200).

    python bench/bench_container.py [--no-cache] [--runs 5]

Uses podman as set up by ../shared/tools/podman-setup.sh (local Debian base
image, no registry). Host networking on loopback ports of its own; EPICS
stays on loopback. Prints the figures; docs/performance.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PODMAN = ["podman", "--runtime", "runc"]
FLAGS = ["--ulimit", "nofile=10000:10000", "--ulimit", "nproc=1000:1000"]
BASE = os.environ.get("IOCMNG_BASE_IMAGE", "localhost/debian-python:bookworm")
IMAGE = "localhost/iocmng:bench"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args: str, timeout: float = 1200) -> str:
    return subprocess.run(
        [*PODMAN, *args], check=True, capture_output=True, text=True, timeout=timeout
    ).stdout


def cold_start() -> float:
    http = free_port()
    env = {
        "IOCMNG_HOST": "127.0.0.1",
        "IOCMNG_PORT": str(http),
        "IOCMNG_PREFIX": "BENCH",
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_SERVER_PORT": str(free_port()),
        "EPICS_CA_REPEATER_PORT": str(free_port()),
        "EPICS_PVA_SERVER_PORT": str(free_port()),
        "EPICS_PVA_BROADCAST_PORT": str(free_port()),
    }
    name = f"iocmng-bench-{uuid.uuid4().hex[:8]}"
    args = ["run", "-d", "--rm", "--name", name, "--network=host", *FLAGS]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    t0 = time.monotonic()
    sh(*args, IMAGE)
    try:
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{http}/api/v1/health", timeout=1
                ) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.02)
            if time.monotonic() - t0 > 120:
                raise TimeoutError("no /health within 120 s")
    finally:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "2", name], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-cache", action="store_true", help="build every layer from scratch")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    t0 = time.monotonic()
    sh(
        "build",
        "--format",
        "docker",
        *FLAGS,
        "--network=host",
        *(["--no-cache"] if args.no_cache else []),
        "--build-arg",
        f"BASE_IMAGE={BASE}",
        "-t",
        IMAGE,
        str(REPO),
    )
    build_s = time.monotonic() - t0
    image = json.loads(sh("image", "inspect", IMAGE))[0]
    base = json.loads(sh("image", "inspect", BASE))[0]
    starts = [cold_start() for _ in range(args.runs)]
    print(f"build{' (no cache)' if args.no_cache else ''}: {build_s:.1f} s")
    print(
        f"image size: {image['Size'] / 1e6:.0f} MB (base {BASE}: {base['Size'] / 1e6:.0f} MB, "
        f"iocmng layers: {(image['Size'] - base['Size']) / 1e6:.0f} MB)"
    )
    print(
        f"cold start to /health 200 over {args.runs} runs: median {statistics.median(starts):.2f} s, "
        f"min {min(starts):.2f} s, max {max(starts):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
