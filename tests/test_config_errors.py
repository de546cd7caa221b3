"""Bad settings stop a component at start-up: exit 2, a message naming the variable and the
flag, no traceback, no secret; and no test-only switch in production ``--help``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from convostream.broker import free_port

SECRET = "pw-that-must-not-show"

CASES = [
    ("collect", {"CONVOSTREAM_LOG_LEVEL": "BOGUS"}, [], "CONVOSTREAM_LOG_LEVEL / --log-level"),
    ("process", {"CONVOSTREAM_LOG_FORMAT": "xml"}, [], "CONVOSTREAM_LOG_FORMAT / --log-format"),
    (
        "collect",
        {},
        ["--compression", "brotli"],
        "CONVOSTREAM_COLLECTOR_COMPRESSION / --compression",
    ),
    (
        "process",
        {"CONVOSTREAM_DATABASE_URL": f"mysql://app:{SECRET}@db/metrics"},
        [],
        "CONVOSTREAM_DATABASE_URL / --database-url",
    ),
    ("collect", {"CONVOSTREAM_API_KEY": ""}, [], "CONVOSTREAM_API_KEY"),
    (
        "command-worker",
        {"CONVOSTREAM_METRICS_PORT": "70000"},
        [],
        "CONVOSTREAM_METRICS_PORT / --metrics-port",
    ),
    (
        "process",
        {"CONVOSTREAM_HEALTH_INTERVAL": "-1"},
        [],
        "CONVOSTREAM_HEALTH_INTERVAL / --health-interval",
    ),
    (
        "rules",
        {"CONVOSTREAM_METRICS_PORT": "70000"},
        [],
        "CONVOSTREAM_METRICS_PORT / --metrics-port",
    ),
    ("rules", {}, [], "CONVOSTREAM_RULES_FILE / --rules-file"),
    ("rules", {}, ["--rules-file", "r.yaml"], "CONVOSTREAM_COMMANDS_ISSUER / --issuer"),
    (
        "rules",
        {"CONVOSTREAM_RULES_LOOKUP_TIMEOUT": "0"},
        [],
        "CONVOSTREAM_RULES_LOOKUP_TIMEOUT / --lookup-timeout",
    ),
    (
        "collect",
        {
            "CONVOSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CONVOSTREAM_KAFKA_SASL_PASSWORD": SECRET,
        },
        [],
        "CONVOSTREAM_KAFKA_SASL_USERNAME is required when CONVOSTREAM_KAFKA_SECURITY_PROTOCOL",
    ),
    (
        "process",
        {"CONVOSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CONVOSTREAM_KAFKA_SASL_USERNAME": "u"},
        [],
        "CONVOSTREAM_KAFKA_SASL_PASSWORD (or _FILE) is required",
    ),
    (
        "webhooks",
        {"CONVOSTREAM_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/kafka-password"},
        [],
        "CONVOSTREAM_KAFKA_SASL_PASSWORD_FILE / --kafka-sasl-password-file",
    ),
    (
        "command-worker",
        {"CONVOSTREAM_KAFKA_SASL_USERNAME": "u", "CONVOSTREAM_KAFKA_SASL_PASSWORD": SECRET},
        [],
        "SASL credentials are set but CONVOSTREAM_KAFKA_SECURITY_PROTOCOL is PLAINTEXT",
    ),
    (
        "tail",
        {"CONVOSTREAM_SCHEMA_REGISTRY_PASSWORD": SECRET},
        ["convai.monitor.events"],
        "CONVOSTREAM_SCHEMA_REGISTRY_PASSWORD is set without CONVOSTREAM_SCHEMA_REGISTRY_USERNAME",
    ),
]


def run(
    command: str, env: dict[str, str], args: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVOSTREAM_")}
    base.pop("ELEVENLABS_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "convostream", command, *args],
        env={**base, "CONVOSTREAM_API_KEY": "k" * 16, **env},
        cwd=cwd,  # no .env file of the developer's
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("command", "env", "args", "names"), CASES)
def test_bad_setting_exits_2_naming_it(
    command: str, env: dict[str, str], args: list[str], names: str, tmp_path: Path
) -> None:
    result = run(command, env, args, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert names in output, output
    assert "Traceback" not in output
    assert SECRET not in output


def test_compression_offers_only_installed_codecs(tmp_path: Path) -> None:
    from ingest.settings import CODECS

    help_text = run("collect", {}, ["--help"], tmp_path).stdout
    assert f"installed: {', '.join(CODECS)}" in " ".join(help_text.split())
    assert "brotli" not in help_text


def test_no_test_only_switch_in_help(tmp_path: Path) -> None:
    help_text = run("command-worker", {}, ["--help"], tmp_path).stdout
    assert "--policy-file" in help_text  # the real options are there
    assert "CRASH" not in help_text.upper()
    assert "fault injection" not in help_text.lower()


def test_operations_port_in_use_is_a_start_up_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("collect", {"CONVOSTREAM_METRICS_PORT": str(port)}, [], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"CONVOSTREAM_METRICS_PORT / --metrics-port: cannot listen on {port}" in output
    assert "Traceback" not in output


ROOT = Path(__file__).resolve().parents[1]
GROUP_COMPONENTS = [
    ("collect", {"CONVOSTREAM_UPSTREAM_URL": "http://127.0.0.1:9"}, []),
    ("process", {}, []),
    (
        "command-worker",
        {"CONVOSTREAM_COMMANDS_KEYS": '{"ops": "' + "s" * 32 + '"}'},
        ["--policy-file", str(ROOT / "deploy/compose/commands-policy.json")],
    ),
    (
        "rules",
        {"CONVOSTREAM_COMMANDS_KEY": "s" * 32},
        ["--rules-file", str(ROOT / "deploy/rules/example.yaml"), "--issuer", "ops"],
    ),
]


@pytest.mark.kafka_only
@pytest.mark.parametrize(("command", "env", "args"), GROUP_COMPONENTS)
def test_a_session_the_broker_refuses_is_a_start_up_error(
    command: str, env: dict[str, str], args: list[str], kafka_broker: Any, tmp_path: Path
) -> None:
    """Apache Kafka refuses group sessions beyond group.max.session.timeout.ms (30 min by
    default): before the check, aiokafka components died with a traceback and the processor
    retried the join for ever."""
    session = "1900000"
    result = run(
        command,
        {
            "CONVOSTREAM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
            "CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS": session,
            "CONVOSTREAM_METRICS_PORT": str(free_port()),
            **env,
        },
        args,
        tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS={session} is outside" in output, output
    assert "group.max.session.timeout.ms" in output
    assert "Traceback" not in output
