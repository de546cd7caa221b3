"""Reading whole topics without a consumer group, for components that rebuild state from them:
followed from the beginning (:func:`assign_from_start`), or read once up to their current end on
a partition assignment (:func:`read_to_end`, changelog and write-ahead topics), or read from
given offsets or times (:func:`read_range`, a collector reading back what a dead one published)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

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


SKIP_LOG_INTERVAL = 10.0  # seconds between two warnings about one topic's undecodable records


class Skips:
    """Undecodable records per topic, warned about once per :data:`SKIP_LOG_INTERVAL`.

    The first one is logged at once; later ones are counted and the count logged with the
    latest error: a topic that holds another writer's records would otherwise log one line per
    record (hundreds of thousands in a read-back), drowning the log and costing CPU.
    """

    def __init__(self, interval: float = SKIP_LOG_INTERVAL) -> None:
        self.interval = interval
        self._since: dict[str, tuple[int, float]] = {}  # topic: (skipped unlogged, last logged)

    def skipped(self, topic: str, now: float) -> int:
        """Count one; returns how many to log now (0: not yet)."""
        count, last = self._since.get(topic, (0, float("-inf")))
        count += 1
        if now - last < self.interval:
            self._since[topic] = (count, last)
            return 0
        self._since[topic] = (0, now)
        return count


_skips = Skips()


async def decoded(serde: Serde, topic: str, value: bytes) -> Decoded | None:
    """The record in ``value``, or None (logged) when it cannot be read: a reader that rebuilds
    state must not stop at one bad record, and the record stays on the topic for inspection.
    A registry id met for the first time is looked up (retried while the registry is down)."""
    try:
        return await serde.resolve(value)
    except SerdeError as exc:
        count = _skips.skipped(topic, time.monotonic())
        if count:
            log.warning("undecodable records skipped", topic=topic, records=count, error=str(exc))
        return None


async def read_to_end(
    bootstrap: str, topic: str, partitions: list[int], security: KafkaSecurity = PLAINTEXT
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic``'s ``partitions`` up to the end offsets seen at the start."""
    async for record in read_range(bootstrap, topic, Span({p: None for p in partitions}), security):
        yield record


@dataclass
class Span:
    """Where a read starts in each partition, and how far it got.

    ``starts``: an offset, or None for the beginning; ``since_ms``: the first record at or
    after that time (with both, the read starts at the lower). ``reached``: per partition, the
    offset below which everything was read; the end offset seen at the start unless the read
    timed out.
    """

    starts: Mapping[int, int | None]
    since_ms: Mapping[int, int] = field(default_factory=dict)
    reached: dict[int, int] = field(default_factory=dict)


async def read_range(
    bootstrap: str,
    topic: str,
    span: Span,
    security: KafkaSecurity = PLAINTEXT,
    timeout: float | None = None,
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """The records of ``topic`` from ``span``'s starts up to the end offsets seen at the start.

    With ``timeout``, reading stops after that many seconds (``span.reached`` says where),
    without an error: a caller that can go on with less says so in its own log.
    """
    parts = sorted({*span.starts, *span.since_ms})
    if not parts:
        return
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        **security.client_kwargs(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a start already deleted by retention: the oldest kept
    )
    await reader.start()
    try:
        tps = {p: TopicPartition(topic, p) for p in parts}
        reader.assign(list(tps.values()))
        ends = await reader.end_offsets(list(tps.values()))
        found = await reader.offsets_for_times({tps[p]: ms for p, ms in span.since_ms.items()})
        from_beginning = []
        for p, tp in tps.items():
            start: int | None = ends[tp]
            if p in span.since_ms and (at := found.get(tp)) is not None:
                start = at.offset
            if p in span.starts:
                given = span.starts[p]
                start = None if given is None or start is None else min(given, start)
            if start is None:
                from_beginning.append(tp)
            else:
                reader.seek(tp, min(start, ends[tp]))
        # all in one request: one at a time, each waited for the fetch under way (500 ms on
        # Apache Kafka when the partitions read so far are empty)
        if from_beginning:
            await reader.seek_to_beginning(*from_beginning)
        for p, tp in tps.items():
            span.reached[p] = await reader.position(tp)
        pending = {tp for p, tp in tps.items() if span.reached[p] < ends[tp]}
        for tp in tps.values():
            if tp not in pending:
                span.reached[tp.partition] = ends[tp]
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while pending:
            wait = 1.0 if deadline is None else min(1.0, deadline - loop.time())
            if wait <= 0:
                break
            batch = await reader.getmany(*pending, timeout_ms=int(wait * 1000))
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                position = min(await reader.position(tp), ends[tp])
                span.reached[tp.partition] = position
                if position >= ends[tp]:
                    pending.discard(tp)
    finally:
        await reader.stop()
