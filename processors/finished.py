"""Transcripts and summaries of finished conversations into SQL (``processors.transcripts``).

A service of ``convostream process`` with its own consumer, apart from the metrics path so that
path keeps its speed: it reads ``convai.monitor.events`` (decoding in full only the turn types),
``convai.conversations`` and ``convai.postcall`` from the beginning, without a consumer group,
and rebuilds its books from the topics on every start (rows are replaced whole, so writing them
again changes nothing). Once a second, each ended conversation whose book changed is written:
its transcript replaced, its summary upserted. A book is dropped ``EVICT_SECONDS`` after its
last change (written, or never ended); a turn backfilled later than that is not added to the SQL
transcript.
Every replica reads every partition: enable it on one (``--transcripts``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer
from mode import Service

from convostream.kafka_security import KafkaSecurity
from convostream.topic_reader import assign_from_start, decoded
from processors.events import HeadReader
from processors.sink import Sink
from processors.transcripts import Book
from schemas.clock import now_micros
from schemas.serde import Serde
from schemas.topics import CONVERSATIONS, MONITOR_EVENTS, POSTCALL

EVICT_SECONDS = 600.0
FLUSH_SECONDS = 1.0
TURN_TYPES = frozenset(
    {
        "user_transcript",
        "agent_response",
        "agent_response_correction",
        "interruption",
        "agent_tool_response",
    }
)


class FinishedConversations(Service):
    """Keeps one :class:`Book` per conversation and writes the finished ones."""

    def __init__(
        self,
        bootstrap: str,
        security: KafkaSecurity,
        prefix: str,
        sink: Sink,
        serde: Serde,
        ready: asyncio.Event,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bootstrap = bootstrap
        self.security = security
        self.sink = sink
        self.sink_ready = ready
        self.serde = serde
        self._head = HeadReader()
        self.events_topic = MONITOR_EVENTS.full_name(prefix)
        self.lifecycle_topic = CONVERSATIONS.full_name(prefix)
        self.postcall_topic = POSTCALL.full_name(prefix)
        self.books: dict[str, Book] = {}
        self.dirty: set[str] = set()
        self.touched: dict[str, float] = {}

    @Service.task
    async def _consume(self) -> None:
        await self.sink_ready.wait()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            **self.security.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            await assign_from_start(
                consumer, [self.events_topic, self.lifecycle_topic, self.postcall_topic]
            )
            last_flush = time.monotonic()
            while not self.should_stop:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, messages in batch.items():
                    for message in messages:
                        if message.value is not None and self._wanted(tp.topic, message.value):
                            await self._fold(tp.topic, message.value)
                if time.monotonic() - last_flush >= FLUSH_SECONDS:
                    await self._flush()
                    last_flush = time.monotonic()
        finally:
            await consumer.stop()

    def _book(self, conversation_id: str) -> Book:
        book = self.books.get(conversation_id)
        if book is None:
            book = self.books[conversation_id] = Book(conversation_id)
        return book

    def _wanted(self, topic: str, value: bytes) -> bool:
        """False for the events no book needs, told from their leading fields (most events:
        skipped without decoding, and without a coroutine per message)."""
        if topic != self.events_topic:
            return True
        head = self._head.read(value)
        return head is None or head.type in TURN_TYPES

    async def _fold(self, topic: str, value: bytes) -> None:
        found = await decoded(self.serde, topic, value)
        if found is None:
            return
        record = found.record
        if found.schema_name == "MonitorEvent" and self.serde.is_current(
            found.schema_id, "MonitorEvent"
        ):
            self._head.learn(found.schema_id)
        cid = record["conversation_id"]
        if topic == self.events_topic:
            changed = record["type"] in TURN_TYPES and self._book(cid).event(record)
        elif topic == self.lifecycle_topic:
            changed = self._book(cid).lifecycle(record)
        else:
            self._book(cid).post_call(record)
            changed = True
        if changed:
            self.dirty.add(cid)
            self.touched[cid] = time.monotonic()

    async def _flush(self) -> None:
        ready = [self.books[c] for c in sorted(self.dirty) if self.books[c].ended_at is not None]
        if ready:
            now = now_micros()
            await self.sink.write_finished(
                [b.transcript() for b in ready], [b.summary(now) for b in ready]
            )
            self.dirty.difference_update(b.conversation_id for b in ready)
        horizon = time.monotonic() - EVICT_SECONDS
        for cid in [c for c, at in self.touched.items() if at < horizon]:
            del self.books[cid], self.touched[cid]  # written, or never ended: nothing to write
            self.dirty.discard(cid)
