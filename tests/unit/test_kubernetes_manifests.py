"""The example Kubernetes manifests pass an offline schema check (kubernetes-validate)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

MANIFESTS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "kubernetes").glob("*.yaml"))
K8S_VERSION = "1.30.0"


def test_manifests_exist() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in MANIFESTS}
    assert kinds == {"Deployment", "Service", "PersistentVolumeClaim", "Secret"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_probes_and_ports_match_the_image() -> None:
    deploy = yaml.safe_load((MANIFESTS[0].parent / "deployment.yaml").read_text())
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"
    ports = {(p["containerPort"], p["protocol"]) for p in container["ports"]}
    containerfile = (MANIFESTS[0].parents[2] / "Containerfile").read_text()
    for port, proto in ports:
        assert f"{port}/{proto.lower()}" in containerfile, (port, proto)


def test_a_typo_is_caught() -> None:
    doc = yaml.safe_load((MANIFESTS[0].parent / "service.yaml").read_text())
    doc["spec"]["portz"] = doc["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# -- deploy/epik8s: the entries for epik8s-chart (Helm values, not manifests) ------------------
EPIK8S = MANIFESTS[0].parents[1] / "epik8s"
CONTAINERFILE = (MANIFESTS[0].parents[2] / "Containerfile").read_text()


def _softioc() -> dict:
    return yaml.safe_load((EPIK8S / "values-softioc.yaml").read_text())["softiocs"][0]


def _service() -> dict:
    return yaml.safe_load((EPIK8S / "values-service.yaml").read_text())["epicsConfiguration"][
        "services"
    ]["iocmng"]


def test_the_image_user_is_the_charts() -> None:
    deploy = yaml.safe_load((MANIFESTS[0].parent / "deployment.yaml").read_text())
    ctx = deploy["spec"]["template"]["spec"]["securityContext"]
    assert "\nUSER 1000\n" in CONTAINERFILE  # numeric, as runAsNonRoot needs
    assert (
        ctx["runAsUser"] == ctx["fsGroup"] == 1000
    )  # also ioc-chart's default runAsUser/runAsGroup


def test_softioc_entry_has_what_epik8s_chart_and_ioc_chart_use() -> None:
    entry = _softioc()
    assert entry["name"] == entry["name"].lower() and entry["iocprefix"]  # release name; IOC_PREFIX
    assert (
        entry["gitinit"] and entry["gitpath"]
    )  # the init container clones it into /epics/ioc/config
    assert all({"name", "value"} <= set(p) for p in entry["iocparam"])
    # start/stop name the scripts the Containerfile installs under /epics/ioc
    for key in ("start", "stop"):
        script = entry[key]
        assert (
            script.startswith("/epics/ioc/")
            and (EPIK8S / "image" / script.rsplit("/", 1)[1]).is_file()
        )
        assert f"deploy/epik8s/image/{script.rsplit('/', 1)[1]}" in CONTAINERFILE


def test_start_sh_j2_is_executable_and_runs_iocmng_run() -> None:
    import os

    template = EPIK8S / "softioc" / "start.sh.j2"
    assert os.access(template, os.X_OK), (
        "jnjrender gives start.sh the template's mode; the chart needs -x"
    )
    text = template.read_text()
    assert text.startswith("#!/bin/sh\n") and "exec iocmng-run --config config.yaml" in text
    for script in ("start.sh", "stop.sh"):
        assert os.access(EPIK8S / "image" / script, os.X_OK), script


def test_service_entry_sets_only_known_settings() -> None:
    from iocmng.config.settings import Settings, load_settings

    entry = _service()
    assert entry["start"] == "exec iocmng-server"  # exec: the service is PID 1 and gets SIGTERM
    env = {e["name"]: str(e["value"]) for e in entry["env"]}
    known = {f"IOCMNG_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, set(env) - known
    settings = load_settings(env)
    assert settings.plugins_dir.is_relative_to(entry["dataVolume"]["hostPath"])  # on the PVC
    assert f"{entry['service']['http']['port']}/tcp" in CONTAINERFILE
    assert settings.port == entry["service"]["http"]["port"]


def test_manifests_pass_the_secure_default() -> None:
    """Issue 14, item 1: the Deployment requires the token from the Secret (left empty there,
    the service refuses to start); the epik8s entry, which cannot carry a Secret, says
    IOCMNG_ALLOW_INSECURE out loud; both list the names clients use."""
    from iocmng.config.settings import load_settings
    from iocmng.errors import SettingsError

    deploy = yaml.safe_load((MANIFESTS[0].parent / "deployment.yaml").read_text())
    env = deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    token = next(e for e in env if e["name"] == "IOCMNG_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "iocmng-api", "key": "token"}
    assert "optional" not in token["valueFrom"]["secretKeyRef"]  # no Secret: the pod does not start
    secret = yaml.safe_load((MANIFESTS[0].parent / "secret.yaml").read_text())
    with pytest.raises(SettingsError, match="IOCMNG_API_TOKEN"):
        load_settings({"IOCMNG_API_TOKEN": secret["stringData"]["token"]})
    literal = {e["name"]: e["value"] for e in env if "value" in e}
    hosts = literal["IOCMNG_ALLOWED_HOSTS"].replace("$(POD_NAMESPACE)", "ns")
    s = load_settings(
        {
            **literal,
            "IOCMNG_ALLOWED_HOSTS": hosts,
            "IOCMNG_API_TOKEN": "t",
            "IOCMNG_HOST": "0.0.0.0",
        }
    )
    s.check_exposure()
    assert "iocmng.ns.svc" in s.allowed_host_list
    entry = {e["name"]: str(e["value"]) for e in _service()["env"]}
    s = load_settings({**entry, "IOCMNG_HOST": "0.0.0.0"})  # the image's IOCMNG_HOST
    assert s.insecure and s.allow_insecure
    s.check_exposure()
