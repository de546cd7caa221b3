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

from rules.spec import parse_rules
from tests.deploy_tools import CHART, DEPLOY, helm_binary, settings_variables

KUBERNETES = kubernetes_validate.latest_version()
EXAMPLE_RULES = yaml.safe_load((DEPLOY / "rules" / "example.yaml").read_text())["rules"]
OPTIONAL_GROUPS = {"convostream-rules", "convostream-webhooks"}
CUSTOM = {
    "kafka": {"bootstrap": "kafka-0.kafka:9092,kafka-1.kafka:9092", "topicPrefix": "prod."},
    "schemaRegistryUrl": "http://schema-registry:8081",
    "config": {"CONVOSTREAM_LOG_LEVEL": "DEBUG"},
    "secrets": {
        "apiKey": {"existingSecret": "elevenlabs", "key": "xi-api-key"},
        "issuerKeys": {"existingSecret": "issuer-keys"},
        "databaseUrl": {"existingSecret": "convostream-db", "key": "url"},
        "webhookSecret": {"existingSecret": "elevenlabs-webhooks", "key": "hmac"},
    },
    "metrics": {"port": 9464, "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}},
    "collector": {"replicas": 5, "config": {"CONVOSTREAM_COLLECTOR_BUFFER_BYTES": 134217728}},
    "processor": {"replicas": 3, "persistence": {"size": "50Gi", "storageClassName": "fast"}},
    "commandWorker": {
        "replicas": 3,
        "policy": {"issuers": {"ops": {"commands": ["*"], "phone_numbers": ["+1*"]}}},
    },
    "rules": {"enabled": True, "replicas": 3, "issuer": "ops", "rules": EXAMPLE_RULES},
    "webhooks": {
        "enabled": True,
        "replicas": 3,
        "port": 8443,
        "ingress": {"enabled": True, "className": "nginx", "host": "hooks.example.com"},
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


def helm_failure(helm: Path, tmp_path: Path, values: dict[str, Any]) -> str:
    """stderr of a `helm template` that must fail."""
    done = subprocess.run(
        [str(helm), "template", "cs", str(CHART), "--values", values_file(tmp_path, values)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0, done.stdout[:500]
    return done.stderr


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
    assert ("Ingress" in kinds) is custom
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
    assert len(workloads) == 6  # the three core ones, rules, webhooks and its backfill
    for pod, container in workloads:
        assert pod["securityContext"]["runAsNonRoot"] is True
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        port, *others = container["ports"]
        assert (port["name"], port["containerPort"]) == ("metrics", 9464)
        assert others in ([], [{"name": "webhooks", "containerPort": 8443, "protocol": "TCP"}])
        probes = {
            probe: container[probe]["httpGet"]["path"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert probes == {
            "startupProbe": "/healthz",
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        assert {container[p]["httpGet"]["port"] for p in probes} == {"metrics"}
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
        "convostream-rules",
        "convostream-webhooks",  # the receivers and the backfill pod
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
    assert len(budgets) == 5  # not the single backfill pod
    for budget in budgets.values():
        selector = budget["spec"]["selector"]["matchLabels"].items()
        assert sum(selector <= labels.items() for labels in pod_labels) == 1


def test_processor_defaults_to_postgresql_and_refuses_sqlite_replicas(
    helm: Path, tmp_path: Path
) -> None:
    config = by_kind(render(helm, tmp_path), "ConfigMap")["cs-convostream-processor"]["data"]
    assert config["CONVOSTREAM_DATABASE_URL"].startswith("postgresql://")
    sqlite = "sqlite:////var/lib/convostream/convostream.db"
    render(helm, tmp_path, {"processor": {"databaseUrl": sqlite}})  # one replica: fine
    for processor in (
        {"databaseUrl": sqlite, "replicas": 2},
        {"config": {"CONVOSTREAM_DATABASE_URL": sqlite}, "replicas": 3},
    ):
        assert "needs PostgreSQL" in helm_failure(helm, tmp_path, {"processor": processor})


EXTRAS = {
    "extraEnv": [
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "pg", "key": "pw"}}}
    ],
    "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
    "metrics": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
    "collector": {"autoscaling": {"enabled": True, "maxReplicas": 8}},
    "processor": {"extraEnv": [{"name": "CONVOSTREAM_PROCESSOR_BATCH_SIZE", "value": "2000"}]},
}


def test_extras_render_valid_kubernetes(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, EXTRAS)
    for doc in docs:
        if doc["kind"] != "PrometheusRule":  # a CRD
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["maxReplicas"] == 8
    assert "replicas" not in by_kind(docs, "Deployment")["cs-convostream-collector"]["spec"]
    assert len(by_kind(docs, "NetworkPolicy")) == 3
    for pod, container in containers(docs):
        assert "PGPASSWORD" in {e["name"] for e in container["env"]}
        assert {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True} in container[
            "volumeMounts"
        ]
        assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in pod["volumes"]
        keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    (rule,) = by_kind(docs, "PrometheusRule").values()
    alerts = yaml.safe_load((CHART.parent.parent / "prometheus" / "alerts.yml").read_text())
    # Without the optional components, their groups (and absent() alerts) stay out.
    core = [g for g in alerts["groups"] if g["name"] not in OPTIONAL_GROUPS]
    assert len(core) == len(alerts["groups"]) - len(OPTIONAL_GROUPS)
    assert rule["spec"] == {"groups": core}
    both = {**EXTRAS, **{k: CUSTOM[k] for k in ("secrets", "rules", "webhooks")}}
    (rule,) = by_kind(render(helm, tmp_path, both), "PrometheusRule").values()
    assert rule["spec"] == alerts
    dashboard = by_kind(docs, "ConfigMap")["cs-convostream-dashboard"]
    assert json.loads(dashboard["data"]["convostream-pipeline.json"])["uid"]


def test_chart_files_are_the_deploy_sources() -> None:
    deploy = CHART.parent.parent
    assert (CHART / "files" / "alerts.yml").read_bytes() == (
        deploy / "prometheus" / "alerts.yml"
    ).read_bytes(), "copy deploy/prometheus/alerts.yml to the chart's files/"
    assert (CHART / "files" / "convostream-pipeline.json").read_bytes() == (
        deploy / "grafana" / "dashboards" / "convostream-pipeline.json"
    ).read_bytes(), "copy the dashboard to the chart's files/"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"logLevel": "BOGUS"}, "/logLevel"),
        ({"collector": {"replicas": -1}}, "/collector/replicas"),
        ({"kafka": {"bootstrap": "kafka"}}, "/kafka/bootstrap"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"colector": {"replicas": 3}}, "colector"),
        ({"processor": {"databaseUrl": "mysql://db/x"}}, "/processor/databaseUrl"),
        ({"config": {"LOG_LEVEL": "DEBUG"}}, "LOG_LEVEL"),
        ({"rules": {"replicas": -1}}, "/rules/replicas"),
        (
            {
                "rules": {
                    "rules": [{"name": "a b", "when": {"type": "x"}, "then": {"alert": "info"}}]
                }
            },
            "/rules/rules/0/name",
        ),
        (
            {"rules": {"rules": [{"name": "a", "when": {"type": "x"}, "then": {"alert": "loud"}}]}},
            "/rules/rules/0/then/alert",
        ),
        (
            {"rules": {"rules": [{"name": "a", "when": {"type": "x"}, "then": {}}]}},
            "/rules/rules/0/then",
        ),
        (
            {
                "rules": {
                    "rules": [
                        {"name": "a", "when": {"type": "x", "count": 0}, "then": {"alert": "info"}}
                    ]
                }
            },
            "/rules/rules/0/when/count",
        ),
        ({"webhooks": {"port": 0}}, "/webhooks/port"),
        ({"webhooks": {"service": {"type": "Public", "port": 80}}}, "/webhooks/service/type"),
        # Secrets have no place in values: only secrets.* name Secrets.
        ({"webhooks": {"secret": "s3cr3t"}}, "secret"),
        (
            {"webhooks": {"config": {"CONVOSTREAM_WEBHOOK_SECRET": "s"}}},
            "CONVOSTREAM_WEBHOOK_SECRET",
        ),
        ({"config": {"CONVOSTREAM_COMMANDS_KEY": "k"}}, "CONVOSTREAM_COMMANDS_KEY"),
        (
            {"secrets": {"webhookSecret": {"existingSecret": "w", "key": ""}}},
            "/secrets/webhookSecret/key",
        ),
        ({"kafka": {"bootstrap": "k:9093", "securityProtocol": "SASL_SSL"}}, "username"),
        (
            {
                "kafka": {
                    "bootstrap": "k:9093",
                    "securityProtocol": "SASL_SSL",
                    "sasl": {"username": "u"},
                }
            },
            "existingSecret",
        ),
        ({"kafka": {"bootstrap": "k:9093", "securityProtocol": "TLS"}}, "securityProtocol"),
        (
            {"secrets": {"schemaRegistryPassword": {"existingSecret": "r"}}},
            "schemaRegistryUsername",
        ),
    ],
)
def test_schema_rejects_bad_values(
    helm: Path, tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    stderr = helm_failure(helm, tmp_path, values)
    assert complaint in stderr, stderr


def component_docs(docs: list[dict[str, Any]], *components: str) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") in components
    ]


def test_optional_components_are_off_by_default(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path)
    assert not component_docs(docs, "rules", "webhooks", "webhooks-backfill")
    assert "Ingress" not in {d["kind"] for d in docs}


def test_rules_engine(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, CUSTOM)
    configs = by_kind(docs, "ConfigMap")
    # The rendered file is the one of the values, and the engine's own validator accepts it.
    rules_file = yaml.safe_load(configs["cs-convostream-rules-file"]["data"]["rules.yaml"])
    assert rules_file == {"rules": EXAMPLE_RULES}
    assert [r.name for r in parse_rules(rules_file)] == [r["name"] for r in EXAMPLE_RULES]
    config = configs["cs-convostream-rules"]["data"]
    assert config["CONVOSTREAM_COMMANDS_ISSUER"] == "ops"
    assert config["CONVOSTREAM_RULES_GROUP_ID"] == "convostream-rules"
    assert config["CONVOSTREAM_RULES_DRY_RUN"] == "false"
    deployment = by_kind(docs, "Deployment")["cs-convostream-rules"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["rules"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["rules"]["configMap"]["name"] == "cs-convostream-rules-file"
    assert config["CONVOSTREAM_RULES_FILE"] == mounts["rules"] + "/rules.yaml"
    # Only the issuer's own key of the shared issuer-keys Secret, as the key file.
    key = volumes["issuer-key"]["secret"]
    assert key["secretName"] == "issuer-keys"
    assert key["items"] == [{"key": "ops", "path": "ops"}]
    assert config["CONVOSTREAM_COMMANDS_KEY_FILE"] == mounts["issuer-key"] + "/ops"
    env = {e["name"]: e for e in container["env"]}
    assert env["CONVOSTREAM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "elevenlabs"

    # A changed rules file rolls the pods; the same file does not.
    def checksum(rules: list[dict[str, Any]]) -> str:
        values = {**CUSTOM, "rules": {**CUSTOM["rules"], "rules": rules}}
        rendered = by_kind(render(helm, tmp_path, values), "Deployment")["cs-convostream-rules"]
        annotations: dict[str, str] = rendered["spec"]["template"]["metadata"]["annotations"]
        return annotations["checksum/rules"]

    assert checksum(EXAMPLE_RULES) == checksum(EXAMPLE_RULES)
    assert checksum(EXAMPLE_RULES) != checksum(EXAMPLE_RULES[:1])


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"rules": {"enabled": True}}, "at least one rule"),
        ({"rules": {"enabled": True, "rules": EXAMPLE_RULES}}, "secrets.issuerKeys"),
        ({"webhooks": {"enabled": True}}, "secrets.webhookSecret.existingSecret"),
    ],
)
def test_optional_components_refuse_missing_inputs(
    helm: Path, tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    assert complaint in helm_failure(helm, tmp_path, values)


def test_webhooks(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, CUSTOM)
    deployments = by_kind(docs, "Deployment")
    configs = by_kind(docs, "ConfigMap")
    receivers = deployments["cs-convostream-webhooks"]
    backfill = deployments["cs-convostream-webhooks-backfill"]
    assert receivers["spec"]["replicas"] == 3
    # The backfill reads whole topics without a group: exactly one, never two during a rollout.
    assert backfill["spec"]["replicas"] == 1
    assert backfill["spec"]["strategy"] == {"type": "Recreate"}
    assert configs["cs-convostream-webhooks"]["data"]["CONVOSTREAM_WEBHOOK_BACKFILL"] == "false"
    assert configs["cs-convostream-webhooks-backfill"]["data"]["CONVOSTREAM_WEBHOOK_BACKFILL"] == (
        "true"
    )
    for name in ("cs-convostream-webhooks", "cs-convostream-webhooks-backfill"):
        data = configs[name]["data"]
        assert data["CONVOSTREAM_WEBHOOK_PORT"] == "8443"
        assert not any("SECRET" in key for key in data), "the secret is never in a ConfigMap"
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["webhooks"]
        env = {e["name"]: e for e in container["env"]}
        assert env["CONVOSTREAM_WEBHOOK_SECRET"] == {
            "name": "CONVOSTREAM_WEBHOOK_SECRET",
            "valueFrom": {"secretKeyRef": {"name": "elevenlabs-webhooks", "key": "hmac"}},
        }
    # The Service and the Ingress reach the receivers only, on their webhook port.
    service = by_kind(docs, "Service")["cs-convostream-webhooks-receiver"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "webhooks"
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in (receivers, backfill)]
    selector = service["spec"]["selector"].items()
    assert [selector <= labels.items() for labels in pods] == [True, False]
    (ingress,) = by_kind(docs, "Ingress").values()
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "hooks.example.com"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {
        "name": "cs-convostream-webhooks-receiver",
        "port": {"name": "webhooks"},
    }
    policy = by_kind(docs, "NetworkPolicy")["cs-convostream-webhooks"]
    webhook_rules = [
        r
        for r in policy["spec"]["ingress"]
        if {"port": "webhooks", "protocol": "TCP"} in r["ports"]
    ]
    assert webhook_rules == [{"ports": [{"port": "webhooks", "protocol": "TCP"}]}]  # any source
    backfill_policy = by_kind(docs, "NetworkPolicy")["cs-convostream-webhooks-backfill"]
    assert [r["ports"] for r in backfill_policy["spec"]["ingress"]] == [
        [{"port": "metrics", "protocol": "TCP"}]
    ]

    # Without the backfill: receivers only, and webhooks.config cannot switch it back on for
    # them; a narrowed NetworkPolicy names its peers.
    peers = [{"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}]
    config = {"CONVOSTREAM_WEBHOOK_BACKFILL": True, "CONVOSTREAM_WEBHOOK_MAX_BODY_BYTES": 1048576}
    webhooks = {"backfill": {"enabled": False}, "from": peers, "config": config}
    values = {**CUSTOM, "webhooks": {**CUSTOM["webhooks"], **webhooks}}
    docs = render(helm, tmp_path, values)
    assert not component_docs(docs, "webhooks-backfill")
    assert "cs-convostream-webhooks" in by_kind(docs, "Deployment")
    data = by_kind(docs, "ConfigMap")["cs-convostream-webhooks"]["data"]
    assert data["CONVOSTREAM_WEBHOOK_BACKFILL"] == "false"
    assert data["CONVOSTREAM_WEBHOOK_MAX_BODY_BYTES"] == "1048576"
    policy = by_kind(docs, "NetworkPolicy")["cs-convostream-webhooks"]
    assert {"ports": [{"port": "webhooks", "protocol": "TCP"}], "from": peers} in policy["spec"][
        "ingress"
    ]
    for doc in docs:
        if doc["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


SECURE = {
    "kafka": {
        "bootstrap": "kafka:9093",
        "securityProtocol": "SASL_SSL",
        "sasl": {"mechanism": "SCRAM-SHA-512", "username": "convostream"},
    },
    "schemaRegistryUrl": "https://registry:8081",
    "schemaRegistryUsername": "registry-key",
    "secrets": {
        "kafkaSaslPassword": {"existingSecret": "kafka-user", "key": "pw"},
        "kafkaTls": {
            "existingSecret": "kafka-tls",
            "caKey": "ca.crt",
            "certKey": "tls.crt",
            "keyKey": "tls.key",
        },
        "schemaRegistryPassword": {"existingSecret": "registry", "key": "secret"},
        "schemaRegistryCa": {"existingSecret": "registry-ca"},
    },
}


def test_kafka_and_registry_security_come_from_mounted_secrets(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SASL_SSL and registry auth: the ConfigMap holds only names and paths, the Secrets are
    mounted read-only at those paths, and the settings they make pass the start-up checks."""
    from convostream.settings import CommonSettings, load_settings
    from tests.tls_certs import make_server_tls

    docs = render(helm, tmp_path, SECURE)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    configs = by_kind(docs, "ConfigMap")
    tls = make_server_tls(tmp_path / "tls")
    contents = {
        "kafka-user/pw": "kafka-password",
        "kafka-tls/ca.crt": tls.ca_file.read_text(),
        "kafka-tls/tls.crt": tls.cert_file.read_text(),
        "kafka-tls/tls.key": tls.key_file.read_text(),
        "registry/secret": "registry-password",
        "registry-ca/ca.crt": tls.ca_file.read_text(),
    }
    for pod, container in containers(docs):
        config = configs[container["envFrom"][0]["configMapRef"]["name"]]["data"]
        assert not {"kafka-password", "registry-password"} & set(config.values())
        assert not any("PASSWORD" in e["name"] for e in container.get("env", []))
        # materialise every mounted Secret file where the container would see it
        root = tmp_path / container["name"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        for volume in pod["volumes"]:
            if "secret" not in volume:
                continue
            assert next(m for m in container["volumeMounts"] if m["name"] == volume["name"])[
                "readOnly"
            ]
            for item in volume["secret"]["items"]:
                path = root / mounts[volume["name"]].lstrip("/") / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(contents[f"{volume['secret']['secretName']}/{item['key']}"])
        for key, value in config.items():
            if value.startswith("/etc/convostream/secrets/"):
                value = str(root / value.lstrip("/"))
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(tmp_path)
        settings = load_settings(CommonSettings, {})
        security = settings.kafka_security()
        assert security.protocol == "SASL_SSL"
        assert security.password is not None
        assert security.password.get_secret_value() == "kafka-password"
        assert security.cert_file is not None
        access = settings.registry_access()
        assert access.password is not None
        assert access.password.get_secret_value() == "registry-password"
