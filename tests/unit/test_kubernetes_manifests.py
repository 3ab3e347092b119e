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
