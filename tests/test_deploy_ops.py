"""docker-compose for operators and data teams: alerts reach an Alertmanager, health checks use
/readyz, PostgreSQL is reachable from the host, the optional registry is waited on."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy_tools import DEPLOY
from tests.test_deploy_compose import config, convostream_services

__all__ = ["config"]  # the resolved compose project, shared with the compose tests


def test_alerts_go_to_alertmanager(config: dict[str, Any]) -> None:
    services = config["services"]
    assert "alertmanager" in services
    mounts = {v["target"]: v["source"] for v in services["alertmanager"]["volumes"]}
    assert mounts["/etc/alertmanager"].endswith("deploy/alertmanager")
    route = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    assert route["route"]["receiver"] in {r["name"] for r in route["receivers"]}
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (manager,) = prometheus["alerting"]["alertmanagers"]
    port = services["alertmanager"]["ports"][0]["target"]
    assert manager["static_configs"][0]["targets"] == [f"alertmanager:{port}"]


def test_pipeline_health_and_dependencies(config: dict[str, Any]) -> None:
    for name, svc in convostream_services(config).items():
        if name == "simulator":
            continue
        assert "/readyz" in " ".join(svc["healthcheck"]["test"]), name
        registry = svc["depends_on"]["schema-registry"]
        assert (registry["condition"], registry["required"]) == ("service_healthy", False)
    assert config["services"]["schema-registry"]["healthcheck"]["test"]


def test_postgres_port_is_published_on_loopback(config: dict[str, Any]) -> None:
    (port,) = config["services"]["postgres"]["ports"]
    assert (port["host_ip"], port["target"], port["published"]) == ("127.0.0.1", 5432, "5432")
