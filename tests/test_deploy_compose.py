"""docker-compose.yml: valid for the real docker compose v2, secrets only from env files, every
CONVOSTREAM_* variable one that the settings models read, and the topic init script creates
exactly the catalogue."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from convostream.cli import COMMANDS
from schemas.topics import CATALOGUE
from tests.deploy_tools import DEPLOY, ROOT, compose_binary, settings_variables

COMPOSE_FILE = ROOT / "docker-compose.yml"
SECRETS_EXAMPLE = DEPLOY / "compose" / "secrets.example"
PROFILES = ("sim", "registry")
SECRET_VARIABLES = (
    "CONVOSTREAM_API_KEY",
    "CONVOSTREAM_SIM_API_KEY",
    "CONVOSTREAM_COMMANDS_KEYS",
    "CONVOSTREAM_COMMANDS_KEY",
    "CONVOSTREAM_WEBHOOK_SECRET",
    "CONVOSTREAM_SIM_WEBHOOK_SECRET",
    "CONVOSTREAM_DATABASE_URL",
    "POSTGRES_PASSWORD",
    "GF_SECURITY_ADMIN_PASSWORD",
)


def compose(
    *args: str, secrets_dir: Path | None = SECRETS_EXAMPLE
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVOSTREAM_", "COMPOSE_"))}
    if secrets_dir is not None:
        env["SECRETS_DIR"] = str(secrets_dir)
    profiles = [arg for p in PROFILES for arg in ("--profile", p)]
    return subprocess.run(
        [str(compose_binary()), "-f", str(COMPOSE_FILE), *profiles, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The resolved project (env files read, anchors merged), every profile enabled."""
    done = compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def convostream_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in config["services"].items()
        if svc.get("image", "").startswith("convostream:")
    }


def test_compose_config_is_valid() -> None:
    done = compose("config", "-q")
    assert done.returncode == 0, done.stderr


def test_secrets_come_from_env_files_only(config: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    for name in SECRET_VARIABLES:
        assert name not in text, f"{name} must come from an env file, not docker-compose.yml"
    # Without the secrets directory the project does not even load.
    done = compose("config", "-q", secrets_dir=ROOT / "no-such-secrets-dir")
    assert done.returncode != 0
    assert "no-such-secrets-dir" in done.stderr
    # ...and with it, the secrets reach the services that need them.
    services = config["services"]
    assert "CONVOSTREAM_API_KEY" in services["collector"]["environment"]
    assert "CONVOSTREAM_COMMANDS_KEYS" in services["command-worker"]["environment"]
    assert "CONVOSTREAM_DATABASE_URL" in services["processor"]["environment"]
    assert "CONVOSTREAM_DATABASE_URL" not in services["collector"]["environment"]
    assert "CONVOSTREAM_COMMANDS_KEY" in services["rules"]["environment"]
    assert "CONVOSTREAM_WEBHOOK_SECRET" in services["webhooks"]["environment"]
    assert "CONVOSTREAM_WEBHOOK_SECRET" not in services["rules"]["environment"]


def test_every_convostream_variable_is_a_setting(config: dict[str, Any]) -> None:
    known = settings_variables()
    used = {
        (name, var)
        for name, svc in config["services"].items()
        for var in svc.get("environment") or {}
        if var.startswith("CONVOSTREAM_")
    }
    assert used
    unknown = sorted(f"{name}: {var}" for name, var in used if var not in known)
    assert not unknown, f"variables no settings model reads: {unknown}"
    # The image's own defaults too.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert set(re.findall(r"\bCONVOSTREAM_[A-Z0-9_]+", dockerfile)) <= known


def test_services_run_cli_commands(config: dict[str, Any]) -> None:
    services = convostream_services(config)
    assert set(services) == {
        "collector",
        "processor",
        "command-worker",
        "rules",
        "webhooks",
        "simulator",
    }
    for name, svc in services.items():
        assert svc["command"][0] in COMMANDS, f"{name} runs an unknown command {svc['command']}"
    assert config["services"]["simulator"]["profiles"] == ["sim"]


def test_pipeline_services_are_scalable_and_scraped(config: dict[str, Any]) -> None:
    prometheus = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    for name, svc in convostream_services(config).items():
        # Fixed names or host ports would stop `--scale`; the webhook receiver (which runs the
        # backfill, so it is never scaled) is published on loopback for a reverse proxy.
        assert "container_name" not in svc, name
        if name == "webhooks":
            (port,) = svc["ports"]
            assert (port["host_ip"], port["target"]) == ("127.0.0.1", 8090)
            assert svc["environment"]["CONVOSTREAM_WEBHOOK_PORT"] == "8090"
            assert svc.get("deploy", {}).get("replicas", 1) == 1
        else:
            assert not svc.get("ports"), name
        assert svc["read_only"] is True, name
        if name != "simulator":
            assert svc["environment"]["CONVOSTREAM_METRICS_PORT"] == "9100"
            assert f"names: [{name}]" in prometheus, f"{name} is not scraped"
    assert config["services"]["collector"]["deploy"]["replicas"] >= 2


def test_topic_script_creates_the_catalogue(tmp_path: Path) -> None:
    """Run deploy/kafka/create-topics.sh with a stand-in for kafka-topics.sh."""
    calls = tmp_path / "calls.jsonl"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    stub.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "BOOTSTRAP": "k1:9092,k2:9092",
        "TOPIC_PREFIX": "p.",
        "KAFKA_TOPICS": str(stub),
    }
    done = subprocess.run(
        ["bash", str(DEPLOY / "kafka" / "create-topics.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    created = {}
    for line in calls.read_text().splitlines():
        args = json.loads(line)
        options: dict[str, list[str]] = {}
        for flag, value in itertools.pairwise(args):
            if flag.startswith("--") and not value.startswith("--"):
                options.setdefault(flag, []).append(value)
        assert {"--create", "--if-not-exists"} <= set(args)
        assert options["--bootstrap-server"] == ["k1:9092,k2:9092"]
        assert options["--replication-factor"] == ["3"]
        configs = dict(c.split("=", 1) for c in options["--config"])
        assert configs.pop("min.insync.replicas") == "2"
        created[options["--topic"][0]] = (int(options["--partitions"][0]), configs)
    expected = {t.full_name("p."): (t.partitions, t.configs()) for t in CATALOGUE}
    assert created == expected


def env_file(name: str) -> dict[str, str]:
    lines = (SECRETS_EXAMPLE / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_rules_engine_is_wired_to_the_command_worker(config: dict[str, Any]) -> None:
    """The rules engine runs the example rules as an issuer the command worker accepts."""
    from commands.policy import load_policy
    from rules.spec import load_rules

    rules = config["services"]["rules"]
    mounts = {v["target"]: Path(v["source"]) for v in rules["volumes"]}
    rules_file = mounts[rules["environment"]["CONVOSTREAM_RULES_FILE"]]
    assert rules_file == DEPLOY / "rules" / "example.yaml"
    issuer = rules["environment"]["CONVOSTREAM_COMMANDS_ISSUER"]
    # The example secrets: the worker knows the engine's key under the engine's issuer name.
    keys = json.loads(env_file("commands.env")["CONVOSTREAM_COMMANDS_KEYS"])
    assert keys[issuer] == env_file("rules.env")["CONVOSTREAM_COMMANDS_KEY"]
    worker = config["services"]["command-worker"]
    policy_mounts = {v["target"]: Path(v["source"]) for v in worker["volumes"]}
    policy = load_policy(policy_mounts[worker["environment"]["CONVOSTREAM_COMMANDS_POLICY_FILE"]])
    sent = [(r.then.command, r.then.phone_number) for r in load_rules(rules_file) if r.then.command]
    assert sent
    for command, number in sent:
        assert policy.authorise(issuer, command, number) is None, (command, number)


def test_webhooks_and_simulator_share_the_secret(config: dict[str, Any]) -> None:
    services = config["services"]
    secrets = env_file("webhooks.env")
    assert secrets["CONVOSTREAM_WEBHOOK_SECRET"] == secrets["CONVOSTREAM_SIM_WEBHOOK_SECRET"]
    url = services["simulator"]["environment"]["CONVOSTREAM_SIM_WEBHOOK_URL"]
    port = services["webhooks"]["environment"]["CONVOSTREAM_WEBHOOK_PORT"]
    assert url == f"http://webhooks:{port}/"
    assert services["webhooks"]["environment"]["CONVOSTREAM_WEBHOOK_BACKFILL"] == "true"
