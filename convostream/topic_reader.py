"""Reading whole topics without a consumer group, for components that rebuild state from them:
followed from the beginning (:func:`assign_from_start`), or read once up to their current end on
a partition assignment (:func:`read_to_end`, changelog and write-ahead topics)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import UnknownTopicOrPartitionError
from aiokafka.structs import ConsumerRecord

from convostream.broker import partitions_of
from convostream.kafka_security import PLAINTEXT, KafkaSecurity
from convostream.logs import get_logger
from schemas.errors import SerdeError
from schemas.serde import Decoded, Serde

METADATA_RETRY_SECONDS = 1.0

log = get_logger("topic_reader")


async def assign_from_start(consumer: AIOKafkaConsumer, topics: list[str]) -> None:
    """Assign every partition of ``topics`` and seek to the beginning.

    Waits for each topic's metadata: a component may start before the topics are created.
    """
    parts: list[TopicPartition] = []
    for topic in topics:
        while True:
            try:
                found = await partitions_of(consumer, topic)
            except UnknownTopicOrPartitionError:
                found = []
            if found:
                break
            await asyncio.sleep(METADATA_RETRY_SECONDS)
        parts += found
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)


async def decoded(serde: Serde, topic: str, value: bytes) -> Decoded | None:
    """The record in ``value``, or None (logged) when it cannot be read: a reader that rebuilds
    state must not stop at one bad record, and the record stays on the topic for inspection.
    A registry id met for the first time is looked up (retried while the registry is down)."""
    try:
        return await serde.resolve(value)
    except SerdeError as exc:
        log.warning("undecodable record skipped", topic=topic, error=str(exc))
        return None


async def read_to_end(
    bootstrap: str, topic: str, partitions: list[int], security: KafkaSecurity = PLAINTEXT
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic``'s ``partitions`` up to the end offsets seen at the start."""
    if not partitions:
        return
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, **security.client_kwargs(), enable_auto_commit=False
    )
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > await reader.position(tp)}
        while pending:
            batch = await reader.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                if await reader.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await reader.stop()
