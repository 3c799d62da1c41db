"""deploy/kubernetes/overlays/ha: three replicas on PostgreSQL render, validate and configure a daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.test_kubernetes import BASE, CRD_GROUP, K8S, VERSIONS, by_kind, kustomize
from watcher.config import load_config

HA = K8S / "overlays" / "ha"


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return kustomize(HA)


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


@pytest.mark.parametrize("version", VERSIONS)
def test_validates_against_the_schemas(docs: list[dict[str, Any]], version: str) -> None:
    """Every built-in document of the overlay, and the Secret example, pass strict validation."""
    for doc in docs:
        if doc["apiVersion"] != CRD_GROUP:
            kubernetes_validate.validate(doc, version, strict=True)
    example = yaml.safe_load((HA / "postgres-secret.example.yaml").read_text())
    kubernetes_validate.validate(example, version, strict=True)


def test_three_spread_replicas_with_a_disruption_budget(docs: list[dict[str, Any]]) -> None:
    """3 replicas, rolling updates side by side, spread over nodes and zones, at most one drained at once."""
    spec = by_kind(docs, "Deployment")["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = spec["template"]["metadata"]["labels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    pdb = by_kind(docs, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"].items() <= labels.items()


def test_store_url_comes_from_a_secret_and_configures_postgres(
    docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    """WATCHER_STORE__URL is a secretKeyRef (never a literal), and the result is a valid PostgreSQL config."""
    c = _container(docs)
    env = {e["name"]: e for e in c["env"]}
    ref = env["WATCHER_STORE__URL"]["valueFrom"]["secretKeyRef"]
    example = yaml.safe_load((HA / "postgres-secret.example.yaml").read_text())
    assert ref["name"] == example["metadata"]["name"] and ref["key"] in example["stringData"]
    assert "postgresql://" not in yaml.safe_dump(docs)  # no URL (nor password) in the rendered manifests
    secret = yaml.safe_load((BASE / "secret.example.yaml").read_text())
    (mount,) = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "secrets"]
    for key, value in secret["stringData"].items():
        (tmp_path / key).write_text(value + "\n")
    config = tmp_path / "watcher.toml"
    config.write_text(by_kind(docs, "ConfigMap")["data"]["watcher.toml"].replace(mount, str(tmp_path)))
    settings = load_config(
        config,
        env={
            "WATCHER_API__TOKENS": secret["stringData"]["api-tokens"],
            "WATCHER_STORE__URL": example["stringData"][ref["key"]],
            "WATCHER_DAEMON__LEASE_S": env["WATCHER_DAEMON__LEASE_S"]["value"],
        },
    )
    assert settings.resolved_store_url().startswith("postgresql://")
    assert settings.daemon.lease_s == 30.0


def test_the_network_policy_lets_the_replicas_reach_the_database(docs: list[dict[str, Any]]) -> None:
    """The base policy allows DNS, 80 and 443 out; the overlay adds PostgreSQL's 5432 and keeps the rest."""
    egress = by_kind(docs, "NetworkPolicy")["spec"]["egress"]
    ports = {(p["protocol"], p["port"]) for rule in egress for p in rule.get("ports", [])}
    assert {("TCP", 5432), ("TCP", 443), ("TCP", 80), ("UDP", 53)} <= ports
    base = by_kind(kustomize(BASE), "NetworkPolicy")["spec"]["egress"]
    assert ("TCP", 5432) not in {(p["protocol"], p["port"]) for rule in base for p in rule.get("ports", [])}
