"""The backfill beside the webhook receiver: follows the topics, gives every finished
conversation a verdict, and republishes what a gapped one missed (core: ``postcall.backfill``).

It reads ``convai.conversations``, ``convai.monitor.events`` and ``convai.postcall`` from the
beginning (no consumer group: its state is rebuilt from the topics on every start, and verdicts
already given are read back, so a restart repeats nothing but the same keys). When a
conversation ends it first reads every topic up to its end at that moment (whatever the collector
published before the ``ended`` record is then seen); if it had a gap (or a full replay on
connect: ``Seen.suspect``) it then takes the transcript from a ``PostCall`` record when the
webhook came first, else from REST once the status is ``done`` or ``failed`` (404 or no final
status within ``--backfill-wait-seconds``: ``gapped``). A webhook for a conversation of which
nothing is on the topics ``--unseen-seconds`` later was missed by every collector: it is
reconciled as a gapped one (every turn republished).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from convostream.logs import get_logger
from convostream.ops import Health
from convostream.topic_reader import assign_from_start, decoded
from postcall.backfill import COMPLETE, Tracker, repair
from postcall.metrics import WebhookMetrics
from postcall.settings import WebhookSettings
from schemas.clock import now_micros
from schemas.event_types import BACKFILL
from schemas.records import ConversationLifecycle
from schemas.serde import Serde
from schemas.topics import CONVERSATIONS, MONITOR_EVENTS, POSTCALL
from upstream.rest import RetryPolicy, UpstreamClient, UpstreamError
from upstream.urls import conversation_path

FINAL = frozenset({"done", "failed"})
RETRY_SECONDS = 1.0

log = get_logger("backfill")


class Backfill:
    """One backfill per deployment is enough; two give the same keys and verdicts twice."""

    def __init__(
        self,
        settings: WebhookSettings,
        serde: Serde,
        metrics: WebhookMetrics,
        health: Health,
        producer: AIOKafkaProducer,
    ) -> None:
        prefix = settings.topic_prefix
        self.settings = settings
        self.serde = serde
        self.metrics = metrics
        self.health = health
        self.producer = producer
        self.lifecycle_topic = CONVERSATIONS.full_name(prefix)
        self.events_topic = MONITOR_EVENTS.full_name(prefix)
        self.postcall_topic = POSTCALL.full_name(prefix)
        self.tracker = Tracker()
        self.webhook_data: dict[str, str] = {}  # conversation -> PostCall.data
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Condition()  # notified after every fetch

    async def run(self) -> None:
        self.health.declare("backfill")
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            **self.settings.kafka_security().client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        await consumer.start()
        key = self.settings.api_key.get_secret_value() if self.settings.api_key else None
        # One try per poll: ``_details`` polls until its deadline and checks the webhook between.
        upstream = UpstreamClient(
            self.settings.upstream_url,
            key,
            timeout=15,
            retry=RetryPolicy(attempts=1, backoff_base=RETRY_SECONDS, backoff_max=RETRY_SECONDS),
            on_error=lambda _reason: self.metrics.fetch_errors.inc(),
        )
        try:
            await assign_from_start(
                consumer, [self.lifecycle_topic, self.events_topic, self.postcall_topic]
            )
            self.health.set("backfill", True)
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, messages in batch.items():
                    for message in messages:
                        await self._route(tp.topic, message.value, upstream)
                self.metrics.settled.set(self.tracker.settled)
                async with self._progress:
                    self._progress.notify_all()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await upstream.close()
            await consumer.stop()

    async def _route(self, topic: str, value: bytes | None, upstream: UpstreamClient) -> None:
        if value is None:
            return
        found = await decoded(self.serde, topic, value)
        if found is None:
            return
        record = found.record
        cid = record["conversation_id"]
        if topic == self.events_topic:
            self.tracker.event(record)
        elif topic == self.postcall_topic:
            seen = self.tracker.conversations.get(cid)
            if seen is None or seen.verdict is None:  # kept only until the verdict
                self.webhook_data[cid] = record["data"]
            if seen is None:  # no collector reported it (yet)
                self._spawn(self._unseen(cid, upstream))
        elif self.tracker.lifecycle(record):
            self._spawn(self._finish(cid, upstream))
        elif record.get("verdict"):
            self.webhook_data.pop(cid, None)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unseen(self, conversation_id: str, upstream: UpstreamClient) -> None:
        """A webhook for a conversation no collector has reported. The collectors may only be
        behind, so they get ``--unseen-seconds``; if still nothing is known of it then, it lived
        and ended while none could discover it (an upstream outage, no collector running):
        a gap, repaired from the transcript like any other."""
        await asyncio.sleep(self.settings.webhook_unseen_seconds)
        await self._catch_up()
        if self.tracker.missed(conversation_id):
            log.warning("conversation missed by every collector", conversation_id=conversation_id)
            await self._finish(conversation_id, upstream)

    async def _finish(self, conversation_id: str, upstream: UpstreamClient) -> None:
        """Reconcile until it succeeds: the broker may be away for a while (same keys again)."""
        while True:
            try:
                await self._reconcile(conversation_id, upstream)
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning(
                    "backfill of a conversation failed; retrying",
                    conversation_id=conversation_id,
                    error=type(exc).__name__,
                )
                await asyncio.sleep(RETRY_SECONDS)

    async def _reconcile(self, conversation_id: str, upstream: UpstreamClient) -> None:
        await self._catch_up()
        seen = self.tracker.conversations[conversation_id]
        if seen.verdict is not None:  # given before a restart, read back meanwhile
            return
        if not seen.suspect:
            await self._verdict(conversation_id, COMPLETE, None, None)
            return
        details, source = await self._details(conversation_id, upstream)
        result = repair(conversation_id, seen, details, source, now_micros())
        for event in result.events:
            value = self.serde.encode("MonitorEvent", event)
            await self.producer.send_and_wait(
                self.events_topic, value, key=conversation_id.encode()
            )
            self.metrics.backfilled.labels(event["type"]).inc()
        status = details.get("status") if details else None
        await self._verdict(conversation_id, result.verdict, result.detail, status)
        log.info(
            "suspect conversation reconciled",
            conversation_id=conversation_id,
            verdict=result.verdict,
            republished=len(result.events),
        )

    async def _catch_up(self) -> None:
        """Read every topic up to its end as of now: the events the collector published before
        the ``ended`` record, and, after a restart, the verdicts already given."""
        consumer = self._consumer
        assert consumer is not None
        parts = list(consumer.assignment())
        ends = await consumer.end_offsets(parts)
        for tp, end in ends.items():
            while await consumer.position(tp) < end:
                async with self._progress:
                    await self._progress.wait()  # notified after every fetch of the run loop

    async def _details(
        self, conversation_id: str, upstream: UpstreamClient
    ) -> tuple[dict[str, Any] | None, str]:
        """The conversation's final transcript: the webhook's data, else REST (polled)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.webhook_backfill_wait_seconds
        while True:
            data = self.webhook_data.get(conversation_id)
            if data is not None:
                return orjson.loads(data), "webhook"
            try:
                status, body = await upstream.get(conversation_path(conversation_id))
            except UpstreamError:
                status, body = None, None  # counted by the client's ``on_error``
            if status == 404:
                return None, "rest: not found"
            if status == 200 and isinstance(body, dict):
                if body.get("status") in FINAL:
                    return body, "rest"
            elif status is not None:
                self.metrics.fetch_errors.inc()
            if loop.time() > deadline:
                return None, "rest: no final status in time"
            await asyncio.sleep(RETRY_SECONDS)

    async def _verdict(
        self,
        conversation_id: str,
        verdict: str,
        detail: dict[str, Any] | None,
        status: str | None,
    ) -> None:
        seen = self.tracker.conversations[conversation_id]
        record: ConversationLifecycle = {
            "conversation_id": conversation_id,
            "agent_id": seen.agent_id,
            "state": "ended",
            "at": now_micros(),
            "source": BACKFILL,
            "collector_id": None,
            "detail": None if detail is None else orjson.dumps(detail).decode(),
            "status": status,
            "verdict": verdict,
        }
        value = self.serde.encode("ConversationLifecycle", record)
        await self.producer.send_and_wait(self.lifecycle_topic, value, key=conversation_id.encode())
        self.tracker.settle(conversation_id, verdict)
        self.webhook_data.pop(conversation_id, None)
        self.metrics.verdicts.labels(verdict).inc()
