"""The Faust worker: conversation metrics, agent windows, SQL sink, lookups.

Faust's per-message path (a task pair per message in the fetcher, then conductor, event, queue
and stream per message) costs more than all of the metric work, so the hot topics skip it:

1. ``convai.monitor.events`` and ``convai.conversations`` (both keyed and partitioned by
   conversation) are subscribed through Faust's conductor, but :meth:`Processor._drain` takes the
   place of the consumer's fetch loop: it hands each ``getmany`` batch of those topics to the
   conversation stage whole and acks the messages afterwards (other topics go through Faust's
   normal per-message path). Per batch it reads the needed fields of the raw Avro bytes
   (:class:`processors.events.HeadReader`; a full decode only for tool responses and other
   records), folds them into each conversation's order-independent state
   (:mod:`processors.conversation`), then, in one producer round trip with the SQL upsert
   running alongside, forwards the first-seen events to the agent-keyed internal topic (one
   record per agent and batch) and emits the touched rows to the compacted
   ``convai.metrics.conversations``; only then does it write each touched state once to the
   ``conversations`` table (changelogged). The fetch wait is shortened (see
   :meth:`Processor._shorten_fetch_wait`): it, not the work, set the SQL latency tail.
2. the ``agent-windows`` agent (an ordinary Faust agent with ``take_events``: its topic carries
   one record per agent and batch) reads that internal topic into per-agent window state
   (:mod:`processors.windows`), routes late events to ``convai.events.late``, and emits final
   windows to ``convai.metrics.agent-windows`` and SQL. The leader sends one tick per internal
   partition every second, so idle windows close by wall clock inside the stream, where the
   table knows which partition it writes to.

Both stages ack a batch only after every write of it is done, so a committed offset always
lies behind state that is in the changelog.
States are idempotent (re-applying events changes nothing; re-forwarded events are dropped by
source offset), so replaying what came after the last commit is harmless: at-least-once
delivery gives exactly-once results.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import faust
import orjson
from faust.streams import _current_event
from mode import Service

from convostream.logs import get_logger
from processors import forward
from processors.conversation import ConversationState
from processors.events import (
    CORRECTION,
    INTERRUPTION,
    TOOL_RESPONSE,
    HeadReader,
    from_record,
)
from processors.metrics import Metrics
from processors.settings import ProcessorSettings
from processors.sink import Sink
from processors.windows import AgentWindows, Outcome, WindowConfig, WindowEvent
from schemas.avro_schemas import now_micros
from schemas.serde import Serde, SerdeError
from schemas.topics import (
    CONVERSATIONS,
    EVENTS_LATE,
    METRICS_AGENT_WINDOWS,
    METRICS_CONVERSATIONS,
    MONITOR_EVENTS,
)

log = get_logger(__name__)

FORWARD_PARTITIONS = 6
_CACHE_LIMIT = 200_000  # cached states per worker; beyond it the cache starts over from tables
# bytes in, bytes out: Faust would otherwise decode raw values as UTF-8 text
_RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


@contextlib.contextmanager
def _in_partition_of(event: Any) -> Iterator[None]:
    """Make table reads and writes go to ``event``'s partition.

    Faust picks a table's store and changelog partition from the *current* event, which inside
    a batch is whichever event came last; each key's own event must be current instead.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def _raw_table(app: faust.App, name: str, partitions: int) -> Any:
    """A table of bytes keys and values (tables otherwise JSON-encode anything not a Record)."""
    table: Any = app.Table(name, partitions=partitions, key_type=bytes, value_type=bytes)
    table.key_serializer = table.value_serializer = "raw"  # read when the store is created
    return table


def _index_key(partition: int) -> bytes:
    """Reserved table key of a partition's agent list (agent ids never start with NUL)."""
    return b"\x00agents:%d" % partition


def _store_url(choice: str) -> str:
    if choice == "auto":
        try:
            import rocksdict  # noqa: F401
        except ImportError:
            return "memory://"
        return "rocksdb://"
    return f"{choice}://"


class _Source:
    """Stands in for a Faust event where tables only need ``event.message.partition``."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, message: Any) -> None:
        self.message = message


class _Conversation:
    """A cached state, the event that tells its partition, latencies already observed."""

    __slots__ = ("event", "observed", "state")

    def __init__(self, state: ConversationState, event: Any) -> None:
        self.state = state
        self.event = event
        self.observed: set[int] = set()


class SinkService(Service):
    """Opens the SQL store before the agents write and closes it after they stop."""

    def __init__(self, sink: Sink, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sink = sink
        self.ready = asyncio.Event()

    async def on_start(self) -> None:
        await self.sink.start()
        self.ready.set()

    async def on_stop(self) -> None:
        await self.sink.close()


class Processor:
    """The Faust app and its agents, tables, timer and lookup page."""

    def __init__(self, settings: ProcessorSettings, sink: Sink, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.serde = Serde()
        self._head = HeadReader(self.serde.registry.writer_id("MonitorEvent"))
        self.window_config = WindowConfig.seconds(
            settings.processor_window_seconds,
            settings.processor_grace_seconds,
            settings.processor_idle_seconds,
        )
        prefix = settings.topic_prefix
        batch = settings.processor_batch_size
        self.app = app = faust.App(
            f"{prefix}{settings.processor_app_id}",
            broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
            store=_store_url(settings.processor_store),
            datadir=str(settings.processor_data_dir),
            consumer_auto_offset_reset="earliest",
            # Join in seconds, not Faust's 30 s (README, embedded broker): Tansu holds every
            # JoinGroup for half a session and keeps a killed member for a whole one.
            broker_session_timeout=settings.group_session_timeout_ms / 1000,
            broker_heartbeat_interval=settings.group_heartbeat_ms() / 1000,
            broker_rebalance_timeout=settings.group_session_timeout_ms / 1000 * 2,
            broker_max_poll_records=batch,
            stream_buffer_maxsize=2 * batch,
            table_standby_replicas=0,
            # After a SIGKILL the local RocksDB may have recorded a changelog offset beyond the
            # highwater the embedded broker reports, and Faust would refuse to start. A store
            # ahead of its changelog only holds events that are replayed anyway (their source
            # offsets were not committed), and states are idempotent, so starting is safe.
            recovery_consistency_check=False,
            web_enabled=settings.processor_web_port > 0,
            web_port=settings.processor_web_port or 6066,
            web_bind=settings.processor_web_host,
            web_host=settings.processor_web_host,
        )
        self.sink_service = SinkService(sink)
        app.service(self.sink_service)  # type: ignore[arg-type]
        self.source = app.topic(
            MONITOR_EVENTS.full_name(prefix), CONVERSATIONS.full_name(prefix), **_RAW
        )
        self.forward_topic = app.topic(
            f"{app.conf.id}-agent-events", partitions=FORWARD_PARTITIONS, internal=True, **_RAW
        )
        self.metrics_topic = app.topic(METRICS_CONVERSATIONS.full_name(prefix), **_RAW)
        self.windows_topic = app.topic(METRICS_AGENT_WINDOWS.full_name(prefix), **_RAW)
        self.late_topic = app.topic(EVENTS_LATE.full_name(prefix), **_RAW)
        self.conversations = _raw_table(app, "conversations", MONITOR_EVENTS.partitions)
        self.agents = _raw_table(app, "agent-windows", FORWARD_PARTITIONS)
        self._conv_cache: dict[str, _Conversation] = {}
        self._agent_cache: dict[str, tuple[AgentWindows, Any]] = {}
        self._agent_index: dict[int, set[str]] = {}
        self._live: dict[str, set[str]] = defaultdict(set)
        self._lag: dict[Any, int] = {}
        app.topics.add(self.source)  # subscribed and acked by Faust, fetched by _drain
        self._source_names = set(self.source.topics)
        app.consumer._drain_messages = self._drain  # type: ignore[attr-defined]
        app.agent(self.forward_topic, name="agent-windows")(self._window_agent)
        app.timer(1.0, on_leader=True)(self._tick)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        processor = self

        async def lookup(view: Any, request: Any, conversation_id: str) -> Any:
            return processor._lookup(view, conversation_id)

        app.page("/conversations/{conversation_id}/")(lookup)

    async def _on_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """States of partitions this worker may no longer own must be re-read from tables."""
        self._conv_cache.clear()
        self._agent_cache.clear()
        self._agent_index.clear()

    # --- stage 1: conversations --------------------------------------------------------------

    async def _drain(self, fetcher: Any) -> None:
        """Replaces ``Consumer._drain_messages``: source topics in batches, the rest as usual.

        Kept from Faust's loop: messages before the read offset (re-fetched after a seek) are
        dropped, holes in the offsets (compaction, transaction markers) are recorded as gaps so
        commits can pass them, and batch messages are tracked as unacked, so a rebalance or a
        shutdown (``Consumer.wait_empty``) waits until the batch in flight is written and acked
        (tracking its last message is enough for that, and costs one WeakSet entry per batch).
        """
        consumer: Any = self.app.consumer  # Consumer internals, not on the ConsumerT interface
        read_offsets = consumer._read_offset
        unacked = consumer._unacked_messages
        stopped = consumer._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        self._shorten_fetch_wait(consumer)
        await self.sink_service.ready.wait()
        try:
            while not (stopped() or fetcher_stopped()):
                await asyncio.sleep(0)  # getmany may not yield to the loop on its own
                batch = []
                async for tp, message in consumer.getmany(timeout=1.0):
                    offset = read_offsets[tp]
                    if offset is not None:
                        if message.offset < offset:
                            continue  # re-fetched after a seek: already handed on
                        if message.offset - offset > 1:
                            await consumer._add_gap(tp, offset + 1, message.offset)
                    read_offsets[tp] = message.offset
                    if tp.topic in self._source_names:
                        batch.append(message)
                    else:
                        await consumer.callback(message)
                if batch:
                    started = time.perf_counter()
                    last = batch[-1]  # one tracked message keeps wait_empty waiting
                    unacked.add(last)
                    try:
                        await self._conversation_batch(batch)
                    except BaseException:  # stopped or failed: replayed from the last commit
                        unacked.discard(last)
                        raise
                    ack = consumer.ack
                    for message in batch:
                        ack(message)
                    self.metrics.batch_seconds.labels("conversations").observe(
                        time.perf_counter() - started
                    )
        except consumer.consumer_stopped_errors:
            if not self.app.should_stop:
                raise

    def _shorten_fetch_wait(self, consumer: Any) -> None:
        """Bound the long poll (Faust fixes ``fetch_max_wait_ms`` at 1,500).

        Measured (bench/process.py, per-batch trace): with the embedded broker a poll that
        finds no new data is answered only at its deadline, so at 5,000 events/s every second
        or so the fetcher sat 0.3-0.6 s on an empty poll while events piled up, which set the
        SQL latency tail. aiokafka reads the value per fetch request.
        """
        try:
            fetcher = consumer._thread._consumer._fetcher
            fetcher._fetch_max_wait_ms = self.settings.processor_fetch_wait_ms
        except AttributeError:  # another transport, or not started: Faust's wait stays
            log.warning("could not shorten the consumer's fetch wait")

    def _conversation(self, cid: str, event: Any) -> _Conversation:
        entry = self._conv_cache.get(cid)
        if entry is None:
            if len(self._conv_cache) >= _CACHE_LIMIT:
                self._conv_cache.clear()
            with _in_partition_of(event):
                stored = self.conversations.get(cid.encode())
            state = ConversationState.from_bytes(stored) if stored else ConversationState(cid)
            entry = self._conv_cache[cid] = _Conversation(state, event)
        else:
            entry.event = event
        return entry

    async def _conversation_batch(self, batch: list[Any]) -> None:
        decode = self.serde.decode
        touched: dict[str, _Conversation] = {}
        forwards: dict[tuple[str, int], list[forward.Forwarded]] = defaultdict(list)
        new_by_type: dict[str, int] = defaultdict(int)
        agent_counts: dict[tuple[str, str], int] = defaultdict(int)
        head = self._head.read
        for message in batch:
            self._lag[message.tp] = message.offset
            source = _Source(message)
            value = message.value
            event = head(value)  # most events: their leading fields are enough
            if event is None:
                try:
                    name, record, _ = decode(value)
                except SerdeError as exc:
                    log.warning("undecodable record skipped", topic=message.topic, error=str(exc))
                    continue
                if name == "MonitorEvent":
                    event = from_record(record)
                elif name == "ConversationLifecycle" and record["state"] == "ended":
                    cid = record["conversation_id"]
                    entry = touched[cid] = self._conversation(cid, source)
                    entry.state.end(record["agent_id"])
            if event is not None:
                entry = touched[event.conversation_id] = self._conversation(
                    event.conversation_id, source
                )
                if not entry.state.apply(event):
                    continue
                new_by_type[event.type] += 1
                if event.agent_id is not None:
                    if event.type in (INTERRUPTION, CORRECTION) or event.is_error:
                        agent_counts[(event.agent_id, event.type)] += 1
                    forwards[(event.agent_id, message.partition)].append(
                        (
                            WindowEvent(
                                message.partition,
                                message.offset,
                                event.conversation_id,
                                event.type,
                                event.received_at,
                                event.is_error,
                            ),
                            value,
                        )
                    )
        if not touched:
            return
        # 1. outputs, all at once (one producer round trip, SQL alongside): forwarded first-seen
        #    events, the SQL upserts and the compacted metrics topic. They must be stored before
        #    the states below, which mark the events seen (a crash in between only re-sends
        #    and re-upserts the same values: the receivers and the SQL guards are idempotent).
        now = now_micros()
        records = []
        for entry in touched.values():
            if not entry.state.times:  # only a lifecycle record so far: nothing to report
                continue
            latencies = entry.state.latencies()
            records.append(entry.state.metrics(now, latencies))
            self._observe(entry, latencies)
        sql = asyncio.ensure_future(self.sink_service.sink.write(records, []))
        try:
            forward_send, metrics_send = self.forward_topic.send, self.metrics_topic.send
            sent = [
                await forward_send(key=agent.encode(), value=forward.encode(agent, part, items))
                for (agent, part), items in forwards.items()
            ]
            encode = self.serde.encode
            sent += [
                await metrics_send(
                    key=r["conversation_id"].encode(), value=encode("ConversationMetrics", r)
                )
                for r in records
            ]
            await asyncio.gather(*sent)
        finally:
            await sql
        # 2. one table write per touched conversation
        for cid, entry in touched.items():
            with _in_partition_of(entry.event):
                self.conversations[cid.encode()] = entry.state.to_bytes()
        self._count(new_by_type, agent_counts)
        self._update_lag()

    def _observe(self, entry: _Conversation, latencies: dict[int, int]) -> None:
        state = entry.state
        agent = state.agent_id or "unknown"
        for key, micros in latencies.items():
            if key not in entry.observed:
                entry.observed.add(key)
                self.metrics.response_latency.labels(agent).observe(micros / 1e6)
        live = self._live[agent]
        if state.ended:
            live.discard(state.conversation_id)
            self._conv_cache.pop(state.conversation_id, None)  # stays in the table
        else:
            live.add(state.conversation_id)
        self.metrics.live_conversations.labels(agent).set(len(live))

    def _count(self, by_type: dict[str, int], by_agent: dict[tuple[str, str], int]) -> None:
        for etype, n in by_type.items():
            self.metrics.events.labels(etype).inc(n)
        counters = {
            INTERRUPTION: self.metrics.interruptions,
            CORRECTION: self.metrics.corrections,
            TOOL_RESPONSE: self.metrics.tool_errors,
        }
        for (agent, etype), n in by_agent.items():
            counters[etype].labels(agent).inc(n)

    def _update_lag(self) -> None:
        consumer = self.app.consumer
        lag = 0
        for tp, offset in self._lag.items():
            with contextlib.suppress(Exception):  # highwater unknown until the first fetch
                lag += max(0, consumer.highwater(tp) - offset - 1)
        self.metrics.consumer_lag.set(lag)

    # --- stage 2: agent windows --------------------------------------------------------------

    async def _tick(self) -> None:
        """One tick per internal partition, so idle windows close on every partition."""
        for partition in range(FORWARD_PARTITIONS):
            await self.forward_topic.send(key=None, value=b"", partition=partition)

    async def _window_agent(self, stream: Any) -> None:
        await self.sink_service.ready.wait()
        async for batch in stream.take_events(
            self.settings.processor_batch_size, within=self.settings.processor_flush_seconds
        ):
            started = time.perf_counter()
            await self._window_batch(batch)
            self.metrics.batch_seconds.labels("agent_windows").observe(
                time.perf_counter() - started
            )

    def _agent(self, agent_id: str, event: Any) -> AgentWindows:
        cached = self._agent_cache.get(agent_id)
        if cached is not None:
            self._agent_cache[agent_id] = (cached[0], event)
            return cached[0]
        with _in_partition_of(event):
            stored = self.agents.get(agent_id.encode())
        state = AgentWindows.from_bytes(stored) if stored else AgentWindows(agent_id)
        self._agent_cache[agent_id] = (state, event)
        return state

    def _index(self, partition: int, event: Any) -> set[str]:
        """Agents with state in ``partition`` (kept in the table under a reserved key)."""
        index = self._agent_index.get(partition)
        if index is None:
            with _in_partition_of(event):
                stored = self.agents.get(_index_key(partition))
            index = self._agent_index[partition] = set(orjson.loads(stored)) if stored else set()
        return index

    async def _window_batch(self, batch: list[Any]) -> None:
        config = self.window_config
        changed: dict[str, AgentWindows] = {}
        late: list[tuple[str, str, bytes]] = []
        index_changed: dict[int, Any] = {}
        for fe in batch:
            message = fe.message
            index = self._index(message.partition, fe)
            if message.key is None:  # a tick: every agent of this partition
                for agent_id in index:
                    changed[agent_id] = self._agent(agent_id, fe)
                continue
            agent_id, items = forward.decode(message.value)
            state = changed[agent_id] = self._agent(agent_id, fe)
            if agent_id not in index:
                index.add(agent_id)
                index_changed[message.partition] = fe
            for event, value in items:
                if state.accept(event, config) is Outcome.LATE:
                    late.append((agent_id, event.conversation_id, value))
        if not changed:
            return
        now = now_micros()
        records = []  # for SQL: open windows, newly final ones, final ones with late events
        finals = []  # for the topic: newly final windows only
        for agent_id, state in changed.items():
            closed = set(state.advance(now, config))
            for start, window in state.windows.items():
                if not window.final or start in closed or window.late:
                    record = window.record(agent_id, start, config.size, now)
                    records.append(record)
                    if start in closed:
                        finals.append(record)
                        self.metrics.windows_emitted.labels(window.closed_by).inc()
            if state.event_time is not None:
                self.metrics.window_lag.labels(agent_id).set((now - state.event_time) / 1e6)
        # outputs first, then state: a crash in between re-emits the same windows
        sent = [await self.late_topic.send(key=cid.encode(), value=value) for _, cid, value in late]
        sent += [
            await self.windows_topic.send(
                key=f"{r['agent_id']}@{r['window_start']}".encode(),
                value=self.serde.encode("AgentWindowMetrics", r),
            )
            for r in finals
        ]
        await asyncio.gather(*sent)
        await self.sink_service.sink.write([], records)
        for agent_id, _, _ in late:
            self.metrics.late_events.labels(agent_id).inc()
        for agent_id, state in changed.items():
            with _in_partition_of(self._agent_cache[agent_id][1]):
                self.agents[agent_id.encode()] = state.to_bytes()
        for partition, fe in index_changed.items():
            with _in_partition_of(fe):
                self.agents[_index_key(partition)] = orjson.dumps(
                    sorted(self._agent_index[partition])
                )

    # --- lookups -----------------------------------------------------------------------------

    def _lookup(self, web: Any, conversation_id: str) -> Any:
        """GET /conversations/{id}/: current metrics of one conversation (this worker's)."""
        entry = self._conv_cache.get(conversation_id)
        if entry is not None:
            state = entry.state
        else:
            stored = self.conversations.get(conversation_id.encode())
            if not stored:
                return web.json({"error": "unknown conversation"}, status=404)
            state = ConversationState.from_bytes(stored)
        return web.json(state.metrics(now_micros()))
