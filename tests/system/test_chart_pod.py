"""The image in an epik8s ioc-chart pod, with podman, as the chart runs it.

epik8s-chart makes each ``softiocs`` entry (and each service) an Application
of ioc-chart, whose pod replaces the image's entry point with a shell script:
copy the values ConfigMap to /tmp/iocconfig.yaml, render every ``*.j2`` under
/epics/ioc/config with jnjrender, cd there, run ``./start.sh`` (else the
entry's ``start``), under the chart's ``runAsUser: 1000`` / ``runAsGroup:
1000``. These tests run that script (``CHART`` below, from ioc-chart's
templates/deployment.yaml) in the image built by test_container.py:

- the soft IOC of deploy/epik8s/values-softioc.yaml, its git directory being
  the sync_monitor example with deploy/epik8s/softioc/start.sh.j2, as uid
  1000:1000 and as an arbitrary uid of group 0 (OpenShift); its PVs are read
  and written from the host with aioca and p4p, and the chart's preStop hook
  (``stop``) ends it with the plugin's cleanup() run;
- the service of deploy/epik8s/values-service.yaml (``exec iocmng-server``)
  as uid 1000:1000 on a fresh /data volume: /api/v1/health, a plugin added
  from git, its PV read, a clean stop.

Each container uses loopback EPICS and HTTP ports of its own (host network).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    EXAMPLES,
    REPO,
    _purge_ca_channels,
    pva_context,
    random_prefix,
    wait_for,
    wait_for_sync,
)

from .test_container import Container, built_image, plugin_repos, podman, podman_unusable

pytestmark = pytest.mark.timeout(900)

EPIK8S = REPO / "deploy" / "epik8s"

#: ioc-chart's container command (templates/deployment.yaml) as it renders for an
#: epik8s soft IOC or service: no BUILD_INFO.txt, serial line, nfsMounts or ibek
#: template. START is the entry's ``start``.
CHART = r"""set -e  # Exit immediately if a command fails
data=`date`
cp /etc/config-dump/config.yaml /tmp/iocconfig.yaml
if [ -e /BUILD_INFO.txt ]; then
  cat /BUILD_INFO.txt
else
  echo "===>> No BUILD_INFO.txt found"
fi
echo "=== configuration yaml ======="
cat /tmp/iocconfig.yaml
echo "=============================="

echo "* copy ioc config and replace any .j2 with rendered values"
find /epics/ioc/config -name "*.j2" -exec sh -c 'jnjrender "$1" /tmp/iocconfig.yaml --output "${1%.j2}"' _ {} \;

cd /epics/ioc/config
ls -latr
if [ -x ./start.sh ];then
./start.sh
else
export PATH="$PATH:$PWD"
START
fi
"""

#: What ioc-chart's init container does before: clone the entry's gitpath and move it
#: into the config volume (here the image's /epics/ioc/config).
INIT = "cp -R /git/. /epics/ioc/config/\n"


def readable_dir(prefix: str) -> Path:
    """A directory the container's user can read (pytest's tmp_path is 0700)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def open_up(root: Path) -> None:
    for d, _, files in os.walk(root):
        os.chmod(d, 0o755)
        for f in files:
            p = os.path.join(d, f)
            os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)


def chart_values(entry: dict[str, Any], kind: str) -> dict[str, Any]:
    """The values ioc-chart gets from epik8s-chart for the entry (the parts these tests use)."""
    values = {
        **entry,
        "beamline": "testbl",
        "iocname": entry.get("iocname", entry.get("name")),
        "iocConfig": "/epics/ioc/config",
        "devtype": "softioc" if kind == "softioc" else entry.get("devtype"),
    }
    return {k: v for k, v in values.items() if v is not None}


def config_dump(values: dict[str, Any]) -> str:
    """ioc-chart's ConfigMap config.yaml (templates/configmap.yaml): a header, then the values."""
    head = 'config_dir: /epics/ioc/config\ndata_dir: /data/\nautosave_dir: "/autosave"\nioctop: /epics/ioc/config\n'
    params = "".join(f"{p['name']}: {p['value']}\n" for p in values.get("iocparam", []))
    return head + params + yaml.safe_dump(values, sort_keys=False)


def pod_env(values: dict[str, Any]) -> dict[str, str]:
    """The env ioc-chart sets (plus the entry's ``env`` list)."""
    env = {
        "IOCSH_PS1": f"{values['iocname']} > ",
        "IOC_NAME": str(values["iocname"]),
        "IOC_PREFIX": str(values.get("iocprefix", "")),
        "IOC_VERSION": "latest",
    }
    env.update({e["name"]: str(e["value"]) for e in values.get("env", [])})
    return env


class Pod:
    """One ioc-chart pod: the git directory, the ConfigMap, the chart's script in the image."""

    def __init__(
        self, repos: Path, user: str, values: dict[str, Any], git_dir: Path | None = None
    ) -> None:
        self.c = Container(repos, user=user)
        self.values = values
        self.dump = readable_dir("iocmng-pod-cm-")
        (self.dump / "config.yaml").write_text(config_dump(values))
        (self.dump / "epik8s-beamline.yaml").write_text("beamline: testbl\nnamespace: testbl\n")
        self.git = git_dir
        open_up(self.dump)

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        script = (INIT if self.git else "") + CHART.replace("START", self.values["start"])
        mounts = (
            f"{self.dump}:/etc/config-dump:ro",
            f"{self.dump / 'epik8s-beamline.yaml'}:/etc/epik8s-beamline.yaml:ro",
            *((f"{self.git}:/git:ro",) if self.git else ()),
        )
        self.c.run(
            "-c",
            script,
            env={**pod_env(self.values), **(extra_env or {})},
            mounts=mounts,
            entrypoint="sh",
        )

    def alive(self) -> None:
        if not self.c.running():
            pytest.fail(f"the pod's container exited:\n{self.c.logs()[-4000:]}")

    def pre_stop(self) -> None:
        """The chart's preStop hook: ``bash -c "<stop>"``, run in the container as its user."""
        out = podman(
            "exec", self.c.name, "bash", "-c", self.values["stop"], check=False, timeout=30
        )
        # 137: the container ended (its PID 1 exited) before the hook's shell did, as it may in a pod
        assert out.returncode in (0, 137), out.stdout + out.stderr

    def remove(self) -> None:
        self.c.remove()
        shutil.rmtree(self.dump, ignore_errors=True)


def softioc_entry() -> dict[str, Any]:
    return yaml.safe_load((EPIK8S / "values-softioc.yaml").read_text())["softiocs"][0]


def service_entry() -> dict[str, Any]:
    return yaml.safe_load((EPIK8S / "values-service.yaml").read_text())["epicsConfiguration"][
        "services"
    ]["iocmng"]


@pytest.fixture(scope="module")
def image() -> dict[str, Any]:
    """test_container.py's image: built once per session, whichever module asks first."""
    reason = podman_unusable()
    if reason:
        pytest.skip(reason)
    return built_image()


@pytest.fixture
def repo() -> Iterator[Path]:
    with plugin_repos() as base:
        yield base


@pytest.fixture
def git_dir() -> Iterator[Path]:
    """The soft IOC's directory in the beamline repository: a plugin and start.sh.j2."""
    root = readable_dir("iocmng-pod-git-")
    try:
        shutil.copytree(EXAMPLES / "sync_monitor", root, dirs_exist_ok=True)
        shutil.copy(
            EPIK8S / "softioc" / "start.sh.j2", root / "start.sh.j2"
        )  # keeps its mode (755)
        open_up(root)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _caget(pv: str, **kw: Any) -> Any:
    from aioca import caget

    return await caget(pv, timeout=5, **kw)


@pytest.mark.parametrize(
    "user", ["1000:1000", "123456:0"], ids=["chart-uid-1000", "any-uid-group-0"]
)
async def test_softioc_pod_runs_start_sh_j2(
    image: dict[str, Any], repo: Path, git_dir: Path, user: str
) -> None:
    from aioca import caput

    entry = softioc_entry()
    prefix = f"{random_prefix()}:SOFTINTLK"
    values = chart_values(
        {**entry, "iocprefix": f"{prefix}:"}, "softioc"
    )  # iocprefix often ends in ':'
    pod = Pod(repo, user, values, git_dir)
    try:
        pod.start()

        async def reading_is(value: float) -> bool:
            pod.alive()
            return await _caget(f"{prefix}:READING") == value

        await wait_for(
            lambda: reading_is(50.0), timeout=60, interval=0.2, what="READING over CA from the pod"
        )
        assert await _caget(f"{prefix}:ALARM") == 0
        await caput(
            f"{prefix}:SETPOINT", 90.0, wait=True, timeout=5
        )  # above the iocparam threshold 80
        await wait_for(
            lambda: _equal(f"{prefix}:ALARM", 1),
            timeout=20,
            what="ALARM over the iocparam threshold",
        )
        ctx = pva_context(pod.c.ports)
        try:
            await wait_for(
                lambda: _pva_float(ctx, f"{prefix}:READING", 90.0),
                timeout=20,
                what="READING over PVA",
            )
        finally:
            ctx.close()

        _purge_ca_channels()  # before the IOC goes: no CA callbacks into this test's loop later
        pod.pre_stop()
        assert pod.c.wait_exit(30) == 0, pod.c.logs()[-4000:]
        logs = pod.c.logs()
        assert "rendered /epics/ioc/config/start.sh.j2 -> /epics/ioc/config/start.sh" in logs
        assert "starting with threshold 80" in logs  # iocparam -> start.sh.j2 -> -p threshold=80
        assert (
            "softinterlock: stopped after" in logs
        )  # IOC_NAME; the preStop hook let cleanup() run
    finally:
        pod.remove()


async def _equal(pv: str, expected: Any) -> bool:
    return await _caget(pv) == expected


async def _pva_float(ctx: Any, pv: str, expected: float) -> bool:
    return float(await ctx.get(pv)) == expected


async def test_service_entry_as_uid_1000_on_a_fresh_volume(
    image: dict[str, Any], repo: Path
) -> None:
    entry = service_entry()
    values = chart_values(entry, "service")
    pod = Pod(repo, "1000:1000", values)
    c = pod.c
    try:
        # the entry's env, with this test's loopback HTTP port and PV prefix
        pod.start(
            {"IOCMNG_HOST": "127.0.0.1", "IOCMNG_PORT": str(c.http), "IOCMNG_PREFIX": c.prefix}
        )
        health = wait_for_sync(
            lambda: (pod.alive(), c.health())[1], timeout=90, interval=0.2, what="/health"
        )
        assert health["status"] == "ok", health
        status, body = c.request(
            "POST", "/tasks", {"name": "mon", "git_url": "file:///repos/plugins"}
        )
        assert status == 201, body
        c.wait_generation(body["generation"])
        await wait_for(
            lambda: _equal(f"{c.prefix}:MON:READING", 50.0), timeout=30, what="the added task's PV"
        )
        out = podman("exec", c.name, "sh", "-c", "id -u; ls -n /data/plugins", check=False)
        assert out.stdout.startswith("1000\n") and "registry" in out.stdout, out.stdout + out.stderr
        _purge_ca_channels()
        podman("stop", "-t", "20", c.name, timeout=60)  # SIGTERM to PID 1: `exec iocmng-server`
        assert c.wait_exit(30) == 0, c.logs()[-4000:]
        assert "stopped after" in c.logs()  # the task's cleanup() ran
    finally:
        pod.remove()
