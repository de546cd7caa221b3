"""``--engine kafka``: clear errors without Java or Maven, one Kafka version everywhere, and what
the cluster reports about replication."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from convostream.cluster import default_replication
from convostream.kafka_dist import KAFKA_VERSION, _java_major

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_402"', 8),
        ("no version here", None),
    ],
)
def test_java_major_version_is_read_from_java_version_output(text: str, major: int | None) -> None:
    assert _java_major(text) == major


def _broker_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convostream", "broker", "--engine", "kafka", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_missing_java_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(PATH=str(tmp_path), CONVOSTREAM_KAFKA_CACHE=str(tmp_path / "cache"))
    result = _broker_cli(env)
    assert result.returncode == 1
    assert "Java 17+ is needed for --engine kafka" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_maven_is_a_clear_error(tmp_path: Path) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("needs java on PATH to get as far as Maven")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(java)
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env.update(PATH=str(bin_dir), CONVOSTREAM_KAFKA_CACHE=str(tmp_path / "empty-cache"))
    result = _broker_cli(env)
    assert result.returncode == 1
    assert "Maven (mvn) is needed" in result.stderr
    assert str(tmp_path / "empty-cache" / KAFKA_VERSION) in result.stderr


def test_compose_and_helm_target_the_kafka_version_the_tests_run() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = {
        name: service["image"]
        for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("apache/kafka")
    }
    assert images, "compose runs no apache/kafka image"
    assert set(images.values()) == {f"apache/kafka:{KAFKA_VERSION}"}, images
    chart = yaml.safe_load((ROOT / "deploy/helm/convostream/Chart.yaml").read_text())
    assert chart["annotations"]["convostream/kafka-version"] == KAFKA_VERSION


@pytest.mark.integration
async def test_cluster_reports_its_default_replication(kafka_broker: object) -> None:
    if os.environ.get("CONVOSTREAM_TEST_BROKER") != "kafka":
        pytest.skip("Tansu has no broker configs to describe; runs in the Kafka session")
    bootstrap = kafka_broker.bootstrap  # type: ignore[attr-defined]
    assert await default_replication(bootstrap) == 1


def test_processes_starting_at_once_fetch_the_jars_once(tmp_path: Path) -> None:
    """Parallel test workers (or brokers) on a fresh machine: one ``mvn`` run, both use it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "mvn-calls"
    # a stand-in for Maven that takes a while and writes one jar where it is told to
    (bin_dir / "mvn").write_text(
        "#!/bin/sh\n"
        f'echo run >> "{calls}"\n'
        "sleep 1\n"
        'for arg in "$@"; do case "$arg" in -DoutputDirectory=*) out="${arg#*=}";; esac; done\n'
        'mkdir -p "$out" && echo jar > "$out/kafka.jar"\n'
    )
    (bin_dir / "mvn").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env["CONVOSTREAM_KAFKA_CACHE"] = str(tmp_path / "cache")
    code = "from convostream.kafka_dist import classpath; print(classpath())"
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outputs = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    lib = tmp_path / "cache" / KAFKA_VERSION / "lib"
    assert outputs == {str(lib / "*")}
    assert calls.read_text().split() == ["run"]
    assert (lib / "kafka.jar").read_text() == "jar\n"
