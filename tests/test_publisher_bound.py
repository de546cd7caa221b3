"""The collector's publish buffer against the session broker: its bound holds the monitors back,
and every record still reaches the topic once, in order."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from ingest.metrics import Metrics
from ingest.publisher import Outgoing, Publisher
from tests.collector_harness import fence, new_topic, raw_records

pytestmark = pytest.mark.integration

BOUND = 50
RECORDS = 1000


async def test_a_full_buffer_holds_writers_back_and_loses_nothing(kafka_broker: Any) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = await new_topic(bootstrap, "bound")
    publisher = Publisher(
        lambda: AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all"),
        Metrics(),
        max_records=BOUND,
        max_bytes=10**9,
    )
    await publisher.start()
    highest, held_back = 0, 0
    try:
        for i in range(RECORDS):  # as a monitor does: read a frame only while there is room
            if not publisher.room.is_set():
                held_back += 1
                await publisher.room.wait()
            publisher.offer(Outgoing(topic, i % 2, b"k", str(i).encode(), born=0.0))
            highest = max(highest, publisher.records)
        assert await publisher.flush(60)
    finally:
        await publisher.close(10)
    assert highest == BOUND  # the bound was reached and never passed
    assert held_back > 0
    assert publisher.room.is_set()
    await fence(bootstrap, topic)
    stored = await raw_records(bootstrap, topic)
    for partition in (0, 1):
        values = [int(m.value) for m in stored if m.partition == partition]
        assert values == list(range(partition, RECORDS, 2))  # each once, in order
