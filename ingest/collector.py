"""A collector process: group membership, discovery, monitors and the publisher, wired up.

Ownership: the process joins a consumer group on ``convai.conversations``; the partitions it is
given decide which conversations it monitors (:mod:`ingest.ownership`). On a rebalance the
monitors of revoked partitions pause; once everything they handed on is acknowledged, a
hand-over record per conversation carries the replay history to whoever gets the partition, and
the offsets are committed. A collector that dies hands nothing over, so every monitor also
writes periodic checkpoints of what the broker acknowledged: the next owner seeds from them,
keeps the event keys, and lets the 100-frame replay fill in the rest (or reports a gap). When
the assignment arrives, monitors of partitions kept resume (the eager protocol revokes
everything first) and the others close. Shutdown does the same for all.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from convostream.logs import get_logger
from convostream.ops import Health
from convostream.runtime import unless_cancelled_here
from ingest.discovery import IN_PROGRESS, RestClient
from ingest.lifecycle import checkpoint, observe, record, released
from ingest.metrics import Metrics
from ingest.monitor import Context, Ending, Monitor
from ingest.ownership import Conversation, Ledger, partition_for
from ingest.publisher import Outgoing, Publisher, offer_again
from ingest.recovery import ReadBack, read_back
from ingest.replay import DIGEST_SIZE
from ingest.settings import CollectorSettings
from schemas.registry import registry_from_settings
from schemas.serde import Serde, SerdeError
from schemas.topics import CATALOGUE, CONVERSATIONS, MONITOR_DLQ, MONITOR_EVENTS
from upstream.urls import websocket_base

log = get_logger("ingest.collector")

HANDOVER_TIMEOUT = 10.0  # seconds to flush on a rebalance before giving partitions up anyway
COMMIT_EVERY = 2.0
BROKER_CALL_TIMEOUT = 2.0  # seconds a reading-loop pass waits for an offset answer
# Lifecycle records read, or monitors checkpointed, between two turns of the event loop: a pass
# over every monitor (a checkpoint each, and reading them all back) takes tens of milliseconds
# for 1,000 of them, a stall that held every socket's frames back and set the latency tail.
YIELD_EVERY = 100


class Collector(ConsumerRebalanceListener):  # type: ignore[misc]
    """Everything one ``convostream collect`` process runs."""

    def __init__(
        self, settings: CollectorSettings, metrics: Metrics, health: Health | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health or Health("collector")
        self.collector_id = settings.resolved_id()
        prefix = settings.topic_prefix
        self.topic = CONVERSATIONS.full_name(prefix)
        self.events_topic = MONITOR_EVENTS.full_name(prefix)
        self.dlq_topic = MONITOR_DLQ.full_name(prefix)
        self.monitors: dict[str, Monitor] = {}
        self._paused: dict[int, list[Monitor]] = {}
        self._committed: dict[int, int] = {}
        self._lifecycle_partitions = CONVERSATIONS.partitions
        self.ledger = Ledger(CONVERSATIONS.partitions)
        self.consumer: AIOKafkaConsumer | None = None
        self.publisher: Publisher | None = None
        self.ctx: Context | None = None
        key = settings.api_key.get_secret_value() if settings.api_key else None
        self._api_key = key
        self.rest = RestClient(
            settings.upstream_url,
            key,
            metrics,
            settings.collector_connect_timeout,
            settings.collector_backoff_base,
            settings.collector_backoff_max,
        )

    # ----- wiring ---------------------------------------------------------------------------
    def _producer(self) -> AIOKafkaProducer:
        s = self.settings
        compression = None if s.collector_compression == "none" else s.collector_compression
        return AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            **s.kafka_security().client_kwargs(),
            client_id=f"collector-{self.collector_id}",
            enable_idempotence=True,
            acks="all",
            linger_ms=s.collector_linger_ms,
            max_batch_size=s.collector_max_batch_bytes,
            max_request_size=2 * s.collector_max_frame_bytes + 65536,
            compression_type=compression,
        )

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        registry = registry_from_settings(s.schema_registry_url, access=s.registry_access())
        await registry.prepare(CATALOGUE, s.topic_prefix)
        serde = Serde(registry)
        publisher = Publisher(
            self._producer,
            self.metrics,
            s.collector_buffer_records,
            s.collector_buffer_bytes,
            s.collector_linger_ms / 1000.0,
        )
        await publisher.start()
        self.publisher = publisher
        self._lifecycle_partitions = await publisher.partitions(self.topic)
        self.ledger = Ledger(self._lifecycle_partitions)
        self.ctx = Context(
            collector_id=self.collector_id,
            ws_base=websocket_base(s.upstream_url),
            api_key=self._api_key,
            serde=serde,
            publisher=publisher,
            metrics=self.metrics,
            rest=self.rest,
            events_topic=self.events_topic,
            events_partitions=await publisher.partitions(self.events_topic),
            dlq_topic=self.dlq_topic,
            dlq_partitions=await publisher.partitions(self.dlq_topic),
            lifecycle=self.publish_lifecycle,
            connect_timeout=s.collector_connect_timeout,
            ping_interval=s.collector_ping_interval,
            backoff_base=s.collector_backoff_base,
            backoff_max=s.collector_backoff_max,
            max_frame_bytes=s.collector_max_frame_bytes,
        )
        session = s.group_session_timeout_ms
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            **s.kafka_security().client_kwargs(),
            group_id=s.collector_group_id,
            client_id=f"collector-{self.collector_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session,
            heartbeat_interval_ms=s.group_heartbeat_ms(),
            rebalance_timeout_ms=int(HANDOVER_TIMEOUT * 1000) + session,
        )
        consumer.subscribe([self.topic], listener=self)
        self.consumer = consumer  # the first assignment may arrive while start() runs
        await consumer.start()
        log.info("collector started", collector_id=self.collector_id, group=s.collector_group_id)
        tasks = [
            asyncio.create_task(self._consume(serde), name="consume"),
            asyncio.create_task(self._discover(), name="discover"),
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._checkpoint_loop(), name="checkpoint"),
        ]
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper:
                    task.result()  # a loop that ended on its own has failed: say why
        finally:
            stopper.cancel()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._shutdown()
            await registry.close()

    async def _shutdown(self) -> None:
        """Close every socket, publish hand-overs, flush, commit, leave the group."""
        log.info("collector stopping", monitors=len(self.monitors))
        owned = list(self.ledger.owned)
        await self._release(owned)
        await self._close_paused(set())
        if self.consumer is not None:
            with contextlib.suppress(KafkaError):
                await unless_cancelled_here(self.consumer.stop())
        if self.publisher is not None:
            await self.publisher.close(HANDOVER_TIMEOUT)
        await self.rest.close()
        log.info("collector stopped")

    # ----- lifecycle records ----------------------------------------------------------------
    def publish_lifecycle(self, value: dict[str, Any]) -> None:
        assert self.publisher is not None
        assert self.ctx is not None
        cid = value["conversation_id"]
        self.publisher.offer(
            Outgoing(
                self.topic,
                partition_for(cid, self._lifecycle_partitions),
                cid.encode("utf-8"),
                self.ctx.serde.encode("ConversationLifecycle", value),
                0.0,
            )
        )

    # ----- group membership -----------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Pause, flush, hand over and commit; the monitors close once we know what we keep."""
        self.health.set("assignment", False, "rebalancing")
        await self._release([tp.partition for tp in revoked])

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self.consumer
        assert consumer is not None
        kept = {tp.partition for tp in assigned}
        for partition in kept & set(self._paused):
            for monitor in self._paused.pop(partition):
                monitor.resume()
        await self._close_paused(kept)
        for partition in list(self.ledger.owned):
            if partition not in kept:
                self.ledger.revoke(partition)
        fresh = [tp for tp in assigned if tp.partition not in self.ledger.owned]
        for tp in fresh:  # end offsets are asked by the reading loop, which retries
            self.ledger.assign(tp.partition)
        self.metrics.partitions.set(len(kept))
        self.health.set("assignment", True)  # joined; no partitions is fine beyond 12 collectors
        log.info("partitions assigned", partitions=sorted(kept), new=len(fresh))

    async def _release(self, partitions: list[int]) -> None:
        if not partitions or self.publisher is None:
            return
        wanted = set(partitions)
        for partition in wanted:  # no monitor may start on them until we know what we keep
            self._paused.setdefault(partition, [])
        paused = [m for m in self.monitors.values() if self._partition(m) in wanted]
        for monitor in paused:
            monitor.pause()
            self._paused.setdefault(self._partition(monitor), []).append(monitor)
        if not await self.publisher.flush(HANDOVER_TIMEOUT):
            log.error("hand-over flush timed out", records=self.publisher.records)
        hand_overs: dict[int, list[dict[str, Any]]] = {}
        for monitor in paused:
            hand_overs.setdefault(self._partition(monitor), []).append(
                released(
                    monitor.conversation_id,
                    monitor.agent_id,
                    self.collector_id,
                    monitor.reader.history(),
                    monitor.events_reached(monitor.last),
                    monitor.reader.lasts(),
                )
            )
        # With CONVOSTREAM_BROKER_COMPAT=tansu the last record of each partition goes alone:
        # Tansu 0.6 hides the tail of a multi-record batch from consumers until another batch
        # arrives. Kafka needs no such care.
        last = 1 if self.settings.tansu else 0
        for values in hand_overs.values():
            for value in values[: len(values) - last]:
                self.publish_lifecycle(value)
        if last:
            await self.publisher.flush(HANDOVER_TIMEOUT)
            for values in hand_overs.values():
                self.publish_lifecycle(values[-1])
        await self.publisher.flush(HANDOVER_TIMEOUT)
        await self._commit(partitions)
        log.info("partitions released", partitions=sorted(wanted), monitors=len(paused))

    async def _close_paused(self, kept: set[int]) -> None:
        closing = [m for p, ms in self._paused.items() if p not in kept for m in ms]
        for partition in [p for p in self._paused if p not in kept]:
            del self._paused[partition]
        for monitor in closing:
            self.monitors.pop(monitor.conversation_id, None)
        await asyncio.gather(*(m.stop() for m in closing))
        self.metrics.monitored.set(len(self.monitors))

    def _partition(self, monitor: Monitor) -> int:
        return partition_for(monitor.conversation_id, self._lifecycle_partitions)

    # ----- reading the conversations topic --------------------------------------------------
    async def _consume(self, serde: Serde) -> None:
        consumer = self.consumer
        assert consumer is not None
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            handled = 0
            for tp, messages in batch.items():
                for message in messages:
                    handled += 1
                    if handled % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                    if message.value is None:
                        continue
                    try:
                        _, value, _ = await serde.resolve(message.value)
                        seen = observe(value)
                    except (SerdeError, KeyError) as exc:
                        log.warning("unreadable lifecycle record", error=str(exc))
                        continue
                    self.ledger.apply(tp.partition, message.offset, seen)
            await self._reconcile()

    async def _reconcile(self) -> None:
        """Start monitors for live conversations of partitions read up to their hand-overs.

        Every broker call here is retried on the next pass and bounded in time, so a failed
        or slow answer delays a take-over by one pass instead of leaving a partition unread.
        """
        consumer = self.consumer
        assert consumer is not None
        waiting = self.ledger.waiting()
        if waiting:
            tps = [TopicPartition(self.topic, p) for p in waiting]
            try:
                async with asyncio.timeout(BROKER_CALL_TIMEOUT):  # wait_for may lose a cancel
                    ends = await consumer.end_offsets(tps)
            except (KafkaError, TimeoutError) as exc:
                log.warning("end offsets unavailable; retrying", error=type(exc).__name__)
                ends = {}
            for tp, end in ends.items():
                self.ledger.catch_up(tp.partition, end)
        starting: dict[str, tuple[int, Conversation]] = {}
        for partition in list(self.ledger.owned):
            if partition in self._paused:
                continue
            tp = TopicPartition(self.topic, partition)
            try:
                async with asyncio.timeout(BROKER_CALL_TIMEOUT):
                    position = await consumer.position(tp)
            except (KafkaError, AssertionError, KeyError, TimeoutError):
                continue  # not assigned any more (a rebalance is under way), or not known yet
            if partition in self._paused or not self.ledger.ready(partition, position):
                continue  # paused while we awaited: a hand-over started
            for cid, conv in self.ledger.owned[partition].live.items():
                if cid in self.monitors:
                    conv.forget_history()  # our own checkpoints: only a new owner needs them
                else:
                    starting[cid] = (partition, conv)
        if starting:
            await self._start_monitors(starting)

    async def _start_monitors(self, starting: dict[str, tuple[int, Conversation]]) -> None:
        """Start monitors, after reading back what their previous owners published beyond
        the histories recorded (:mod:`ingest.recovery`). If the broker cannot answer, the next
        pass tries again; if it refuses for good, they start from the recorded histories."""
        assert self.ctx is not None
        wanted = {cid: u for cid, (_, conv) in starting.items() if (u := conv.unrecorded())}
        read: dict[str, ReadBack] = {}
        if wanted:
            s = self.settings
            try:
                read = await read_back(
                    s.kafka_bootstrap,
                    s.kafka_security(),
                    (self.events_topic, self.ctx.events_partitions),
                    (self.ctx.dlq_topic, self.ctx.dlq_partitions),
                    self.ctx.serde,
                    wanted,
                    {cid: conv.history for cid, (_, conv) in starting.items()},
                )
            except KafkaError as exc:
                if offer_again(exc):  # the broker is away or slow: the next pass tries again
                    log.warning("published records unreadable; retrying", error=type(exc).__name__)
                    return
                # refused for good (no READ right on the events topic): start from the histories
                # recorded, as a collector that cannot read back would
                log.error(
                    "published records cannot be read back; records published after the last "
                    "checkpoint may be published again",
                    topic=self.events_topic,
                    error=type(exc).__name__,
                )
        for cid, (partition, conv) in starting.items():
            state = self.ledger.owned.get(partition)
            if partition in self._paused or state is None or state.live.get(cid) is not conv:
                continue  # released, revoked or ended while we read
            if cid in self.monitors:
                continue
            history, back = conv.history, read.get(cid)
            monitor = Monitor(self.ctx, cid, conv.agent_id, history, self._ended, back, conv.lasts)
            conv.forget_history()
            self.monitors[cid] = monitor
            monitor.start()
        self.metrics.monitored.set(len(self.monitors))

    def _ended(self, monitor: Monitor, ending: Ending) -> None:
        cid = monitor.conversation_id
        if self.monitors.get(cid) is monitor:
            del self.monitors[cid]
        self.metrics.monitored.set(len(self.monitors))
        self.metrics.ended.labels(ending.how).inc()
        detail = {"how": ending.how, "reason": ending.detail}
        if ending.how == "ended_while_disconnected":
            self.metrics.gaps.inc()
            log.warning("conversation ended while disconnected", conversation_id=cid)
            self.publish_lifecycle(
                record(
                    cid,
                    "gap",
                    agent_id=monitor.agent_id,
                    collector_id=self.collector_id,
                    detail={"reason": ending.how, **detail},
                    status=ending.status,
                )
            )
        else:
            log.info("conversation ended", conversation_id=cid, how=ending.how)
        self.ledger.ended(cid)
        self.publish_lifecycle(
            record(
                cid,
                "ended",
                agent_id=monitor.agent_id,
                collector_id=self.collector_id,
                detail=detail,
                status=ending.status,
            )
        )

    # ----- discovery and commits ------------------------------------------------------------
    async def _discover(self) -> None:
        s = self.settings
        agents: tuple[str | None, ...] = s.agent_filter() or (None,)
        while True:
            for agent in agents:
                try:
                    async for conv in self.rest.in_progress(agent, s.collector_page_size):
                        self._discovered(conv.conversation_id, conv.agent_id, conv.status)
                except ConnectionError as exc:
                    log.warning("discovery poll failed", error=str(exc))
            await asyncio.sleep(s.collector_poll_interval)

    def _discovered(self, cid: str, agent_id: str | None, status: str) -> None:
        if status != IN_PROGRESS or cid in self.monitors:
            return
        partition = self.ledger.partition(cid)
        state = self.ledger.owned.get(partition)
        if state is None or not state.ready or partition in self._paused:
            return
        if not self.ledger.discovered(cid, agent_id):
            return
        self.publish_lifecycle(
            record(
                cid,
                "discovered",
                agent_id=agent_id,
                source="rest",
                collector_id=self.collector_id,
                status=status,
            )
        )

    async def _checkpoint_loop(self) -> None:
        """Every interval, checkpoint each monitor's frames whose records were acknowledged.

        A snapshot (history size and the last records offered) is taken one interval before
        it is written, and written only once those records are acknowledged: records of one
        conversation are acknowledged in order, so everything before them is on the broker.
        """
        snapshots: dict[str, tuple[int, Outgoing | None, Outgoing | None]] = {}
        while True:
            await asyncio.sleep(self.settings.collector_checkpoint_interval)
            taken: dict[str, tuple[int, Outgoing | None, Outgoing | None]] = {}
            for n, (cid, monitor) in enumerate(list(self.monitors.items()), 1):
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                if self.monitors.get(cid) is not monitor:
                    continue  # ended or released while the loop turned
                snap = snapshots.get(cid)
                if snap is not None and all(r is None or r.acked for r in snap[1:]):
                    start, size = monitor.checkpointed, snap[0]
                    if size > start:
                        history = monitor.reader.history(start)[: (size - start) * DIGEST_SIZE]
                        reached = monitor.events_reached(snap[1])
                        self.publish_lifecycle(
                            checkpoint(
                                cid,
                                monitor.agent_id,
                                self.collector_id,
                                start,
                                history,
                                reached,
                                monitor.reader.lasts(start, size),
                            )
                        )
                        monitor.checkpointed = size
                    snap = None
                if snap is None:
                    snap = (monitor.reader.size, monitor.last, monitor.last_dlq)
                taken[cid] = snap
            snapshots = taken

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(COMMIT_EVERY)
            await self._commit(list(self.ledger.owned))

    async def _commit(self, partitions: list[int]) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        offsets: dict[TopicPartition, int] = {}
        for partition in partitions:
            tp = TopicPartition(self.topic, partition)
            try:
                position = await consumer.position(tp)
            except (KafkaError, AssertionError, KeyError):
                continue
            offset = self.ledger.commit_offset(partition, position)
            if self._committed.get(partition) != offset:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("offset commit failed", error=type(exc).__name__)
            return
        for tp, offset in offsets.items():
            self._committed[tp.partition] = offset
