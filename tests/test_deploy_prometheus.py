"""Prometheus configuration, alert rules and Grafana dashboards.

promtool checks the configuration and the rules (and runs the rules' unit tests); a real
Prometheus then scrapes a real pipeline (embedded broker, simulator, `convostream collect`,
`process`, `command-worker`, `rules` and `webhooks` processes) and every Grafana panel's query
runs against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from commands.client import CommandClient
from commands.metrics import CommandMetrics
from convostream.broker import create_topics, free_port
from convostream.ops import instrument
from ingest.metrics import Metrics
from postcall.metrics import WebhookMetrics
from processors.metrics import ProcessorMetrics
from rules.metrics import RulesMetrics
from tests.deploy_tools import DASHBOARDS, DEPLOY, ROOT, prometheus_binaries

PROMETHEUS_DIR = DEPLOY / "prometheus"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
# What Grafana puts in the queries: $__rate_interval at a 1 s scrape interval, and "All" of each
# dashboard variable (their allValue).
GRAFANA_ALL = {
    "$__rate_interval": "10s",
    "$namespace": ".*",
    "$job": ".*",
    "$agent": ".*",
}
ISSUER, ISSUER_KEY = "ops", "ops-signing-key"
# Panels that must show data while conversations flow, the processor counts them and one
# command has been delivered.
CORE_PANELS = {
    "Components and versions",
    "Live conversations",
    "Open monitor sockets",
    "Frames/s",
    "Collectors up",
    "Frames/s by type",
    "Published records/s by topic",
    "Publish latency",
    "Conversations in progress (processors)",
    "Events processed/s",
    "Response latency by agent",
    "Command results/s by status",
    "Command delivery latency",
    "Rule fires by rule and action",
    "Rule matches/s by rule",
    "Webhook deliveries/s by outcome",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def dashboards() -> dict[str, dict[str, Any]]:
    found = {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}
    assert found, f"no dashboards in {DASHBOARDS}"
    return found


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every target of every panel."""
    return [
        (name, panel["title"], target["expr"])
        for name, dash in dashboards().items()
        for panel in dash["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def exposed_metrics() -> set[str]:
    """Series names the components expose (from their real metric classes)."""
    registries = [
        Metrics().registry,
        ProcessorMetrics().registry,
        WebhookMetrics().registry,
        CollectorRegistry(),
        CollectorRegistry(),
    ]
    CommandMetrics(registries[2])
    RulesMetrics(registries[3])
    for registry in registries:
        instrument(registry, "any")  # what ops.serve adds on every operations port
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in SUFFIXES[family.type]
    }


def referenced_metrics(text: str) -> set[str]:
    return set(re.findall(r"\bconvostream_[a-z_]+", text))


@pytest.fixture(scope="session")
def tools() -> tuple[Path, Path]:
    return prometheus_binaries()


def promtool(tools: tuple[Path, Path], *args: str) -> str:
    done = subprocess.run(
        [str(tools[1]), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_promtool_check_config(tools: tuple[Path, Path]) -> None:
    out = promtool(tools, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert "1 rule files found" in out


def test_promtool_check_rules(tools: tuple[Path, Path]) -> None:
    promtool(tools, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))


def test_alert_rules_fire_as_intended(tools: tuple[Path, Path]) -> None:
    promtool(tools, "test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))


def test_dashboards_and_alerts_use_exposed_metrics() -> None:
    exposed = exposed_metrics()
    for path in [*DASHBOARDS.glob("*.json"), PROMETHEUS_DIR / "alerts.yml"]:
        unknown = referenced_metrics(path.read_text()) - exposed
        assert not unknown, f"{path.name} uses metrics no component exposes: {sorted(unknown)}"


def test_dashboards_are_provisioned() -> None:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "convostream.yml").read_text())[
        "providers"
    ]
    compose = yaml.safe_load((DEPLOY.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    uids = set()
    for name, dash in dashboards().items():
        uids.add(dash["uid"])
        panels = [p for p in dash["panels"] if p["type"] != "row"]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert set(variables) >= {"datasource", "namespace", "job", "agent"}, name
        chooser = variables["datasource"]
        assert (chooser["query"], chooser["current"]["value"]) == ("prometheus", source["uid"])
        for panel in panels:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["fieldConfig"]["defaults"]["unit"] != "reqps", panel["title"]
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
    assert len(uids) == len(dashboards())


# --- a real Prometheus scraping a real pipeline ------------------------------------------------


class Process:
    """A subprocess with its output in a log file; stopped with SIGTERM, killed if stuck."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def check_running(self) -> None:
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]


def convostream(command: str, log: Path, **env: str) -> Process:
    return Process(
        [sys.executable, "-m", "convostream", command],
        log,
        env={**os.environ, "CONVOSTREAM_LOG_FORMAT": "json", **env},
    )


def scrape_config(targets: dict[str, list[str]], prometheus_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with fixed targets on loopback and a 1 s interval."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / rule) for rule in config["rule_files"]]
    config.pop("alerting")  # the compose stack's Alertmanager is not part of this test
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert set(targets) == jobs - {"prometheus"}, "the test scrapes every job of the file"
    config["scrape_configs"] = [
        {"job_name": job, "static_configs": [{"targets": hosts}]}
        for job, hosts in {**targets, "prometheus": [f"127.0.0.1:{prometheus_port}"]}.items()
    ]
    return config


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> dict[str, Any]:
    async with session.get(f"{base}/api/v1/query", params={"query": promql}) as resp:
        body: dict[str, Any] = await resp.json()
    return body


async def wait_for_series(
    session: aiohttp.ClientSession, base: str, promql: str, procs: list[Process], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):  # Prometheus may still be starting
            body = await query(session, base, promql)
            if body["status"] == "success" and body["data"]["result"]:
                return
        for process in procs:
            process.check_running()
        await asyncio.sleep(0.5)
    raise AssertionError(f"no data for {promql} within {timeout}s")


@pytest.mark.integration
async def test_every_panel_query_runs_against_a_live_pipeline(
    kafka_broker: Any,
    simulator_factory: Any,
    tools: tuple[Path, Path],
    processes: list[Process],
    tmp_path: Path,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    # Long conversations, so the one a command goes to is still live.
    sim = await simulator_factory(conversations=4, events_per_second=5, turns=400, seed=5)
    common = {
        "CONVOSTREAM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "CONVOSTREAM_TOPIC_PREFIX": prefix,
        "CONVOSTREAM_UPSTREAM_URL": sim.url,
        "CONVOSTREAM_API_KEY": "sim-test-key",
    }
    ports = {
        "collector": free_port(),
        "command-worker": free_port(),
        "processor": free_port(),
        "rules": free_port(),
        "webhooks": free_port(),
    }
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"issuers": {ISSUER: {"commands": ["*"]}}}))
    processes.append(
        convostream(
            "collect",
            tmp_path / "collector.log",
            **common,
            CONVOSTREAM_METRICS_PORT=str(ports["collector"]),
            CONVOSTREAM_COLLECTOR_GROUP_ID=f"{prefix}collectors",
            CONVOSTREAM_COLLECTOR_POLL_INTERVAL="0.5",
        )
    )
    processes.append(
        convostream(
            "command-worker",
            tmp_path / "command-worker.log",
            **common,
            CONVOSTREAM_METRICS_PORT=str(ports["command-worker"]),
            CONVOSTREAM_COMMANDS_GROUP_ID=f"{prefix}workers",
            CONVOSTREAM_COMMANDS_POLICY_FILE=str(policy),
            CONVOSTREAM_COMMANDS_KEYS=json.dumps({ISSUER: ISSUER_KEY}),
        )
    )
    processes.append(
        convostream(
            "process",
            tmp_path / "processor.log",
            **common,
            CONVOSTREAM_METRICS_PORT=str(ports["processor"]),
            CONVOSTREAM_PROCESSOR_APP_ID=f"{prefix}processors",
            CONVOSTREAM_PROCESSOR_DATA_DIR=str(tmp_path / "faust"),
            CONVOSTREAM_PROCESSOR_WEB_PORT="0",
            CONVOSTREAM_DATABASE_URL=f"sqlite:///{tmp_path / 'metrics.db'}",
        )
    )
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        "rules:\n  - name: every-conversation\n"
        "    when: {type: conversation_initiation_metadata}\n    then: {alert: info}\n"
    )
    processes.append(
        convostream(
            "rules",
            tmp_path / "rules.log",
            **common,
            CONVOSTREAM_METRICS_PORT=str(ports["rules"]),
            CONVOSTREAM_RULES_GROUP_ID=f"{prefix}rules",
            CONVOSTREAM_RULES_FILE=str(rules_file),
            CONVOSTREAM_COMMANDS_ISSUER=ISSUER,
            CONVOSTREAM_COMMANDS_KEY=ISSUER_KEY,
        )
    )
    processes.append(
        convostream(
            "webhooks",
            tmp_path / "webhooks.log",
            **common,
            CONVOSTREAM_METRICS_PORT=str(ports["webhooks"]),
            CONVOSTREAM_WEBHOOK_HOST="127.0.0.1",
            CONVOSTREAM_WEBHOOK_PORT=str(free_port()),
            CONVOSTREAM_WEBHOOK_SECRET="deploy-test-webhook-secret",
        )
    )
    prometheus_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            scrape_config(
                {f"convostream-{name}": [f"127.0.0.1:{port}"] for name, port in ports.items()},
                prometheus_port,
            )
        )
    )
    processes.append(
        Process(
            [
                str(tools[0]),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--log.level=warn",
            ],
            tmp_path / "prometheus.log",
        )
    )
    base = f"http://127.0.0.1:{prometheus_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await wait_for_series(
            session, base, "sum(convostream_collector_frames_total) > 0", processes, 60
        )
        conversation = next(sim.live_conversations()).conversation_id
        async with CommandClient(
            kafka_broker.bootstrap, issuer=ISSUER, key=ISSUER_KEY, topic_prefix=prefix
        ) as client:
            result = await client.send(
                "contextual_update", conversation, text="deploy test", timeout=30
            )
        assert result["status"] == "delivered", result
        await wait_for_series(
            session, base, 'convostream_commands_total{status="delivered"}', processes, 30
        )
        await wait_for_series(session, base, "sum(convostream_events_total) > 0", processes, 60)
        await wait_for_series(
            session, base, "sum(convostream_rules_fires_total) > 0", processes, 60
        )
        for job in ("convostream-rules", "convostream-webhooks"):
            await wait_for_series(session, base, f'up{{job="{job}"}} == 1', processes, 60)
        await asyncio.sleep(3)  # a few more scrapes inside every rate window

        empty, failed = [], []
        for dashboard, title, expr in panel_queries():
            for variable, value in GRAFANA_ALL.items():
                expr = expr.replace(variable, value)
            body = await query(session, base, expr)
            if body["status"] != "success":
                failed.append(f"{dashboard} / {title}: {body.get('error')}")
            elif title in CORE_PANELS and not body["data"]["result"]:
                empty.append(f"{dashboard} / {title}: {expr}")
        assert not failed, failed
        assert not empty, f"core panels without data: {empty}"
        assert {title for _d, title, _e in panel_queries()} >= CORE_PANELS

        async with session.get(f"{base}/api/v1/rules") as resp:
            rules = (await resp.json())["data"]["groups"]
        evaluated = [rule for group in rules for rule in group["rules"]]
        assert len(evaluated) == len(
            re.findall(r"- alert:", (PROMETHEUS_DIR / "alerts.yml").read_text())
        )
        assert all(rule["health"] == "ok" for rule in evaluated), evaluated
        # Every job of prometheus.yml is found, so no absent() alert is even pending.
        absent = {r["name"]: r["state"] for r in evaluated if "absent(" in r["query"]}
        assert set(absent) == {
            "ConvostreamTargetAbsent",
            "ConvostreamRulesTargetAbsent",
            "ConvostreamWebhooksTargetAbsent",
        }
        assert set(absent.values()) == {"inactive"}, absent


def test_every_alert_has_a_runbook_section() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 15
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbook.md#{rule['alert'].lower()}", rule["alert"]
        assert rule["alert"].lower() in anchors, rule["alert"]


def test_every_dashboard_query_follows_the_variables() -> None:
    agent_metrics = {
        metric._name + suffix
        for metric in vars(ProcessorMetrics()).values()
        if "agent" in getattr(metric, "_labelnames", ())
        for suffix in SUFFIXES[metric._type]
    }
    assert "convostream_late_events_total" in agent_metrics
    for _dashboard, title, expr in panel_queries():
        assert set(re.findall(r"\bconvostream_[a-z_]+(.)", expr)) <= {"{"}, title
        for name, matchers in re.findall(r"\b(convostream_[a-z_]+)\{([^}]*)\}", expr):
            assert 'namespace=~"$namespace"' in matchers, (title, name)
            assert 'job=~"$job"' in matchers, (title, name)
            assert ('agent=~"$agent"' in matchers) == (name in agent_metrics), (title, name)


def test_every_scraped_job_has_an_absent_alert() -> None:
    """A job whose targets all vanish must alert: ConvostreamTargetDown needs a target. The
    optional components' absent() alerts sit in their own groups, which the chart drops when
    the component is off (tests/test_deploy_helm.py)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in config["scrape_configs"]} - {"prometheus"}
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    watched = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            for job in re.findall(r'absent\(up\{job="([^"]+)"\}\)', rule["expr"]):
                watched.add(job)
                if job in ("convostream-rules", "convostream-webhooks"):
                    assert group["name"] == job, rule["alert"]
    assert jobs == watched
