"""The session's broker engine: the catalogue exists, and the CLI starts, answers and stops
cleanly (``convostream broker --engine tansu|kafka``, whichever the session runs on)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from convostream.broker import EmbeddedBroker, create_topics, free_port
from schemas.topics import CATALOGUE

pytestmark = pytest.mark.integration


async def _describe(bootstrap: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t.name for t in CATALOGUE]
        described = await admin.describe_topics(names)
        return {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()


async def test_catalogue_topics_exist_with_their_partitions(kafka_broker: EmbeddedBroker) -> None:
    partitions = await _describe(kafka_broker.bootstrap)
    assert partitions == {t.name: t.partitions for t in CATALOGUE}
    assert await create_topics(kafka_broker.bootstrap) == []  # idempotent


async def test_produce_and_consume_round_trip(kafka_broker: EmbeddedBroker) -> None:
    topic = "convai.monitor.dlq"
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"hello", key=b"k1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        msg = await asyncio.wait_for(consumer.getone(), 10)
        assert (msg.key, msg.value) == (b"k1", b"hello")
    finally:
        await consumer.stop()


def test_cli_runs_in_foreground_and_stops_on_sigint(broker_engine: str) -> None:
    port = free_port()
    engine = broker_engine
    proc = subprocess.Popen(
        [sys.executable, "-m", "convostream", "broker", "--engine", engine, "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CONVOSTREAM_LOG_FORMAT": "json"},
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 180  # a JVM on a loaded machine
        line = ""
        while time.monotonic() < deadline and "bootstrap:" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "broker exited before it was ready"
        assert line.strip() == f"bootstrap: 127.0.0.1:{port}"
        partitions = asyncio.run(_describe(f"127.0.0.1:{port}"))
        assert set(partitions) == {t.name for t in CATALOGUE}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        with pytest.raises(ConnectionRefusedError):  # the broker process is gone too
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_bad_port_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "convostream", "broker"],
        capture_output=True,
        text=True,
        env={**os.environ, "CONVOSTREAM_BROKER_PORT": "not-a-port"},
        timeout=30,
    )
    assert result.returncode == 2
    assert "CONVOSTREAM_BROKER_PORT" in result.stderr
    assert "--port" in result.stderr


def test_embedded_broker_context_manager_stops_the_process() -> None:
    with EmbeddedBroker() as broker:
        assert broker.running()
        proc = broker._proc
    assert proc is not None
    assert proc.poll() is not None
