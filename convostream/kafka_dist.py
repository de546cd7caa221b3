"""Apache Kafka's classpath from Maven Central, fetched once with ``mvn`` and cached.

The broker is the ``org.apache.kafka:kafka_2.13`` artifact and its runtime dependencies (plus
``slf4j-simple`` so the broker's warnings reach stderr); a generated pom asks Maven to copy them
into ``<cache>/<version>/lib``. A stamp file marks a complete copy, so an interrupted download is
redone rather than used; a lock file beside it makes processes that start at once (parallel test
workers, several ``convostream broker --engine kafka``) wait for one download instead of
overwriting each other's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from filelock import FileLock

KAFKA_VERSION = "4.1.1"
"""The version docker-compose and the Helm chart run too (tests/test_kafka_dist.py checks)."""

MIN_JAVA = 17

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>convostream</groupId>
  <artifactId>kafka-classpath</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
"""


class KafkaUnavailable(RuntimeError):
    """Java or Maven is missing, too old, or the download failed; the message says what to do."""


def cache_dir() -> Path:
    """``CONVOSTREAM_KAFKA_CACHE`` or ``~/.cache/convostream/kafka``."""
    configured = os.environ.get("CONVOSTREAM_KAFKA_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "convostream" / "kafka"


def java_binary() -> str:
    """The ``java`` on PATH (or ``$JAVA_HOME/bin/java``), checked to be Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise KafkaUnavailable(
            f"Java {MIN_JAVA}+ is needed for --engine kafka and was not found "
            "(Debian: apt-get install openjdk-17-jre-headless; or set JAVA_HOME)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    major = _java_major(out.stderr + out.stdout)
    if major is None or major < MIN_JAVA:
        raise KafkaUnavailable(
            f"Java {MIN_JAVA}+ is needed for --engine kafka; {java} is {major or 'unknown'}"
        )
    return java


def _java_major(version_text: str) -> int | None:
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if match is None:
        return None
    first = int(match.group(1))
    return int(match.group(2) or 0) if first == 1 else first  # "1.8" is Java 8


def classpath(version: str = KAFKA_VERSION) -> str:
    """The broker's classpath (a ``lib/*`` wildcard), downloading it on first use."""
    home = cache_dir() / version
    lib = home / "lib"
    stamp = home / ".complete"
    if not stamp.exists():
        home.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(home.parent / f"{version}.lock"):
            _download(version, home, lib, stamp)
    return str(lib / "*")


def _download(version: str, home: Path, lib: Path, stamp: Path) -> None:
    """Copy the broker's jars into ``lib`` with Maven, unless another process just did."""
    if stamp.exists():  # fetched by another process while this one waited for the lock
        return
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaUnavailable(
            "Maven (mvn) is needed once to fetch Apache Kafka from Maven Central for "
            f"--engine kafka (Debian: apt-get install maven); the jars are cached in {home}"
        )
    home.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(lib, ignore_errors=True)
    (home / "pom.xml").write_text(_POM.format(version=version))
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(home / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise KafkaUnavailable(
            f"mvn could not fetch org.apache.kafka:kafka_2.13:{version}:\n" + "\n".join(tail)
        )
    stamp.write_text(version + "\n")
