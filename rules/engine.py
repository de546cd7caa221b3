"""The Kafka edge of the rules engine: ``convai.monitor.events`` in, commands and alerts out.

Per fetched batch, in this order:
1. evaluate every event (``rules.core``, sans-I/O), producing each fire's command or alert
   (acks=all) as soon as it is found, without waiting for the acknowledgement;
2. look up the channel of conversations whose rules wait only for it (REST, retried with
   back-off; a conversation that stays unknown keeps its rules pending), and produce those.
Every second a commit cycle runs beside the batches:
3. the offsets read so far and the states their events changed are taken; the fires produced
   until then are awaited, so a state never says "fired" before its command or alert is on the
   topic; the states are written to ``convai.rules.state`` (compacted; same partition number
   as the events, key ``group/conversation``), :data:`STATE_CHUNK` per batch so that no batch
   waits for thousands of writes;
4. once all are acknowledged, a background task commits those offsets (on revocation and
   shutdown, 3 and 4 run at once, in full).
Commands go through a producer of their own: a producer keeps one request in flight per broker
connection, so a command never queues behind a large request of state writes or alerts (which
share the other producer; alerts are many more than commands and less urgent).
A crash before 3 re-reads the events since the last commit with the old state and fires again,
with the same ``command_id``/``alert_id``: the command worker answers ``duplicate`` and never
delivers twice, and alert readers drop the copy. A crash after 3 and before 4 re-reads events
that are already in the state, so nothing fires. On assignment the engine restores the
assigned partitions' states from the changelog, so a restarted or second instance continues
where the previous owner stopped. ``--dry-run`` logs fires and writes nothing (no state, no
offsets).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.partitioner import murmur2

from convostream.assignment import PausedAssignment
from convostream.logs import get_logger
from convostream.ops import Health
from convostream.topic_reader import read_to_end
from rules.actions import alert_record, command_record
from rules.core import Evaluator, Fire, RuleEvent
from rules.head import RuleHeadReader
from rules.metrics import RulesMetrics
from rules.settings import RulesSettings
from rules.spec import Rule, RulesError
from schemas.clock import now_micros
from schemas.event_types import BACKFILL
from schemas.serde import Serde, SerdeError
from schemas.topics import ALERTS, COMMANDS, MONITOR_EVENTS, RULES_STATE
from upstream.conversations import ConversationApi
from upstream.rest import UpstreamError

log = get_logger(__name__)

LOOKUP_ATTEMPTS = 8
LOOKUP_CONCURRENCY = 16
COMMIT_EVERY = 1.0  # seconds between offset commits (a crash re-reads at most this much)
STATE_CHUNK = 200  # rule states written per batch while a commit is under way
EXPIRE_EVERY = 0.5  # seconds between wall-clock checks of silences


@dataclass
class _Pending:
    """A conversation whose channel is still to be looked up."""

    due: float = 0.0
    attempts: int = 0


@dataclass
class _Cycle:
    """A commit under way: the offsets it covers, the states still to write, the writes."""

    offsets: dict[TopicPartition, int]
    todo: list[str]
    writes: list[asyncio.Future[Any]] = field(default_factory=list)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: RulesEngine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.engine.health.set("assignment", False, "rebalancing")
        async with self.engine.busy:  # the batch in hand is finished and committed first
            if not self.engine.dry_run:
                await self.engine.flush()
            self.engine.release({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # no heartbeat until this returns (convostream.assignment): the loop restores them
        self.engine.assigned(assigned)


class RulesEngine:
    """One engine process; ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: RulesSettings,
        rules: Iterable[Rule],
        key: str,
        serde: Serde,
        metrics: RulesMetrics,
        health: Health,
        load: Callable[[], tuple[Rule, ...]] | None = None,
    ) -> None:
        assert settings.commands_issuer is not None
        self.settings = settings
        self.issuer = settings.commands_issuer
        self._key = key
        self._key_id = settings.commands_key_id
        self.serde = serde
        self.metrics = metrics
        self.health = health
        self._load = load
        self.evaluator = Evaluator(rules)
        self.metrics.rules.set(len(self.evaluator.rules))
        prefix = settings.topic_prefix
        self.events_topic = MONITOR_EVENTS.full_name(prefix)
        self.commands_topic = COMMANDS.full_name(prefix)
        self.alerts_topic = ALERTS.full_name(prefix)
        self.state_topic = RULES_STATE.full_name(prefix)
        self.group = settings.rules_group_id
        self.dry_run = settings.rules_dry_run
        api_key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.api = ConversationApi(settings.upstream_url, api_key, settings.rules_lookup_timeout)
        self.head = RuleHeadReader()
        self.busy = asyncio.Lock()
        self._unrestored = PausedAssignment()  # assigned, state not yet read
        self.partition_of: dict[str, int] = {}
        self.pending: dict[str, _Pending] = {}
        self._partitions: dict[str, int] = {}
        self._offsets: dict[TopicPartition, int] = {}
        self._committing: asyncio.Task[None] | None = None
        self._cycle: _Cycle | None = None
        self._unacked: list[asyncio.Future[Any]] = []  # fires produced, not yet acknowledged
        self._committed_at = time.monotonic()
        self._expire_at = 0.0
        self._producer: AIOKafkaProducer | None = None  # rule states and alerts
        self._commands: AIOKafkaProducer | None = None  # commands only
        self._consumer: AIOKafkaConsumer | None = None

    # ----- lifecycle ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        bootstrap = self.settings.kafka_bootstrap
        security = self.settings.kafka_security().client_kwargs()
        self._producer, self._commands = (
            AIOKafkaProducer(
                bootstrap_servers=bootstrap,
                **security,
                enable_idempotence=True,
                acks="all",
                linger_ms=0,
            )
            for _ in range(2)
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            **security,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.settings.fetch_wait_ms(self.settings.rules_fetch_wait_ms),
            session_timeout_ms=self.settings.group_session_timeout_ms,
            heartbeat_interval_ms=self.settings.group_heartbeat_ms(),
        )
        try:
            await self._producer.start()
            await self._commands.start()
            await self._check_partitions()
            self._consumer.subscribe([self.events_topic], listener=_Rebalance(self))
            await self._consumer.start()
            log.info(
                "rules engine started",
                group=self.group,
                issuer=self.issuer,
                rules=len(self.evaluator.rules),
                dry_run=self.dry_run,
            )
            while not stop.is_set():
                if self._unrestored:
                    async with self.busy:
                        await self._unrestored.rebuild(
                            self._consumer, lambda tps: self.restore([tp.partition for tp in tps])
                        )
                batch = await self._consumer.getmany(timeout_ms=100)
                async with self.busy:
                    await self.handle(batch)
            if not self.dry_run:
                await self.flush()
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
            await self._consumer.stop()
            await self._producer.stop()
            await self._commands.stop()
            await self.api.close()
            log.info("rules engine stopped", group=self.group)

    async def _check_partitions(self) -> None:
        assert self._producer is not None
        events = len(await self._producer.partitions_for(self.events_topic))
        state = len(await self._producer.partitions_for(self.state_topic))
        if events != state:
            raise RuntimeError(
                f"{self.state_topic} needs as many partitions as {self.events_topic} "
                f"({state} != {events})"
            )

    def reload(self) -> None:
        """SIGHUP: read the rules file again; a bad file keeps the rules in force."""
        if self._load is None:
            return
        try:
            rules = self._load()
        except RulesError as exc:
            self.metrics.reloads.labels("error").inc()
            log.error("rules reload failed; keeping the current rules", error=str(exc))
            return
        self.evaluator.replace_rules(rules)
        self.metrics.rules.set(len(rules))
        self.metrics.reloads.labels("ok").inc()
        log.info("rules reloaded", rules=len(rules))

    # ----- assignment -----------------------------------------------------------------------
    def release(self, partitions: set[int]) -> None:
        gone = [c for c, p in self.partition_of.items() if p in partitions]
        self.evaluator.forget(gone)
        for conversation in gone:
            del self.partition_of[conversation]
            self.pending.pop(conversation, None)
        self.metrics.conversations.set(len(self.evaluator.states))

    def assigned(self, assigned: list[TopicPartition]) -> None:
        """A new assignment: its partitions are paused until :meth:`restore` has run."""
        assert self._consumer is not None
        self._unrestored.assigned(self._consumer, assigned)

    async def restore(self, partitions: list[int]) -> None:
        """Rebuild the assigned partitions' states from the changelog."""
        started = time.monotonic()
        self.release(set(partitions))
        prefix = f"{self.group}/".encode()
        restored = 0
        async for record in read_to_end(
            self.settings.kafka_bootstrap,
            self.state_topic,
            partitions,
            self.settings.kafka_security(),
        ):
            if record.value is None or not (record.key or b"").startswith(prefix):
                continue
            try:
                name, state, _ = await self.serde.resolve(record.value)
            except SerdeError as exc:
                log.warning("unreadable rule state skipped", error=str(exc))
                continue
            if name != "RuleState":
                continue
            conversation = state["conversation_id"]
            self.evaluator.restore(conversation, state)
            self.partition_of[conversation] = record.partition
            if self.evaluator.needs_channel(conversation):
                self.pending.setdefault(conversation, _Pending())
            restored += 1
        self.metrics.conversations.set(len(self.evaluator.states))
        self.health.set("assignment", True)
        log.info(
            "rules partitions assigned",
            partitions=sorted(partitions),
            states_read=restored,
            seconds=round(time.monotonic() - started, 3),
        )

    # ----- one batch ------------------------------------------------------------------------
    async def handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        assert self._consumer is not None
        started = time.perf_counter()
        offsets: dict[TopicPartition, int] = {}
        assignment = self._consumer.assignment()
        evaluator = self.evaluator
        timed = bool(evaluator.timed)
        # bound once per batch; the rules index (by_type) is read per event: a SIGHUP reload
        # may replace it while a fire is being produced
        read, observe, dirty = self.head.read, evaluator.observe, evaluator.dirty
        count_match = self.metrics.matches.inc
        events = 0
        for tp, records in batch.items():
            if tp not in assignment or not records:
                continue  # revoked meanwhile: its new owner reads it again
            offsets[tp] = records[-1].offset + 1
            for record in records:
                if record.value is None:
                    continue  # a tombstone
                events += 1
                head = read(record.value, evaluator.by_type, timed)
                if isinstance(head, str):
                    continue  # no rule for its type
                event = head if head is not None else await self._decode(record)
                if event is None:
                    continue
                conversation = event.conversation_id
                outcome = observe(event)
                if outcome.matched or conversation in dirty:
                    self.partition_of[conversation] = tp.partition
                    for name in outcome.matched:
                        count_match(name)
                    if evaluator.needs_channel(conversation):
                        self.pending.setdefault(conversation, _Pending())
                for fire in outcome.fires:  # produced now, not after the rest of the batch
                    await self._send(fire, event.received_at)
        if events:
            self.metrics.events.inc(events)
            self.metrics.evaluation.observe(time.perf_counter() - started)
        if self.evaluator.deadlines and time.monotonic() >= self._expire_at:
            self._expire_at = time.monotonic() + EXPIRE_EVERY
            clock = now_micros()
            grace = int(self.settings.rules_silence_grace * 1_000_000)
            for fire in self.evaluator.expire(clock - grace):
                await self._send(fire, clock)
        if self.pending:
            for fire, at in await self._lookups():
                await self._send(fire, at)
        if self.dry_run:
            self.evaluator.take_dirty()
            return
        self._offsets.update(offsets)
        self.metrics.conversations.set(len(self.evaluator.states))
        due = time.monotonic() - self._committed_at >= COMMIT_EVERY
        if due and self._cycle is None and (self._committing is None or self._committing.done()):
            self._start_cycle()
        if self._cycle is not None:
            await self._write_some(STATE_CHUNK)

    def _start_cycle(self) -> None:
        """Take the offsets read so far and the states changed by their events, to write."""
        self._committed_at = time.monotonic()
        self._cycle = _Cycle(self._offsets, self.evaluator.take_dirty())
        self._offsets = {}

    async def _write_some(self, limit: int | None) -> None:
        """Write up to ``limit`` states of the cycle (all: None); the last starts its commit."""
        assert self._producer is not None
        assert self._cycle is not None
        if self._unacked:  # no state says "fired" before its command or alert is on the topic
            unacked, self._unacked = self._unacked, []
            await asyncio.gather(*unacked)
        cycle = self._cycle
        now = now_micros()
        chunk = cycle.todo[-limit:] if limit is not None else cycle.todo
        del cycle.todo[len(cycle.todo) - len(chunk) :]
        for conversation in chunk:
            state = self.evaluator.states.get(conversation)
            partition = self.partition_of.get(conversation)
            if state is None or partition is None:
                continue
            cycle.writes.append(
                await self._producer.send(
                    self.state_topic,
                    self.serde.encode("RuleState", state.to_record(conversation, now)),
                    key=f"{self.group}/{conversation}".encode(),
                    partition=partition,
                )
            )
        if not cycle.todo:
            self._cycle = None
            self._committing = asyncio.create_task(self._commit(cycle.writes, cycle.offsets))

    async def flush(self) -> None:
        """Write every changed state and commit the offsets they cover, now (revocation and
        shutdown); between those, :meth:`handle` does it every :data:`COMMIT_EVERY` seconds,
        :data:`STATE_CHUNK` states per batch so that no batch waits for them all."""
        if self._cycle is not None:  # finish the cycle under way first: commits stay in order
            await self._write_some(None)
        await self._committed()
        self._start_cycle()
        await self._write_some(None)
        await self._committed()

    async def _committed(self) -> None:
        if self._committing is not None:
            await self._committing
            self._committing = None

    async def _commit(
        self, writes: list[asyncio.Future[Any]], offsets: dict[TopicPartition, int]
    ) -> None:
        """Wait for the state writes, then commit the offsets read before they were taken."""
        assert self._consumer is not None
        await asyncio.gather(*writes)
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # a rebalance took the partitions: their next owner re-reads; ids de-duplicate
            log.warning("offset commit failed", error=str(exc))

    async def _decode(self, record: Any) -> RuleEvent | None:
        """Full decode, for values the head reader does not take (older schema ids, bad data)."""
        try:
            name, value, schema_id = await self.serde.resolve(record.value)
        except SerdeError as exc:
            log.warning(
                "unreadable monitor event skipped",
                partition=record.partition,
                offset=record.offset,
                error=str(exc),
            )
            return None
        if name == "MonitorEvent" and self.serde.is_current(schema_id, name):
            self.head.learn(schema_id)  # its next events are read from their leading fields
        if name != "MonitorEvent" or value["type"] not in self.evaluator.by_type:
            return None
        return RuleEvent(
            value["event_key"],
            value["conversation_id"],
            value["agent_id"],
            value["type"],
            value["raw"],
            value["received_at"],
            value.get("source") == BACKFILL,
        )

    async def _lookups(self) -> list[tuple[Fire, int]]:
        """Channel lookups that are due, a few at a time; fires of rules that waited for one."""
        now = time.monotonic()
        due = [c for c, p in self.pending.items() if p.due <= now]
        if not due:
            return []
        gate = asyncio.Semaphore(LOOKUP_CONCURRENCY)

        async def one(conversation: str) -> tuple[str, bool | None, str, str]:
            """(conversation, chat, metric result, problem)."""
            async with gate:
                try:
                    info = await self.api.conversation(conversation)
                except UpstreamError as exc:
                    return conversation, None, "error", str(exc)
                if info.chat is None:
                    problem = f"no metadata.text_only (status {info.status})"
                    return conversation, None, "unknown", problem
                return conversation, info.chat, "chat" if info.chat else "voice", ""

        fires: list[tuple[Fire, int]] = []
        at = now_micros()
        for conversation, chat, result, problem in await asyncio.gather(*(one(c) for c in due)):
            self.metrics.lookups.labels(result).inc()
            if chat is None:
                pending = self.pending[conversation]
                pending.attempts += 1
                if pending.attempts >= LOOKUP_ATTEMPTS:
                    del self.pending[conversation]
                    log.warning(
                        "channel unknown; rules on the channel stay pending",
                        conversation_id=conversation,
                        reason=problem,
                    )
                else:
                    pending.due = time.monotonic() + min(30.0, 0.25 * 2**pending.attempts)
                continue
            del self.pending[conversation]
            fires.extend((f, at) for f in self.evaluator.set_channel(conversation, chat))
        return fires

    async def _send(self, fire: Fire, received_at: int) -> None:
        """Log and produce one fire, without waiting: its delivery joins :attr:`_unacked`."""
        assert self._producer is not None
        rule = fire.rule
        action = rule.then.action()
        if fire.backfill and rule.then.command is not None:
            # the conversation is over: a command would be rejected as not live
            self.metrics.skipped.inc(rule.name, "backfill")
            log.info(
                "rule fired on a backfilled event; command not sent",
                rule=rule.name,
                conversation_id=fire.conversation_id,
                fire_id=fire.fire_id,
                event_key=fire.event_key,
            )
            return
        self.metrics.fires.inc(rule.name, action)
        log.info(
            "rule would fire (dry run)" if self.dry_run else "rule fired",
            rule=rule.name,
            action=action,
            conversation_id=fire.conversation_id,
            fire_id=fire.fire_id,
            event_key=fire.event_key,
        )
        if self.dry_run:
            return
        now = now_micros()
        key = fire.conversation_id.encode("utf-8")
        if rule.then.command is not None:
            record = command_record(
                fire,
                issuer=self.issuer,
                key=self._key,
                key_id=self._key_id,
                ttl=self.settings.commands_ttl,
                now=now,
            )
            value = self.serde.encode("ControlCommand", record)
            future = await self._send_alone(self.commands_topic, key, value)
        else:
            value = self.serde.encode("Alert", alert_record(fire, now=now))
            future = await self._producer.send(self.alerts_topic, value, key=key)
        self._unacked.append(future)
        future.add_done_callback(lambda _: self._acked(received_at))

    def _acked(self, received_at: int) -> None:
        self.metrics.fire_latency.observe(max(0, now_micros() - received_at) / 1e6)

    async def _send_alone(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[Any]:
        """Produce one record as its own batch, to the partition the default partitioner picks.

        Commands are few and latency-critical. Tansu 0.6 (the embedded broker) shows consumers only
        the first record of a multi-record batch until another batch reaches the partition, so
        batching them would hold commands back there; on Kafka this costs nothing but a batch
        header per command.
        """
        assert self._commands is not None
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = len(await self._commands.partitions_for(topic))
        builder = self._commands.create_batch()
        builder.append(key=key, value=value, timestamp=None)
        builder.close()
        partition = (murmur2(key) & 0x7FFFFFFF) % partitions
        future: asyncio.Future[Any] = await self._commands.send_batch(
            builder, topic, partition=partition
        )
        return future
