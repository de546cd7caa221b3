"""Ordered, bounded publishing to Kafka with an idempotent producer.

Records wait in one FIFO until the broker acknowledges them; the FIFO counts against a bound
(records and bytes) that covers what aiokafka holds too, and when it is full :attr:`room` is
cleared so monitors stop reading their sockets (back-pressure, never unbounded memory).

Order: a single pump hands records to aiokafka in FIFO order with an explicit partition, and
aiokafka keeps at most one request in flight per broker and re-queues a failed batch at the
front of its partition. With ``enable_idempotence`` batches never expire on retriable errors
(a broker outage), so they are retried in order until the broker is back, and the sequence
numbers let the broker drop a retried batch it had already written. A ``send()`` that times out
(accumulator full while the broker is away) appended nothing, so the same record is simply
offered again. Anything else (a fatal producer error) restarts the producer and re-sends every
unacknowledged record, in order: duplicates are then possible, with the same ``event_key``.
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

import convostream.kafka_compat  # noqa: F401 - must precede producers: idempotence on Tansu
from convostream.logs import get_logger
from ingest.metrics import Metrics

log = get_logger("ingest.publisher")


@dataclass(slots=True)
class Outgoing:
    """One encoded record and when its frame was read (loop time; 0: not a frame)."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes
    born: float


class Publisher:
    """FIFO of records between the monitors and an idempotent aiokafka producer."""

    def __init__(
        self,
        make_producer: Callable[[], AIOKafkaProducer],
        metrics: Metrics,
        max_records: int,
        max_bytes: int,
    ) -> None:
        self._make_producer = make_producer
        self._metrics = metrics
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.records = 0
        self.bytes = 0
        self.room = asyncio.Event()
        self.room.set()
        self._queue: deque[Outgoing] = deque()
        self._inflight: deque[tuple[asyncio.Future[Any], Outgoing]] = deque()
        self._queued = asyncio.Event()
        self._sent = asyncio.Event()
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

    def _release(self, record: Outgoing, now: float) -> None:
        self.records -= 1
        self.bytes -= len(record.value)
        if record.born:
            self._metrics.publish_latency.observe(now - record.born)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record offered so far is acknowledged; False on timeout."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
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
        queue, inflight = self._queue, self._inflight
        while True:
            if not queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            record = queue.popleft()
            async with self._lock:  # recovery must not reorder the queue under our feet
                producer = self._producer
                assert producer is not None
                try:
                    future = await producer.send(
                        record.topic, record.value, key=record.key, partition=record.partition
                    )
                except KafkaTimeoutError:  # nothing was appended: offer the same record again
                    queue.appendleft(record)
                    continue
                except KafkaError as exc:
                    queue.appendleft(record)
                    await self._recover(exc)
                    continue
                inflight.append((future, record))
            self._sent.set()

    async def _ack(self) -> None:
        inflight = self._inflight
        published: dict[str, Any] = {}
        last_gauge = 0.0
        while True:
            if not inflight:
                self._gauges()
                if not self._queue:
                    self._empty.set()
                self._sent.clear()
                await self._sent.wait()
                continue
            future, _ = inflight[0]
            if not future.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(future), 1.0)
                continue
            now = self._loop.time()
            while inflight and inflight[0][0].done():
                future, record = inflight[0]
                if future.cancelled() or future.exception() is not None:
                    break
                inflight.popleft()
                self._release(record, now)
                counter = published.get(record.topic)
                if counter is None:
                    counter = published[record.topic] = self._metrics.published.labels(record.topic)
                counter.inc()
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
        pending = [record for _, record in self._inflight]
        self._inflight.clear()
        if old is not None:
            with contextlib.suppress(KafkaError):
                await old.stop()
        self._queue.extendleft(reversed(pending))
        self._producer = await self._started_producer()
        self._queued.set()
