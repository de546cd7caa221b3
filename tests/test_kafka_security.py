"""Apache Kafka with a SASL_SSL listener (a CA and broker certificate made by the test; PLAIN
users in the JAAS config, SCRAM-SHA-512 users stored at format time): the collector, the
processor (Faust) and the command path work over it with either mechanism, and bad
credentials or an untrusted broker stop a component at start-up with exit 2 and no secret.

One broker for the module; the topic set-up and the test's own reads use its PLAINTEXT
listener, so only the components under test speak SASL_SSL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import SecretStr

from convostream.broker import create_topics, free_port
from convostream.kafka_engine import KafkaBroker, SaslSslListener
from convostream.kafka_security import KafkaSecurity
from convostream.ops import Health
from convostream.readiness import Refused, broker_problem, watch
from simulator.testing import wait_for
from tests.commands_rig import Rig, run_send_command, running_rig
from tests.conftest import KAFKA_TEST_PROPERTIES, running
from tests.processor_harness import expected_from_topics, pipeline, wait_for_rows
from tests.tls_certs import ServerTls, make_server_tls

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only]
MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")  # the command rig lives for the module

PLAIN_USER, PLAIN_PASSWORD = "alice", "alice-" + uuid.uuid4().hex
SCRAM_USER, SCRAM_PASSWORD = "bob", "bob-" + uuid.uuid4().hex
USERS = {
    "PLAIN": (PLAIN_USER, PLAIN_PASSWORD),
    "SCRAM-SHA-512": (SCRAM_USER, SCRAM_PASSWORD),
}
KEY = "sim-key-" + uuid.uuid4().hex
# conversations keep starting for a while, so many begin after the collector has joined
SIM = {"events_per_second": 6, "ramp_seconds": 2, "conversations": 4, "agents": 2, "duration": 25}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> ServerTls:
    return make_server_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure_kafka(tls: ServerTls) -> Iterator[KafkaBroker]:
    listener = SaslSslListener(
        tls.keystore,
        tls.keystore_password,
        plain_users={PLAIN_USER: PLAIN_PASSWORD},
        scram_users={SCRAM_USER: SCRAM_PASSWORD},
    )
    broker = KafkaBroker(properties=KAFKA_TEST_PROPERTIES, sasl_ssl=listener, create=False)
    with running(broker):
        yield broker


def sasl_env(
    broker: KafkaBroker, tls: ServerTls, mechanism: str, password_file: Path | None = None
) -> dict[str, str]:
    """A component's SASL_SSL settings; the password from a file when one is given."""
    user, password = USERS[mechanism]
    env = {
        "CONVOSTREAM_KAFKA_BOOTSTRAP": broker.secure_bootstrap,
        "CONVOSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CONVOSTREAM_KAFKA_SASL_MECHANISM": mechanism,
        "CONVOSTREAM_KAFKA_SASL_USERNAME": user,
        "CONVOSTREAM_KAFKA_SSL_CA_FILE": str(tls.ca_file),
    }
    if password_file is None:
        env["CONVOSTREAM_KAFKA_SASL_PASSWORD"] = password
    else:
        password_file.write_text(password + "\n")
        env["CONVOSTREAM_KAFKA_SASL_PASSWORD_FILE"] = str(password_file)
    return env


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
async def test_collector_to_sql_over_sasl_ssl(
    secure_kafka: KafkaBroker,
    tls: ServerTls,
    simulator_factory: Any,
    tmp_path: Path,
    mechanism: str,
) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}."
    await create_topics(secure_kafka.bootstrap, prefix=prefix)
    sim = await simulator_factory(api_key=KEY, seed=3, **SIM)
    collector, processor, db = pipeline(
        secure_kafka.secure_bootstrap,
        sim.url,
        KEY,
        prefix,
        tmp_path,
        # DEBUG: the most a log can say, and still no password; the processor's from a file
        collector_extra={
            "CONVOSTREAM_LOG_LEVEL": "DEBUG",
            **sasl_env(secure_kafka, tls, mechanism),
        },
        processor_extra=sasl_env(secure_kafka, tls, mechanism, tmp_path / "kafka-password"),
    )
    processor.start()
    collector.start()
    try:
        await sim.wait_finished(180)
        await asyncio.sleep(2.0)
        assert collector.stop() == 0, collector.failure_text()
        expected, _ = await expected_from_topics(secure_kafka.bootstrap, prefix)
        assert len(expected) >= SIM["conversations"], collector.failure_text()
        actual = await wait_for_rows(db, expected, processor)
        assert actual == expected
    finally:
        if processor.alive():
            processor.stop()
    password = USERS[mechanism][1]
    assert password not in collector.log_text() + processor.log_text()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def scram_rig(
    secure_kafka: KafkaBroker, tls: ServerTls, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    """An in-process command worker and client over SASL_SSL with SCRAM-SHA-512."""
    user, password = USERS["SCRAM-SHA-512"]
    async with running_rig(
        secure_kafka.secure_bootstrap,
        tmp_path_factory.mktemp("commands"),
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=user,
        kafka_sasl_password=password,
        kafka_ssl_ca_file=tls.ca_file,
    ) as rig:
        yield rig


@MODULE_LOOP
async def test_command_worker_and_send_command_over_sasl_ssl(
    scram_rig: Rig, secure_kafka: KafkaBroker, tls: ServerTls, tmp_path: Path
) -> None:
    """The worker (and its intent tail and result reader) delivers a command from the Python
    client, then one from ``convostream send-command`` authenticating with PLAIN."""
    chat = scram_rig.conversation("chat").conversation_id
    result = await scram_rig.client.send("contextual_update", chat, text="first", timeout=60)
    assert result["status"] == "delivered", result
    code, out, err = await run_send_command(
        scram_rig,
        "contextual_update",
        "--conversation",
        chat,
        "--text",
        "second",
        env=sasl_env(secure_kafka, tls, "PLAIN", tmp_path / "password"),
    )
    assert code == 0, (out + err)[-3000:]
    assert '"delivered"' in out
    assert PLAIN_PASSWORD not in out + err
    texts = [r["frame"] for r in scram_rig.received(chat)]
    assert any('"first"' in t for t in texts), texts
    assert any('"second"' in t for t in texts), texts


def _start(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVOSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "convostream", *command.split()],
        env={**base, "CONVOSTREAM_API_KEY": "k" * 16, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("command", "mechanism", "change", "says"),
    [
        ("collect", "SCRAM-SHA-512", {"CONVOSTREAM_KAFKA_SASL_PASSWORD": "wrong-pw-123"}, "SCRAM"),
        ("process", "PLAIN", {"CONVOSTREAM_KAFKA_SASL_PASSWORD": "wrong-pw-123"}, "password"),
        ("collect", "PLAIN", {"CONVOSTREAM_KAFKA_SSL_CA_FILE": ""}, "CERTIFICATE_VERIFY_FAILED"),
        ("webhooks", "SCRAM-SHA-512", {"CONVOSTREAM_KAFKA_SASL_USERNAME": "mallory"}, "SCRAM"),
        (
            "tail convai.monitor.events",
            "PLAIN",
            {"CONVOSTREAM_KAFKA_SASL_PASSWORD": "wrong-pw-123"},
            "Invalid username or password",
        ),
    ],
)
def test_refused_credentials_stop_at_start_up(
    secure_kafka: KafkaBroker,
    tls: ServerTls,
    tmp_path: Path,
    command: str,
    mechanism: str,
    change: dict[str, str],
    says: str,
) -> None:
    """Exit 2 at once (not the unreachable broker's retries and exit 3), the broker's reason
    shown, neither the wrong nor the right password."""
    env = {
        **sasl_env(secure_kafka, tls, mechanism),
        "CONVOSTREAM_STARTUP_TIMEOUT": "600",  # a retry loop would hit the subprocess timeout
        "CONVOSTREAM_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}",
        "CONVOSTREAM_PROCESSOR_DATA_DIR": str(tmp_path / "state"),
        "CONVOSTREAM_METRICS_PORT": str(free_port()),
        "CONVOSTREAM_WEBHOOK_SECRET": "whsec-" + uuid.uuid4().hex,
        "CONVOSTREAM_WEBHOOK_PORT": "0",
        **change,
    }
    if not env["CONVOSTREAM_KAFKA_SSL_CA_FILE"]:
        del env["CONVOSTREAM_KAFKA_SSL_CA_FILE"]  # the system CAs do not know the test CA
    result = _start(command, env, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "refused" in output, output[-3000:]
    assert says in output, output[-3000:]
    assert "wrong-pw-123" not in output
    assert USERS[mechanism][1] not in output
    assert "Traceback" not in output


async def test_readiness_reports_a_refusal_while_running(
    secure_kafka: KafkaBroker, tls: ServerTls
) -> None:
    """At start a refusal is raised (exit 2); once running (credentials revoked), /readyz
    turns not ready with the broker's reason instead of the watch dying."""
    right = KafkaSecurity(
        "SASL_SSL", "SCRAM-SHA-512", SCRAM_USER, SecretStr(SCRAM_PASSWORD), tls.ca_file
    )
    assert await broker_problem(secure_kafka.secure_bootstrap, right) is None
    wrong = dataclasses.replace(right, password=SecretStr("wrong-pw-123"))
    with pytest.raises(Refused, match="SCRAM-SHA-512"):
        await broker_problem(secure_kafka.secure_bootstrap, wrong)
    health = Health("t")
    health.beat()
    watcher = asyncio.create_task(
        watch(health, "broker", lambda: broker_problem(secure_kafka.secure_bootstrap, wrong), 60)
    )
    try:
        await wait_for(lambda: health.ready()[1].get("broker", "starting") != "starting", 30)
        ready, failing = health.ready()
        assert not ready
        assert "refused" in failing["broker"]
        assert "wrong-pw-123" not in failing["broker"]
        assert not watcher.done()
    finally:
        watcher.cancel()
