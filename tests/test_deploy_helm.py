"""The Helm chart: `helm lint`, `helm template` with default and non-default values, and every
rendered manifest validated against the Kubernetes schemas (kubernetes-validate)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy_tools import CHART, helm_binary, settings_variables

KUBERNETES = kubernetes_validate.latest_version()
CUSTOM = {
    "kafka": {"bootstrap": "kafka-0.kafka:9092,kafka-1.kafka:9092", "topicPrefix": "prod."},
    "schemaRegistryUrl": "http://schema-registry:8081",
    "config": {"CONVOSTREAM_LOG_LEVEL": "DEBUG"},
    "secrets": {
        "apiKey": {"existingSecret": "elevenlabs", "key": "xi-api-key"},
        "issuerKeys": {"existingSecret": "issuer-keys"},
        "databaseUrl": {"existingSecret": "convostream-db", "key": "url"},
    },
    "metrics": {"port": 9464, "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}},
    "collector": {"replicas": 5, "config": {"CONVOSTREAM_COLLECTOR_BUFFER_BYTES": 134217728}},
    "processor": {"replicas": 3, "persistence": {"size": "50Gi", "storageClassName": "fast"}},
    "commandWorker": {
        "replicas": 3,
        "policy": {"issuers": {"ops": {"commands": ["*"], "phone_numbers": ["+1*"]}}},
    },
}


@pytest.fixture(scope="session")
def helm() -> Path:
    return helm_binary()


def run_helm(helm: Path, *args: str) -> str:
    done = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def render(
    helm: Path, tmp_path: Path, values: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    args = ["template", "cs", str(CHART), "--namespace", "pipeline"]
    if values is not None:
        args += ["--values", values_file(tmp_path, values)]
    return [doc for doc in yaml.safe_load_all(run_helm(helm, *args)) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) of every workload."""
    return [
        (d["spec"]["template"]["spec"], c)
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("custom", [False, True], ids=["defaults", "custom"])
def test_lint(helm: Path, tmp_path: Path, custom: bool) -> None:
    args = ["lint", "--strict", str(CHART)]
    if custom:
        args += ["--values", values_file(tmp_path, CUSTOM)]
    run_helm(helm, *args)


@pytest.mark.parametrize("custom", [False, True], ids=["defaults", "custom"])
def test_rendered_manifests_are_valid_kubernetes(helm: Path, tmp_path: Path, custom: bool) -> None:
    docs = render(helm, tmp_path, CUSTOM if custom else None)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "ConfigMap", "Service", "PodDisruptionBudget"} <= kinds
    assert "Secret" not in kinds, "the chart only references existing Secrets"
    assert ("ServiceMonitor" in kinds) is custom
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD: checked against the Services below
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_defaults(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path)
    deployments = by_kind(docs, "Deployment")
    assert deployments["cs-convostream-collector"]["spec"]["replicas"] == 2
    config = by_kind(docs, "ConfigMap")["cs-convostream-collector"]["data"]
    assert config["CONVOSTREAM_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert config["CONVOSTREAM_METRICS_PORT"] == "9100"
    for _pod, container in containers(docs):
        names = {e["name"] for e in container.get("env", [])}
        assert "CONVOSTREAM_API_KEY" not in names, "no Secret named, no secret reference"


def test_custom_values(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, CUSTOM)
    deployments = by_kind(docs, "Deployment")
    assert deployments["cs-convostream-collector"]["spec"]["replicas"] == 5
    assert deployments["cs-convostream-command-worker"]["spec"]["replicas"] == 3
    processor = by_kind(docs, "StatefulSet")["cs-convostream-processor"]
    assert processor["spec"]["replicas"] == 3
    assert processor["spec"]["serviceName"] in by_kind(docs, "Service")
    (claim,) = processor["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    (container,) = processor["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    processor_config = by_kind(docs, "ConfigMap")["cs-convostream-processor"]["data"]
    assert processor_config["CONVOSTREAM_PROCESSOR_DATA_DIR"].startswith(mounts["state"] + "/")

    configs = by_kind(docs, "ConfigMap")
    collector = configs["cs-convostream-collector"]["data"]
    assert collector["CONVOSTREAM_KAFKA_BOOTSTRAP"] == CUSTOM["kafka"]["bootstrap"]
    assert collector["CONVOSTREAM_TOPIC_PREFIX"] == "prod."
    assert collector["CONVOSTREAM_LOG_LEVEL"] == "DEBUG"
    assert collector["CONVOSTREAM_COLLECTOR_BUFFER_BYTES"] == "134217728"
    policy = json.loads(configs["cs-convostream-command-worker-policy"]["data"]["policy.json"])
    assert policy == CUSTOM["commandWorker"]["policy"]

    secret_refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for _pod, c in containers(docs)
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert secret_refs["CONVOSTREAM_API_KEY"] == {"name": "elevenlabs", "key": "xi-api-key"}
    assert secret_refs["CONVOSTREAM_DATABASE_URL"] == {"name": "convostream-db", "key": "url"}
    worker = deployments["cs-convostream-command-worker"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in worker["volumes"]}
    assert volumes["issuer-keys"]["secret"]["secretName"] == "issuer-keys"
    worker_config = configs["cs-convostream-command-worker"]["data"]
    (worker_container,) = worker["containers"]
    mounted = {m["mountPath"] for m in worker_container["volumeMounts"]}
    assert worker_config["CONVOSTREAM_COMMANDS_KEYS_DIR"] in mounted


def test_every_variable_is_a_setting(helm: Path, tmp_path: Path) -> None:
    known = settings_variables()
    for values in (None, CUSTOM):
        docs = render(helm, tmp_path, values)
        used = {k for cm in by_kind(docs, "ConfigMap").values() for k in cm["data"]}
        used |= {e["name"] for _pod, c in containers(docs) for e in c.get("env", [])}
        used = {name for name in used if name.startswith("CONVOSTREAM_")}
        assert used
        assert used <= known, f"variables no settings model reads: {sorted(used - known)}"


def test_pods_are_locked_down_and_probed(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, CUSTOM)
    workloads = containers(docs)
    assert len(workloads) == 3
    for pod, container in workloads:
        assert pod["securityContext"]["runAsNonRoot"] is True
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        (port,) = container["ports"]
        assert (port["name"], port["containerPort"]) == ("metrics", 9464)
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
        assert container["resources"]["requests"]
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_metrics_services_pdbs_and_service_monitor(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, CUSTOM)
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["pipeline"]}
    wanted = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    scraped = [
        s
        for s in by_kind(docs, "Service").values()
        if wanted.items() <= s["metadata"]["labels"].items()
    ]
    jobs = {s["metadata"]["labels"][monitor["spec"]["jobLabel"]] for s in scraped}
    # The same job names as deploy/prometheus/prometheus.yml, so alerts work in both.
    assert jobs == {
        "convostream-collector",
        "convostream-processor",
        "convostream-command-worker",
    }
    pod_labels = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
    ]
    for service in scraped:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        selector = service["spec"]["selector"].items()
        assert sum(selector <= labels.items() for labels in pod_labels) == 1
    budgets = by_kind(docs, "PodDisruptionBudget")
    assert len(budgets) == 3
    for budget in budgets.values():
        selector = budget["spec"]["selector"]["matchLabels"].items()
        assert sum(selector <= labels.items() for labels in pod_labels) == 1
