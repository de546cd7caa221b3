"""The Faust worker: conversation metrics, agent windows, SQL sink, lookups.

Faust's per-message path (a task pair per message in the fetcher, then conductor, event, queue
and stream per message) costs more than all of the metric work, so the hot topics skip it:

1. ``convai.monitor.events`` and ``convai.conversations`` (both keyed and partitioned by
   conversation) are subscribed through Faust's conductor, but
   :func:`processors.faust_glue.replace_drain` takes the place of the consumer's fetch loop:
   it hands each ``getmany`` batch of those topics to the conversation stage whole and acks
   the messages afterwards (other topics go through Faust's normal per-message path; every
   Faust internal used is in :mod:`processors.faust_glue`). Per batch it reads the needed
   fields of the raw Avro bytes (:class:`processors.events.HeadReader`; a full decode only for
   tool responses and other records), folds them into each conversation's order-independent
   state (:mod:`processors.conversation`), then, in one producer round trip with the SQL
   upsert running alongside, forwards the first-seen events to the agent-keyed internal topic
   (one record per agent and batch) and emits the touched rows to the compacted
   ``convai.metrics.conversations``; only then does it write each touched state once to the
   ``conversations`` table (changelogged). The fetch wait is shortened (see
   :func:`processors.faust_glue.shorten_fetch_wait`): it, not the work, set the SQL latency
   tail.
2. the agent-keyed internal topic (one record per agent and batch) is fetched the same way,
   not through a Faust agent (whose stream queues Faust empties when recovery resumes the
   flow, dropping what was fetched meanwhile: see :func:`~processors.faust_glue.replace_drain`).
   Each batch of it is folded into per-agent window state (:mod:`processors.windows`); late
   events go to ``convai.events.late``, final windows to ``convai.metrics.agent-windows`` and
   SQL. Every worker sends one tick per internal partition every second, reporting the source
   partitions it has forwarded up to their high-water marks; idle windows close by the least
   such time over all source partitions (:class:`processors.windows.SourceProgress`), in the
   batch of the internal partition the tick is on, where the table knows which partition it
   writes to. A restarted or lagging worker thus holds idle closing back until it has caught
   up instead of turning its backlog into late events.

Each stage is a fold without I/O (:mod:`processors.stages`) from the batch and the states it
touches to a :class:`~processors.plans.Plan`; this module reads the batch, loads the states
and hands the plan to :func:`processors.plans.apply` (outputs, then table writes, then
metrics). Both stages ack a batch only after its plan is applied, and a commit first waits
until every table write is stored (:func:`processors.faust_glue.complete_flush`), so a
committed offset always lies behind state that is in the changelog; after a crash the local
stores are rebuilt from the changelogs alone (:mod:`processors.local_state`).
States are idempotent (re-applying events changes nothing; re-forwarded events are dropped by
source offset), so replaying what came after the last commit is harmless: at-least-once
delivery gives exactly-once results.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import faust
import orjson
from faust.auth import SASLCredentials, SSLCredentials
from faust.types import TP
from faust.types.auth import CredentialsT as Credentials
from mode import Service

from convostream.broker import create_missing
from convostream.cluster import default_replication_sync
from convostream.kafka_security import KafkaSecurity
from convostream.logs import get_logger
from processors import forward, plans, stages
from processors.conversation import ConversationState, last_touched, stored_chunks
from processors.events import (
    CORRECTION,
    INTERRUPTION,
    TOOL_RESPONSE,
    Event,
    HeadReader,
    from_record,
)
from processors.faust_glue import (
    BatchHandler,
    check_versions,
    complete_flush,
    raw_table,
    replace_drain,
    rewind_uncommitted,
    stored_items,
)
from processors.faust_glue import in_partition_of as _in_partition_of
from processors.finished import FinishedConversations
from processors.metrics import ProcessorMetrics
from processors.settings import TANSU_FETCH_WAIT_MS, ProcessorSettings
from processors.sink import Sink
from processors.windows import AgentWindows, SourceProgress, WindowConfig
from schemas.clock import now_micros
from schemas.records import AgentWindowMetrics, ConversationMetrics
from schemas.registry import registry_from_settings
from schemas.serde import Serde, SerdeError, UnknownSchemaId
from schemas.topics import (
    CONVERSATIONS,
    EVENTS_LATE,
    METRICS_AGENT_WINDOWS,
    METRICS_CONVERSATIONS,
    MONITOR_EVENTS,
)

log = get_logger(__name__)

FORWARD_PARTITIONS = 6
_WRITES = (METRICS_CONVERSATIONS, METRICS_AGENT_WINDOWS)  # events.late gets MonitorEvent bytes
_CACHE_LIMIT = 200_000  # cached states per worker; beyond it the cache starts over from tables
_DAY_MICROS = 86_400 * 1_000_000
_SWEEP_SLICE = 500  # stored states read per pass of the event loop during a retention sweep
# bytes in, bytes out: Faust would otherwise decode raw values as UTF-8 text
_RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


def _replication(settings: ProcessorSettings) -> dict[str, Any]:
    """Internal topics, standbys and recovery checks for the broker in use.

    Apache Kafka: internal topics replicated like the cluster's own, one standby (Faust's
    default) and Faust's recovery consistency check. With ``CONVOSTREAM_BROKER_COMPAT=tansu``
    (one node, in memory): one replica and no standby; and no consistency check, because after
    a SIGKILL the local RocksDB may record a changelog offset beyond the highwater Tansu
    reports and Faust would refuse to start (such a store is discarded at the next start
    anyway: :mod:`processors.local_state`).
    """
    if settings.tansu:
        return {
            "topic_replication_factor": 1,
            "table_standby_replicas": 0,
            "recovery_consistency_check": False,
        }
    replicas = settings.processor_replication_factor
    if replicas is None:
        replicas = default_replication_sync(settings.kafka_bootstrap, settings.kafka_security())
    return {"topic_replication_factor": replicas}


def broker_credentials(security: KafkaSecurity) -> Credentials | None:
    """Faust's form of the TLS and SASL options every other client gets as keywords."""
    context = security.ssl_context()
    if security.sasl:
        password = security.password.get_secret_value() if security.password else None
        return SASLCredentials(
            username=security.username,
            password=password,
            ssl_context=context,
            mechanism=security.mechanism,
        )
    if context is not None:
        return SSLCredentials(context)
    return None


def _store_url(choice: str) -> str:
    if choice == "auto":
        try:
            import rocksdict  # noqa: F401
        except ImportError:
            return "memory://"
        return "rocksdb://"
    return f"{choice}://"


def sweep_interval(retention_micros: int) -> float:
    """Seconds between two state retention sweeps: a quarter of the retention, at most hourly
    (a state outlives its retention by at most that), at least every second."""
    return min(3600.0, max(1.0, retention_micros / 4e6))


class _Position(NamedTuple):
    """A message's topic and partition: all a table write needs of it."""

    topic: str
    partition: int


class _Source:
    """Stands in for a Faust event where tables only need ``event.message.partition`` (and its
    topic, which Faust checks has as many partitions as the table)."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, message: Any) -> None:
        self.message = message


class SinkService(Service):
    """Opens the SQL store and readies the ids of the schemas written (registering or looking
    them up) before the agents write; closes both after they stop."""

    def __init__(
        self, sink: Sink, serde: Serde, prepare: Callable[[], Awaitable[None]], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.sink = sink
        self.serde = serde
        self._prepare = prepare
        self.ready = asyncio.Event()

    async def on_start(self) -> None:
        await self._prepare()
        await self.sink.start()
        self.ready.set()

    async def on_stop(self) -> None:
        await self.sink.close()
        await self.serde.close()


class Processor:
    """The Faust app and its agents, tables, timer and lookup page."""

    def __init__(self, settings: ProcessorSettings, sink: Sink, metrics: ProcessorMetrics) -> None:
        check_versions()
        self.settings = settings
        self.metrics = metrics
        self.serde = Serde(
            registry_from_settings(
                settings.schema_registry_url,
                lookup_only=settings.schema_registry_lookup_only,
                access=settings.registry_access(),
            )
        )
        self._head = HeadReader()
        self.window_config = WindowConfig.seconds(
            settings.processor_window_seconds,
            settings.processor_grace_seconds,
            settings.processor_idle_seconds,
            max_future=settings.processor_max_future_seconds,
        )
        prefix = settings.topic_prefix
        batch = settings.processor_batch_size
        # Faust creates only the last level of its data directory: a fresh checkout has no var/
        settings.processor_data_dir.mkdir(parents=True, exist_ok=True)
        self.app = app = faust.App(
            f"{prefix}{settings.processor_app_id}",
            broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
            broker_credentials=broker_credentials(settings.kafka_security()),
            store=_store_url(settings.processor_store),
            datadir=str(settings.processor_data_dir),
            consumer_auto_offset_reset="earliest",
            **_replication(settings),
            # Join in seconds, not Faust's 30 s (README, embedded broker): Tansu holds every
            # JoinGroup for half a session and keeps a killed member for a whole one.
            broker_session_timeout=settings.group_session_timeout_ms / 1000,
            broker_heartbeat_interval=settings.group_heartbeat_ms() / 1000,
            broker_rebalance_timeout=settings.group_session_timeout_ms / 1000 * 2,
            broker_max_poll_records=batch,
            stream_buffer_maxsize=2 * batch,
            web_enabled=settings.processor_web_port > 0,
            web_port=settings.processor_web_port or 6066,
            web_bind=settings.processor_web_host,
            web_host=settings.processor_web_host,
        )
        self.sink_service = SinkService(
            sink,
            self.serde,
            lambda: self.serde.registry.prepare(_WRITES, prefix),
        )
        app.service(self.sink_service)  # type: ignore[arg-type]
        if settings.processor_transcripts:
            finished = FinishedConversations(
                settings.kafka_bootstrap,
                settings.kafka_security(),
                prefix,
                sink,
                self.serde,
                self.sink_service.ready,
            )
            app.service(finished)  # type: ignore[arg-type]
        self.source = app.topic(
            MONITOR_EVENTS.full_name(prefix), CONVERSATIONS.full_name(prefix), **_RAW
        )
        self.forward_topic = app.topic(
            f"{app.conf.id}-agent-events", partitions=FORWARD_PARTITIONS, internal=True, **_RAW
        )
        self.metrics_topic = app.topic(METRICS_CONVERSATIONS.full_name(prefix), **_RAW)
        self.windows_topic = app.topic(METRICS_AGENT_WINDOWS.full_name(prefix), **_RAW)
        self.late_topic = app.topic(EVENTS_LATE.full_name(prefix), **_RAW)
        self.conversations = raw_table(app, "conversations", MONITOR_EVENTS.partitions)
        self.agents = raw_table(app, "agent-windows", FORWARD_PARTITIONS)
        self._topics = {
            plans.FORWARD: self.forward_topic,
            plans.CONVERSATION_METRICS: self.metrics_topic,
            plans.WINDOW_METRICS: self.windows_topic,
            plans.LATE: self.late_topic,
        }
        self._tables = {
            plans.CONVERSATIONS_TABLE: self.conversations,
            plans.AGENTS_TABLE: self.agents,
        }
        self._conv_cache: dict[str, ConversationState] = {}
        self._agent_cache: dict[str, AgentWindows] = {}
        self._agent_index: dict[int, set[str]] = {}
        self._progress: dict[int, SourceProgress] = {}
        self._forwarded: dict[Any, int] = {}  # source partition -> last offset handed on
        self._live: dict[str, set[str]] = defaultdict(set)
        self._lag: dict[Any, int] = {}
        # subscribed and acked by Faust, fetched and handed to the stages by replace_drain
        app.topics.add(self.source)
        app.topics.add(self.forward_topic)
        self.monitor_topic_name = MONITOR_EVENTS.full_name(prefix)
        handlers: dict[str, BatchHandler] = dict.fromkeys(self.source.topics, self._source_batch)
        handlers[self.forward_topic.get_topic_name()] = self._window_batch
        replace_drain(
            app,
            handlers,
            ready=self.sink_service.ready,
            fetch_wait_ms=settings.fetch_wait_ms(
                settings.processor_fetch_wait_ms, TANSU_FETCH_WAIT_MS
            ),
        )
        # a partition without a committed offset starts from its first record
        rewind_uncommitted(app.consumer, handlers)
        # table writes reach the changelog before the offsets of their events are committed
        complete_flush(app.producer.buffer)
        app.timer(1.0)(self._tick)
        self._retention = int(settings.processor_state_retention_days * _DAY_MICROS)  # 0: off
        self._idle = asyncio.Event()  # set while no conversation batch is open
        self._idle.set()
        if self._retention:
            app.timer(sweep_interval(self._retention))(self._sweep_states)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        processor = self

        async def lookup(view: Any, request: Any, conversation_id: str) -> Any:
            return processor._lookup(view, conversation_id)

        app.page("/conversations/{conversation_id}/")(lookup)
        if not settings.tansu:
            asyncio.run(
                create_missing(
                    settings.kafka_bootstrap,
                    self._internal_topics(),
                    app.conf.topic_replication_factor,
                    settings.kafka_security(),
                )
            )

    def _internal_topics(self) -> dict[str, tuple[int, dict[str, str]]]:
        """The topics Faust declares, as it would declare them.

        Faust creates them just before its consumer joins the group. On Kafka, a topic created
        after the consumer last fetched metadata is missing from the assignment ("Ignoring
        missing topic") until a metadata refresh minutes later: its table or agent gets no
        partitions meanwhile. Created here first, every topic is in the first assignment.
        """
        leader = self.app.topic(f"{self.app.conf.id}-__assignor-__leader", partitions=1)
        channels: list[Any] = [leader, self.forward_topic]
        channels += [t.changelog_topic for t in (self.conversations, self.agents)]
        out: dict[str, tuple[int, dict[str, str]]] = {}
        for topic in channels:
            policy = ",".join(
                p for p, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on
            )
            configs = {"cleanup.policy": policy} if policy else {}
            out[topic.get_topic_name()] = (topic.partitions, configs)
        return out

    async def _on_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """States of partitions this worker may no longer own must be re-read from tables."""
        self._conv_cache.clear()
        self._agent_cache.clear()
        self._agent_index.clear()
        self._progress.clear()
        self._forwarded.clear()

    # --- stage 1: conversations --------------------------------------------------------------

    async def _source_batch(self, batch: list[Any]) -> None:
        """One ``getmany`` batch of the source topics, acked by ``replace_drain`` right after
        (no await in between, so ``_forwarded`` moves with the acks)."""
        started = time.perf_counter()
        self._idle.clear()  # no state retention delete while the batch holds its states
        try:
            await self._conversation_batch(batch)
        finally:
            self._idle.set()
        forwarded = self._forwarded
        for message in batch:
            forwarded[message.tp] = message.offset
        self.metrics.batch_seconds.labels("conversations").observe(time.perf_counter() - started)

    def _conversation(self, cid: str, event: Any) -> ConversationState | None:
        """The cached or stored state of ``cid``; None when it has none."""
        state = self._conv_cache.get(cid)
        if state is None:
            if len(self._conv_cache) >= _CACHE_LIMIT:
                self._conv_cache.clear()
            with _in_partition_of(event):
                stored = self.conversations.get(cid.encode())
                if not stored:
                    return None
                state = ConversationState.from_bytes(stored, self.conversations.get)
            self._conv_cache[cid] = state
        return state

    async def _conversation_batch(self, batch: list[Any]) -> None:
        """Read the batch and the states it touches, fold it, apply the plan."""
        decode = self.serde.decode
        records: list[stages.SourceRecord] = []
        states: dict[str, ConversationState] = {}
        routes: dict[int, _Source] = {}  # table partition -> a message of it
        head = self._head.read
        for message in batch:
            self._lag[message.tp] = message.offset
            value = message.value
            item: Event | stages.Ended | None = head(value)  # most events: their leading fields
            if item is None:
                try:
                    try:
                        name, record, schema_id = decode(value)
                    except UnknownSchemaId:  # first record of a registry id: look it up
                        name, record, schema_id = await self.serde.resolve(value)
                except SerdeError as exc:
                    log.warning("undecodable record skipped", topic=message.topic, error=str(exc))
                    continue
                if name == "MonitorEvent":
                    if self.serde.is_current(schema_id, name):
                        self._head.learn(schema_id)
                    item = from_record(record)
                elif name == "ConversationLifecycle" and record["state"] == "ended":
                    item = stages.Ended(record["conversation_id"], record["agent_id"])
                else:
                    continue
            cid = item.conversation_id
            source = routes[message.partition] = _Source(message)
            if cid not in states:
                state = self._conversation(cid, source)
                if state is None:
                    if isinstance(item, Event) and self._expired(item.received_at):
                        self.metrics.expired_events.inc()  # its state may have been deleted
                        continue
                    state = self._conv_cache[cid] = ConversationState(cid)
                states[cid] = state
            records.append(stages.SourceRecord(message.partition, message.offset, value, item))
        plan = stages.conversation_stage(records, states, now_micros(), self.serde.encode)
        if plan is None:
            return
        await plans.apply(plan, _BatchSinks(self, routes))
        for cid, state in states.items():
            if state.ended and state.times:  # reported as ended: it stays in the table
                self._conv_cache.pop(cid, None)
        self._update_lag()

    def _expired(self, received_at: int) -> bool:
        return bool(self._retention) and received_at < now_micros() - self._retention

    async def _sweep_states(self) -> None:
        """Delete the conversation states of this worker's partitions that no batch has touched
        for longer than the retention (tombstones in the changelog, chunks with their head).

        The store is read a slice at a time, batches going on in between, so what it shows may
        be older than the table: each candidate is read again and deleted only while no
        conversation batch is open (:meth:`_expire`), so a state a batch holds is never
        deleted under it. Events for a deleted conversation that are older than the retention
        are skipped (``_expired``) instead of starting an empty state that would overwrite its
        metrics.
        """
        consumer: Any = self.app.consumer
        if self.app.in_recovery:
            return
        topic = self.monitor_topic_name
        partitions = sorted(tp.partition for tp in consumer.assignment() if tp.topic == topic)
        horizon = now_micros() - self._retention
        kept = expired = 0
        for partition in partitions:
            items = stored_items(self.conversations, partition)
            if items is None:
                log.warning("state retention needs the rocksdb store: states are kept")
                self._retention = 0
                return
            candidates: list[bytes] = []
            for n, (key, value) in enumerate(items, 1):
                if not key.startswith(b"\x00"):  # not a chunk: those go with their head
                    touched = last_touched(value)
                    if touched is None or touched < horizon:
                        candidates.append(key)
                    else:
                        kept += 1
                if n % _SWEEP_SLICE == 0:  # batches go on between slices
                    gone, stay = await self._expire(topic, partition, candidates, horizon)
                    expired, kept, candidates = expired + gone, kept + stay, []
            gone, stay = await self._expire(topic, partition, candidates, horizon)
            expired += gone
            kept += stay
        self.metrics.stored_conversations.set(kept)
        if expired:
            self.metrics.states_expired.inc(expired)
            log.info("conversation states expired", states=expired, kept=kept)

    async def _expire(
        self, topic: str, partition: int, keys: list[bytes], horizon: int
    ) -> tuple[int, int]:
        """Delete the states of ``keys`` still untouched since ``horizon``, with no batch open
        (no await from the check to the last delete); how many went and stayed."""
        await asyncio.sleep(0)  # a pass of the event loop per slice, also without candidates
        if not keys:
            return 0, 0
        while not self._idle.is_set():
            await self._idle.wait()
        consumer: Any = self.app.consumer
        if self.app.in_recovery or TP(topic, partition) not in consumer.assignment():
            return 0, 0  # the partition moved: its new owner sweeps it
        table = self.conversations
        expired = kept = 0
        with _in_partition_of(_Source(_Position(topic, partition))):
            for key in keys:
                value = table.get(key)
                if not value:
                    continue
                touched = last_touched(value)
                if touched is None:  # an older version's lifecycle-only state: ages from now
                    state = ConversationState.from_bytes(value, table.get)
                    state.touched_at = now_micros()
                    table[key] = state.to_bytes()
                    kept += 1
                elif touched >= horizon:
                    kept += 1
                else:
                    for chunk in stored_chunks(value):
                        del table[chunk]
                    del table[key]
                    self._forget(key.decode())
                    expired += 1
        return expired, kept

    def _forget(self, cid: str) -> None:
        """Drop a deleted state from the cache and, if it never ended, from the live gauge."""
        self._conv_cache.pop(cid, None)
        for agent, live in self._live.items():
            if cid in live:
                live.discard(cid)
                self.metrics.live_conversations.labels(agent).set(len(live))

    def _update_metrics(self, updates: plans.MetricUpdates) -> None:
        """The last step of a plan (:func:`processors.plans.apply`)."""
        m = self.metrics
        for etype, n in updates.events.items():
            m.events.labels(etype).inc(n)
        counters = {
            INTERRUPTION: m.interruptions,
            CORRECTION: m.corrections,
            TOOL_RESPONSE: m.tool_errors,
        }
        for (agent, etype), n in updates.agent_events.items():
            counters[etype].labels(agent).inc(n)
        for agent, seconds in updates.latencies:
            m.response_latency.labels(agent).observe(seconds)
        for agent, cid, ended in updates.live:
            live = self._live[agent]
            if ended:
                live.discard(cid)
            else:
                live.add(cid)
            m.live_conversations.labels(agent).set(len(live))
        for agent, lag in updates.window_lag.items():
            m.window_lag.labels(agent).set(lag)
        for closed_by in updates.windows_emitted:
            m.windows_emitted.labels(closed_by).inc()
        for agent, n in updates.late.items():
            m.late_events.labels(agent).inc(n)
        for agent, n in updates.clamped.items():
            m.clamped_events.labels(agent).inc(n)

    def _update_lag(self) -> None:
        consumer = self.app.consumer
        lag = 0
        for tp, offset in self._lag.items():
            with contextlib.suppress(Exception):  # highwater unknown until the first fetch
                lag += max(0, consumer.highwater(tp) - offset - 1)
        self.metrics.consumer_lag.set(lag)

    # --- stage 2: agent windows --------------------------------------------------------------

    async def _tick(self) -> None:
        """One progress report per internal partition, so idle windows close on every partition.

        It carries this clock's time for each source partition this worker has handed on up to
        its high-water mark, and the window stage closes by those times rather than its own
        clock: a replay of the partition closes the same windows at the same messages.
        """
        consumer: Any = self.app.consumer
        topic = self.monitor_topic_name
        partitions = consumer.topic_partitions(topic)
        if not partitions or self.app.in_recovery:
            return
        now = now_micros()
        times = {
            tp.partition: now
            for tp in consumer.assignment()
            if tp.topic == topic and self._caught_up(consumer, tp)
        }
        if not times:
            return
        value = forward.encode_tick(partitions, times)
        for partition in range(FORWARD_PARTITIONS):
            await self.forward_topic.send(key=None, value=value, partition=partition)

    def _caught_up(self, consumer: Any, tp: Any) -> bool:
        """Whether every record of source partition ``tp`` below its last fetched high-water
        mark has been handed on (the monitor events topic has no transaction markers, so the
        last offset is high-water - 1)."""
        highwater = consumer.highwater(tp)  # None until a fetch of this assignment answered
        if highwater is None:
            return False
        done = self._forwarded.get(tp)
        if done is not None:
            return bool(done >= highwater - 1)
        position = consumer._read_offset[tp]  # set by the seek to the committed offset
        return bool(highwater == 0 or (position is not None and position >= highwater))

    def _agent(self, agent_id: str, event: Any) -> AgentWindows:
        state = self._agent_cache.get(agent_id)
        if state is None:
            with _in_partition_of(event):
                stored = self.agents.get(agent_id.encode())
            state = AgentWindows.from_bytes(stored) if stored else AgentWindows(agent_id)
            self._agent_cache[agent_id] = state
        return state

    def _index(self, partition: int, event: Any) -> set[str]:
        """Agents with state in ``partition`` (kept in the table under a reserved key)."""
        index = self._agent_index.get(partition)
        if index is None:
            with _in_partition_of(event):
                stored = self.agents.get(stages.index_key(partition))
            index = self._agent_index[partition] = set(orjson.loads(stored)) if stored else set()
        return index

    def _source_progress(self, partition: int, event: Any) -> SourceProgress:
        progress = self._progress.get(partition)
        if progress is None:
            with _in_partition_of(event):
                stored = self.agents.get(stages.progress_key(partition))
            progress = SourceProgress.from_bytes(stored) if stored else SourceProgress()
            self._progress[partition] = progress
        return progress

    async def _window_batch(self, batch: list[Any]) -> None:
        """One ``getmany`` batch of the agent-keyed topic, acked by ``replace_drain`` after."""
        started = time.perf_counter()
        items: list[stages.Tick | stages.AgentBatch] = []
        agents: dict[str, AgentWindows] = {}
        index: dict[int, set[str]] = {}
        progress: dict[int, SourceProgress] = {}
        routes: dict[int, _Source] = {}  # table partition -> a message of it
        for message in batch:
            partition = message.partition
            source = routes[partition] = _Source(message)
            members = index[partition] = self._index(partition, source)
            if message.key is None:
                progress[partition] = self._source_progress(partition, source)
                for agent_id in members:
                    agents[agent_id] = self._agent(agent_id, source)
                items.append(stages.Tick(partition, forward.decode_tick(message.value or b"")))
                continue
            agent_id, sent_at, events = forward.decode(message.value)
            agents[agent_id] = self._agent(agent_id, source)
            items.append(stages.AgentBatch(partition, agent_id, sent_at, events))
        states = stages.WindowStates(agents, index, progress)
        plan = stages.window_stage(
            items, states, self.window_config, now_micros(), self.serde.encode
        )
        await plans.apply(plan, _BatchSinks(self, routes))
        self.metrics.batch_seconds.labels("agent_windows").observe(time.perf_counter() - started)

    # --- lookups -----------------------------------------------------------------------------

    def _lookup(self, web: Any, conversation_id: str) -> Any:
        """GET /conversations/{id}/: current metrics of one conversation (this worker's)."""
        state = self._conv_cache.get(conversation_id)
        if state is None:
            stored = self.conversations.get(conversation_id.encode())
            if not stored:
                return web.json({"error": "unknown conversation"}, status=404)
            state = ConversationState.from_bytes(stored, self.conversations.get)
        return web.json(state.metrics(now_micros()))


class _BatchSinks:
    """Where a batch's plan goes: the worker's topics, SQL store, tables and metrics. Table
    writes go to the partition of a message of the batch (``routes``): Faust takes a table's
    partition from the current event."""

    __slots__ = ("processor", "routes")

    def __init__(self, processor: Processor, routes: dict[int, Any]) -> None:
        self.processor = processor
        self.routes = routes

    async def send(self, send: plans.Send) -> Awaitable[object]:
        topic = self.processor._topics[send.topic]
        ack: Awaitable[object] = await topic.send(key=send.key, value=send.value)
        return ack

    async def write_sql(
        self, conversations: list[ConversationMetrics], windows: list[AgentWindowMetrics]
    ) -> None:
        await self.processor.sink_service.sink.write(conversations, windows)

    def write_table(self, write: plans.Write) -> None:
        with _in_partition_of(self.routes[write.partition]):
            self.processor._tables[write.table][write.key] = write.value

    def update_metrics(self, updates: plans.MetricUpdates) -> None:
        self.processor._update_metrics(updates)
