"""Ordered, bounded publishing to Kafka with an idempotent producer.

Records wait in one FIFO until the broker acknowledges them; the FIFO counts against a bound
(records and bytes) that covers what aiokafka holds too, and when it is full :attr:`room` is
cleared so monitors stop reading their sockets (back-pressure, never unbounded memory).

Order: a single pump takes what the FIFO holds (up to :data:`DRAIN_RECORDS` at a time), packs it
into one record batch per topic-partition (more when a batch is full) in FIFO order, and hands
each batch to aiokafka with ``send_batch``. aiokafka keeps at most one request in flight per
broker, queues at most one batch per partition and re-queues a failed batch at the front of its
partition. With ``enable_idempotence`` batches never expire on retriable errors (a broker
outage), so they are retried in order until the broker is back, and the sequence numbers let
the broker drop a retried batch it had already written. A ``send_batch()`` that times out
(a partition's previous batch still queued while the broker is away) or fails with an error
aiokafka marks ``retriable`` appended nothing, so its records go back to the front of the FIFO
(:func:`offer_again`). Anything else (a fatal producer error, or a batch whose delivery failed)
restarts the producer and re-sends every unacknowledged record, in order: duplicates are then
possible, with the same ``event_key``.

Why batches of our own: ``send()`` costs a coroutine, a partition lookup, a future and a
``RecordMetadata`` per record, and the futures of records waiting for their acknowledgement are
garbage-collector work; a batch costs one future, and while a request is in flight the FIFO
fills up, so batches grow with the load (group commit). ``linger`` applies when the pump was
idle: it waits that long after the first record before packing, as Kafka's ``linger.ms`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.producer.message_accumulator import BatchBuilder

from convostream.logs import get_logger
from ingest.metrics import Metrics

log = get_logger("ingest.publisher")

DRAIN_RECORDS = 4096  # records packed per turn of the pump (bounds one turn's CPU time)


@dataclass(slots=True)
class Outgoing:
    """One encoded record and when its frame was read (loop time; 0: not a frame)."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes
    born: float
    offset: int = -1  # where the broker wrote it, once acknowledged

    @property
    def acked(self) -> bool:
        return self.offset >= 0


def offer_again(exc: KafkaError) -> bool:
    """Whether the same producer may take a batch that ``send_batch`` raised ``exc`` for.

    A timeout (the partition's previous batch still queued while the broker is away) and
    errors aiokafka marks ``retriable`` (metadata not yet known, a connection lost) pass with
    time; anything else is fatal for the producer. aiokafka leaves ``retriable`` false on
    ``KafkaTimeoutError``, hence its own test.
    """
    return isinstance(exc, KafkaTimeoutError) or exc.retriable


# topic, partition, the batch, and its records in FIFO order
_Batch = tuple[str, int, BatchBuilder, list[Outgoing]]


class Publisher:
    """FIFO of records between the monitors and an idempotent aiokafka producer."""

    def __init__(
        self,
        make_producer: Callable[[], AIOKafkaProducer],
        metrics: Metrics,
        max_records: int,
        max_bytes: int,
        linger: float = 0.0,
    ) -> None:
        self._make_producer = make_producer
        self._linger = linger
        self._metrics = metrics
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.records = 0
        self.bytes = 0
        self.room = asyncio.Event()
        self.room.set()
        self._queue: deque[Outgoing] = deque()
        self._inflight: deque[tuple[asyncio.Future[Any], list[Outgoing]]] = deque()
        self._taken = 0  # records off the FIFO, not yet in flight (being handed to aiokafka)
        self._queued = asyncio.Event()
        self._sent = asyncio.Event()
        self._acked = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        """Start the producer (waits for the broker) and the pump and acknowledgement tasks."""
        self._producer = await self._started_producer()
        self._tasks = [
            asyncio.create_task(self._pump(), name="publisher-pump"),
            asyncio.create_task(self._ack(), name="publisher-ack"),
        ]

    async def partitions(self, topic: str) -> int:
        assert self._producer is not None
        return len(await self._producer.partitions_for(topic))

    async def _started_producer(self) -> AIOKafkaProducer:
        delay = 0.2
        while True:
            producer = self._make_producer()
            try:
                await producer.start()
                return producer
            except KafkaError as exc:
                await producer.stop()
                log.warning("broker not reachable yet", error=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def offer(self, record: Outgoing) -> None:
        """Queue a record; clears :attr:`room` once the bound is reached."""
        self._queue.append(record)
        self.records += 1
        self.bytes += len(record.value)
        self._empty.clear()
        if not self._queued.is_set():
            self._queued.set()
        if self.records >= self.max_records or self.bytes >= self.max_bytes:
            self.room.clear()

    def _release(self, records: list[Outgoing], base: int, now: float) -> None:
        """Acknowledged: a batch's records sit at consecutive offsets from ``base``."""
        observe = self._metrics.publish_latency.observe
        size = 0
        for i, record in enumerate(records):
            size += len(record.value)
            record.offset = base + i
            if record.born:
                observe(now - record.born)
        self.records -= len(records)
        self.bytes -= size

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record offered so far is acknowledged; False on timeout."""
        try:
            async with asyncio.timeout(timeout):  # asyncio.wait_for may lose a cancellation
                await self._empty.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> None:
        """Flush (up to ``timeout``), then stop the tasks and the producer."""
        if not await self.flush(timeout):
            log.error("records left unpublished at shutdown", records=self.records)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._producer is not None:
            await self._producer.stop()

    def _gauges(self) -> None:
        m = self._metrics
        m.buffer_records.set(self.records)
        m.buffer_bytes.set(self.bytes)
        m.buffer_fill.set(max(self.records / self.max_records, self.bytes / self.max_bytes))

    async def _pump(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._queued.clear()
                await self._queued.wait()
                if self._linger:  # idle until now: let a batch gather (Kafka's linger.ms)
                    await asyncio.sleep(self._linger)
                continue
            async with self._lock:  # recovery must not reorder the queue under our feet
                producer = self._producer
                assert producer is not None
                batches = self._take(producer)
                sent = 0
                try:
                    for topic, partition, builder, records in batches:
                        future = await producer.send_batch(builder, topic, partition=partition)
                        future.add_done_callback(self._wake_ack)
                        self._inflight.append((future, records))
                        self._taken -= len(records)
                        sent += 1
                        if not self._sent.is_set():
                            self._sent.set()
                except KafkaError as exc:  # this batch was not appended: offer the rest again
                    self._put_back(batches[sent:])
                    if not offer_again(exc):
                        await self._recover(exc)

    def _take(self, producer: AIOKafkaProducer) -> list[_Batch]:
        """Up to DRAIN_RECORDS records off the FIFO, packed into batches in FIFO order."""
        queue = self._queue
        open_: dict[tuple[str, int], _Batch] = {}
        batches: list[_Batch] = []
        n = min(len(queue), DRAIN_RECORDS)
        self._taken += n
        for _ in range(n):
            record = queue.popleft()
            tp = (record.topic, record.partition)
            batch = open_.get(tp)
            if (
                batch is None
                or batch[2].append(timestamp=None, key=record.key, value=record.value) is None
            ):
                builder = producer.create_batch()
                builder.append(timestamp=None, key=record.key, value=record.value)
                batch = open_[tp] = (record.topic, record.partition, builder, [record])
                batches.append(batch)
            else:
                batch[3].append(record)
        for batch in batches:
            batch[2].close()  # closed: aiokafka sends it without lingering
        return batches

    def _put_back(self, batches: list[_Batch]) -> None:
        """Unsent batches' records back to the front of the FIFO (per-partition order kept)."""
        records = [record for batch in batches for record in batch[3]]
        self._queue.extendleft(reversed(records))
        self._taken -= len(records)

    def _wake_ack(self, _future: asyncio.Future[Any]) -> None:
        if not self._acked.is_set():
            self._acked.set()

    async def _ack(self) -> None:
        inflight = self._inflight
        published: dict[str, Any] = {}
        last_gauge = 0.0
        while True:
            if not inflight:
                self._gauges()
                if not self._queue and not self._taken:
                    self._empty.set()
                self._sent.clear()
                await self._sent.wait()
                continue
            future = inflight[0][0]
            if not future.done():
                self._acked.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._acked.wait()
                continue
            now = self._loop.time()
            while inflight and inflight[0][0].done():
                future, records = inflight[0]
                if future.cancelled() or future.exception() is not None:
                    break
                inflight.popleft()
                self._release(records, future.result().offset, now)
                topic = records[0].topic
                counter = published.get(topic)
                if counter is None:
                    counter = published[topic] = self._metrics.published.labels(topic)
                counter.inc(len(records))
            else:
                if not self.room.is_set() and (
                    self.records < self.max_records and self.bytes < self.max_bytes
                ):
                    self.room.set()
                if now - last_gauge > 1.0:
                    self._gauges()
                    last_gauge = now
                continue
            exc = future.exception() if not future.cancelled() else None
            async with self._lock:
                if inflight and inflight[0][0] is future:
                    await self._recover(exc)

    async def _recover(self, exc: BaseException | None) -> None:
        """A fatal producer error: new producer, re-send everything unacknowledged in order.

        Called with ``_lock`` held.
        """
        log.error("producer failed; re-sending unacknowledged records", error=repr(exc))
        old, self._producer = self._producer, None
        pending = [record for _, records in self._inflight for record in records]
        self._inflight.clear()
        if old is not None:
            with contextlib.suppress(KafkaError):
                await old.stop()
        self._queue.extendleft(reversed(pending))
        self._producer = await self._started_producer()
        self._queued.set()
