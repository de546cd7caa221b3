"""An independent client reads what the collectors wrote: librdkafka (``confluent-kafka``) as the
consumer, fastavro for the Confluent frame, and Java's own default partitioner (from the Kafka
jars the broker runs on) as the judge of partitioning."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import subprocess
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka
import fastavro
import pytest

from convostream.broker import create_topics
from convostream.kafka_dist import KAFKA_VERSION, KafkaUnavailable, classpath, java_binary
from schemas.registry import PinnedRegistry
from schemas.topics import MONITOR_EVENTS
from tests.collector_harness import CollectorProcess, collector_env, fence, ground_truth
from tests.needs import missing_tool

pytestmark = pytest.mark.integration

KEY = "xi-interop-" + uuid.uuid4().hex

# BuiltInPartitioner.partitionForKey is what the Java producer's default partitioner uses for
# keyed records: toPositive(murmur2(key)) % partitions.
_JAVA_PARTITIONS = """
import java.io.*;
import java.nio.charset.StandardCharsets;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;

public class Partitions {
    public static void main(String[] args) throws IOException {
        int n = Integer.parseInt(args[0]);
        BufferedReader in = new BufferedReader(
            new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = in.readLine()) != null; ) {
            byte[] key = line.getBytes(StandardCharsets.UTF_8);
            System.out.println(BuiltInPartitioner.partitionForKey(key, n));
        }
    }
}
"""


def java_partitions(keys: list[str], partitions: int, workdir: Path) -> dict[str, int]:
    """Each key's partition as chosen by Kafka's Java client (source-file launch, JDK 11+)."""
    try:
        java = java_binary()
        cp = classpath(KAFKA_VERSION)
    except KafkaUnavailable as exc:
        missing_tool(str(exc))
    source = workdir / "Partitions.java"
    source.write_text(_JAVA_PARTITIONS)
    result = subprocess.run(
        [java, "-cp", cp, str(source), str(partitions)],
        input="\n".join(keys) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0 and "jdk.compiler" in result.stderr:
        missing_tool("a JDK (not just a JRE) to run Java's partitioner")
    assert result.returncode == 0, result.stderr
    return dict(zip(keys, (int(x) for x in result.stdout.split()), strict=True))


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every message of ``topic`` through librdkafka, partition by partition, to the end."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"interop-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=30)
        partitions = sorted(meta.topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p))[1]
            for p in partitions
        }
        consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in partitions])
        messages: list[Any] = []
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < len(partitions):
            message = consumer.poll(10)
            assert message is not None, "librdkafka read nothing for 10 s"
            assert message.error() is None, message.error()
            messages.append(message)
            if message.offset() + 1 >= ends[message.partition()]:
                done.add(message.partition())
        return messages
    finally:
        consumer.close()


async def test_independent_client_reads_keys_partitions_and_values(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    prefix = f"i{uuid.uuid4().hex[:8]}."
    topic = MONITOR_EVENTS.full_name(prefix)
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    sim = await simulator_factory(
        api_key=KEY,
        seed=21,
        conversations=24,
        events_per_second=6,  # the frames, not their pace, are under test
        ground_truth=tmp_path / "truth.jsonl",
    )
    collector = CollectorProcess(
        "c0",
        collector_env(kafka_broker.bootstrap, sim.url, KEY, prefix, f"g-{prefix}"),
        tmp_path,
    )
    collector.start()
    try:
        await sim.wait_finished(120)
        await asyncio.sleep(2.0)
    finally:
        assert collector.stop() == 0, collector.failure_text()
    await fence(kafka_broker.bootstrap, topic)  # Tansu shows a batch's tail only after another

    messages = [m for m in read_all(kafka_broker.bootstrap, topic) if m.value() is not None]
    truth = ground_truth(tmp_path / "truth.jsonl")
    frames: dict[str, set[str]] = {}
    for line in truth:
        frames.setdefault(line["conversation_id"], set()).add(line["frame"])
    assert len(messages) >= len(truth) > 0

    registry = PinnedRegistry.load()
    writer_id = registry.writer_id("MonitorEvent")
    writer = registry.known(writer_id)
    assert writer is not None
    parsed = fastavro.parse_schema(writer.schema)
    keys = sorted({m.key().decode("utf-8") for m in messages})
    expected_partition = java_partitions(keys, MONITOR_EVENTS.partitions, tmp_path)
    for message in messages:
        key = message.key().decode("utf-8")
        value = message.value()
        magic, schema_id = struct.unpack(">bI", value[:5])
        assert (magic, schema_id) == (0, writer_id)
        event = fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed, parsed)
        assert isinstance(event, dict)
        assert event["conversation_id"] == key
        assert event["raw"] in frames[key], event["raw"][:80]
        assert json.loads(event["raw"])["type"] == event["type"]
        assert message.partition() == expected_partition[key], key
    assert set(keys) == set(frames)
