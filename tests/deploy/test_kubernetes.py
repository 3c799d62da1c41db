"""deploy/kubernetes: the kustomize output validates against the Kubernetes schemas and hangs together.

Rendered with `kubectl kustomize` (no cluster needed). Built-in kinds are validated with the
`kubernetes-validate` package in strict mode (unknown fields are errors); the Prometheus Operator's CRDs
(ServiceMonitor, PrometheusRule) are not in those schemas and are checked structurally here, and the
PrometheusRule's rules pass `promtool check rules`.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy import prometheusrule
from tests.deploy.conftest import DEPLOY, require_tool
from watcher.config import load_config

K8S = DEPLOY / "kubernetes"
BASE, SQLITE = K8S / "base", K8S / "overlays" / "sqlite"
# The newest schema version the installed package knows, and an older release still widely run.
VERSIONS = (kubernetes_validate.utils.latest_version(), "1.29")
CRD_GROUP = "monitoring.coreos.com/v1"


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize path` renders."""
    kubectl = require_tool("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single document of `kind`."""
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module", params=["base", "sqlite"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return kustomize(BASE if request.param == "base" else SQLITE)


@pytest.mark.parametrize("version", VERSIONS)
def test_builtin_kinds_validate_against_the_schemas(rendered: list[dict[str, Any]], version: str) -> None:
    """Every non-CRD document passes strict schema validation."""
    builtin = [d for d in rendered if d["apiVersion"] != CRD_GROUP]
    assert {d["kind"] for d in builtin} >= {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for doc in builtin:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("path", [BASE / "secret.example.yaml", SQLITE / "persistentvolumeclaim.yaml"])
def test_standalone_manifests_validate(path: Path) -> None:
    """The Secret example (not a kustomize resource) and the PVC validate too."""
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), VERSIONS[0], strict=True)


def test_crds_are_structurally_sound(rendered: list[dict[str, Any]]) -> None:
    """The ServiceMonitor scrapes the Service's named port; the PrometheusRule carries alert rules."""
    service = by_kind(rendered, "Service")
    monitor = by_kind(rendered, "ServiceMonitor")
    assert monitor["apiVersion"] == CRD_GROUP
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings"}
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
    # The alert rules select job="job-watcher", which the operator takes from the Service's name.
    assert service["metadata"]["name"] == "job-watcher"

    rule = by_kind(rendered, "PrometheusRule")
    assert rule["apiVersion"] == CRD_GROUP
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str)
            assert set(r) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def test_prometheusrule_is_in_sync_with_the_rules_file() -> None:
    """The base's PrometheusRule is exactly what the generator makes of deploy/prometheus/alerts.yml."""
    assert prometheusrule.TARGET.read_text() == prometheusrule.render(), (
        "deploy/kubernetes/base/prometheusrule.yaml is stale: "
        "run .venv/bin/python -m tests.deploy.prometheusrule --write"
    )
    generated = yaml.safe_load(prometheusrule.TARGET.read_text())
    assert generated["spec"]["groups"] == yaml.safe_load(prometheusrule.ALERTS.read_text())["groups"]


def test_prometheusrule_rules_pass_promtool(tmp_path: Path) -> None:
    """`promtool check rules` accepts the groups the PrometheusRule carries."""
    promtool = require_tool("promtool")
    rule = by_kind(kustomize(BASE), "PrometheusRule")
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_deployment_is_production_shaped(rendered: list[dict[str, Any]]) -> None:
    """Probes, resources, a locked-down security context and a grace above the daemon's own."""
    pod = by_kind(rendered, "Deployment")["spec"]["template"]["spec"]
    c = _container(rendered)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert set(c["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False

    config = tomllib.loads(by_kind(rendered, "ConfigMap")["data"]["watcher.toml"])
    assert pod["terminationGracePeriodSeconds"] >= config["daemon"]["shutdown_grace_s"] + 10
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[config["daemon"]["state_dir"]] == "state"
    port = int(config["api"]["listen"].rsplit(":", 1)[1])
    assert [p["containerPort"] for p in c["ports"]] == [port]
    policy = by_kind(rendered, "NetworkPolicy")
    assert port in [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    pod_labels = by_kind(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = by_kind(rendered, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()


def test_base_leaves_replicas_and_store_to_the_overlay() -> None:
    """The base assumes neither one replica nor SQLite, so a PostgreSQL overlay can scale it out."""
    docs = kustomize(BASE)
    spec = by_kind(docs, "Deployment")["spec"]
    assert "replicas" not in spec and "strategy" not in spec
    assert "url" not in tomllib.loads(by_kind(docs, "ConfigMap")["data"]["watcher.toml"]).get("store", {})
    assert by_kind(docs, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "job-watcher"}},
    }


def test_sqlite_overlay_runs_one_pod_on_a_volume() -> None:
    """One replica, Recreate (never two pods on the file), the state volume on the PVC it declares."""
    docs = kustomize(SQLITE)
    spec = by_kind(docs, "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    (state,) = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == "state"]
    assert state == {"name": "state", "persistentVolumeClaim": {"claimName": "job-watcher-state"}}
    pvc = by_kind(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "job-watcher-state"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_configmap_is_a_valid_configuration(tmp_path: Path) -> None:
    """The ConfigMap's watcher.toml passes the daemon's own validation with the Secret's keys as files."""
    docs = kustomize(SQLITE)
    text = by_kind(docs, "ConfigMap")["data"]["watcher.toml"]
    secret = yaml.safe_load((BASE / "secret.example.yaml").read_text())
    c = _container(docs)
    (secret_mount,) = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "secrets"]
    for key, value in secret["stringData"].items():
        (tmp_path / key).write_text(value + "\n")
    config = tmp_path / "watcher.toml"
    config.write_text(text.replace(secret_mount, str(tmp_path)))
    env = {e["name"]: e.get("value", "") for e in c["env"]}
    assert env["WATCHER_CONFIG"] == "/etc/job-watcher/watcher.toml"
    api_tokens_ref = next(e for e in c["env"] if e["name"] == "WATCHER_API__TOKENS")["valueFrom"]
    settings = load_config(
        config, env={"WATCHER_API__TOKENS": secret["stringData"][api_tokens_ref["secretKeyRef"]["key"]]}
    )
    assert not settings.api.is_loopback() and settings.api.tokens
    assert settings.resolved_store_url() == "sqlite:////var/lib/job-watcher/watcher.db"
