"""Reading a topic from given offsets or times, against the session broker."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from convostream.kafka_engine import KafkaBroker
from convostream.topic_reader import Span, read_range
from tests.collector_harness import new_topic

pytestmark = pytest.mark.integration


async def _topic_with_records(bootstrap: str) -> tuple[str, list[int]]:
    """Two partitions; partition 0 holds records 0..9, one per batch, stamped 1000 ms apart."""
    topic = await new_topic(bootstrap, "reader")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    base = 1_700_000_000_000
    stamps = [base + 1000 * i for i in range(10)]
    try:
        for i, ms in enumerate(stamps):
            await producer.send_and_wait(topic, str(i).encode(), partition=0, timestamp_ms=ms)
        await producer.send_and_wait(topic, b"p1", partition=1, timestamp_ms=base)
    finally:
        await producer.stop()
    return topic, stamps


async def _read(bootstrap: str, topic: str, span: Span) -> list[tuple[int, bytes | None]]:
    return [(m.partition, m.value) async for m in read_range(bootstrap, topic, span)]


async def test_read_range_starts_at_offsets_times_or_the_lower_of_both(
    kafka_broker: Any,
) -> None:
    bootstrap = kafka_broker.bootstrap
    topic, stamps = await _topic_with_records(bootstrap)

    span = Span({0: 7})
    assert await _read(bootstrap, topic, span) == [(0, b"7"), (0, b"8"), (0, b"9")]
    assert span.reached == {0: 10}

    # Tansu 0.6 answers every time lookup with the partition's first offset: a read by time
    # there starts earlier (more records, never fewer).
    exact = isinstance(kafka_broker, KafkaBroker)
    span = Span({}, {0: stamps[4] - 1, 1: stamps[9] + 1})  # p1 has nothing that late
    got = await _read(bootstrap, topic, span)
    expected = [str(i).encode() for i in range(4, 10)]
    assert [v for p, v in got if p == 0][-6:] == expected
    assert span.reached == {0: 10, 1: 1}
    if exact:
        assert [v for _, v in got] == expected

    span = Span({0: 8}, {0: stamps[6]})
    got = await _read(bootstrap, topic, span)
    assert [v for _, v in got][-4:] == [b"6", b"7", b"8", b"9"]
    if exact:
        assert len(got) == 4

    span = Span({0: None, 1: 5})  # None: from the beginning; beyond the end: nothing
    assert len(await _read(bootstrap, topic, span)) == 10
    assert span.reached == {0: 10, 1: 1}
