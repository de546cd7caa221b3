"""The command worker: ``convai.commands`` in, frames upstream, ``convai.command-results`` out.

Per command, in this order (each step is a crash point; see the ledger for how a restart reads
them back):
1. receive (offset not committed yet);
2. decide (sans-I/O, ``decide.py``); conversation check and socket for deliverable commands;
3. write the *intent* (the command, headers = source partition/offset) to
   ``convai.command-intents``, acks=all;
4. check ``expires_at`` once more, then write the frame on the socket;
5. write the one result (same headers, same partition number as the command), acks=all;
6. commit the offset.
A crash before 3 leaves nothing: the command is decided again. A crash between 3 and 5 leaves an
intent without a result: the command is answered ``failed`` (in doubt), never written again. A
crash between 5 and 6 leaves a result: the command is skipped. Commands are handled one at a
time, and a revoked partition is released only after the command in hand is finished, so two
workers never hold the same command (a worker that is stalled past its session timeout while
another takes over would need transactional fencing, which this design does not use).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

import convostream.kafka_compat  # noqa: F401  (idempotent producer on every broker)
from convostream.logs import get_logger
from ingest.commands.decide import Decider, Deliver, Finish, Skip, Status
from ingest.commands.frames import encode_frame
from ingest.commands.ledger import Ledger, read_source, source_headers
from ingest.commands.metrics import CommandMetrics, type_label
from ingest.commands.policy import Policy
from ingest.commands.pool import ConnectFailed, SocketPool
from ingest.commands.ratelimit import RateLimiter
from ingest.commands.settings import CRASH_POINTS, CommandWorkerSettings
from ingest.commands.upstream import ConversationApi, UpstreamError
from ingest.commands.validate import Limits, check_conversation
from schemas.avro_schemas import now_micros
from schemas.commands import CHAT_ONLY
from schemas.serde import Serde, SerdeError
from schemas.topics import COMMAND_INTENTS, COMMAND_RESULTS, COMMANDS

log = get_logger(__name__)

KIND_CACHE_SIZE = 10_000
HOUSEKEEPING_EVERY = 1.0


class CrashInjector:
    """Test-only fault injection (``CONVOSTREAM_COMMANDS_CRASH_AT``): SIGKILL at one point, once."""

    def __init__(self, point: str | None) -> None:
        if point is not None and point not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {point!r}; expected one of {CRASH_POINTS}")
        self.point = point

    def at(self, point: str) -> None:
        if point == self.point:
            log.warning("fault injection: killing the worker", crash_at=point)
            os.kill(os.getpid(), signal.SIGKILL)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: CommandWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.worker.busy:  # the command in hand finishes first
            for tp in revoked:
                self.worker.ledger.forget(tp.partition)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.worker.busy:  # records fetched meanwhile wait for the ledger
            await self.worker.rebuild(assigned)


class CommandWorker:
    """One worker process; ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: CommandWorkerSettings,
        policy: Policy,
        keys: Mapping[str, str],
        serde: Serde,
        metrics: CommandMetrics,
    ) -> None:
        self.settings = settings
        self.serde = serde
        self.metrics = metrics
        prefix = settings.topic_prefix
        self.commands_topic = COMMANDS.full_name(prefix)
        self.results_topic = COMMAND_RESULTS.full_name(prefix)
        self.intents_topic = COMMAND_INTENTS.full_name(prefix)
        self.ledger = Ledger()
        self.decider = Decider(
            policy,
            keys,
            Limits(settings.commands_max_text_chars, int(settings.commands_max_ttl * 1_000_000)),
            self.ledger,
            RateLimiter(settings.commands_rate_per_second, settings.commands_rate_burst),
        )
        api_key = settings.api_key.get_secret_value() if settings.api_key else ""
        self.pool = SocketPool(
            settings.upstream_url,
            api_key,
            idle_timeout=settings.commands_idle_timeout,
            max_sockets=settings.commands_max_sockets,
            connect_timeout=settings.commands_connect_timeout,
            settle=settings.commands_connect_settle,
        )
        self.api = ConversationApi(
            settings.upstream_url, api_key, settings.commands_connect_timeout
        )
        self.crash = CrashInjector(settings.commands_crash_at)
        self.busy = asyncio.Lock()
        self._chat: OrderedDict[str, bool | None] = OrderedDict()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.worker_id = settings.worker_id()

    # ----- lifecycle ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        bootstrap = self.settings.kafka_bootstrap
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=0
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=self.settings.commands_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=self.worker_id,
            fetch_max_wait_ms=self.settings.commands_fetch_wait_ms,
            session_timeout_ms=self.settings.group_session_timeout_ms,
            heartbeat_interval_ms=self.settings.group_heartbeat_ms(),
        )
        await self._producer.start()
        try:
            await self._check_partitions()
            self._consumer.subscribe([self.commands_topic], listener=_Rebalance(self))
            await self._consumer.start()
            log.info(
                "command worker started",
                worker_id=self.worker_id,
                group=self.settings.commands_group_id,
            )
            await self._loop(stop)
        finally:
            await self._consumer.stop()
            await self._producer.stop()
            await self.pool.close()
            await self.api.close()
            log.info("command worker stopped", worker_id=self.worker_id)

    async def _check_partitions(self) -> None:
        assert self._producer is not None
        counts = {}
        for topic in (self.commands_topic, self.results_topic, self.intents_topic):
            parts = await self._producer.partitions_for(topic)
            counts[topic] = len(parts)
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"command topics must have equal partition counts: {counts}")

    async def _loop(self, stop: asyncio.Event) -> None:
        assert self._consumer is not None
        last_housekeeping = time.monotonic()
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                fetch = asyncio.create_task(self._consumer.getmany(timeout_ms=500))
                await asyncio.wait({fetch, stopping}, return_when="FIRST_COMPLETED")
                if not fetch.done():
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fetch
                    break
                for tp, records in fetch.result().items():
                    for record in records:
                        async with self.busy:
                            if tp not in self._consumer.assignment():
                                break  # revoked meanwhile: its new owner reads it again
                            await self.handle(record)
                if time.monotonic() - last_housekeeping >= HOUSEKEEPING_EVERY:
                    last_housekeeping = time.monotonic()
                    await self.pool.sweep()
                    self.ledger.prune(now_micros())
                    self.decider.limiter.prune(time.monotonic())
                    self.metrics.sockets.set(len(self.pool))
                    self.metrics.ledger.set(self.ledger.size())
        finally:
            stopping.cancel()

    # ----- rebuilding the ledger on assignment ---------------------------------------------
    async def rebuild(self, assigned: list[TopicPartition]) -> None:
        """Read results and intents of the assigned partitions up to their current end."""
        assert self._consumer is not None
        started = time.monotonic()
        committed: dict[int, int] = {}
        for tp in assigned:
            self.ledger.forget(tp.partition)
            committed[tp.partition] = await self._consumer.committed(tp) or 0
        partitions = [tp.partition for tp in assigned]
        results = intents = 0
        async for record in read_to_end(
            self.settings.kafka_bootstrap, self.results_topic, partitions
        ):
            source = read_source(record.headers)
            if source is not None:
                self.ledger.note_result(*source)
                results += 1
        async for record in read_to_end(
            self.settings.kafka_bootstrap, self.intents_topic, partitions
        ):
            source = read_source(record.headers)
            if source is None or record.value is None:
                continue
            try:
                command = (await self.serde.resolve(record.value)).record
            except SerdeError:
                continue  # not written by a worker; it cannot claim a command id
            key = (command["conversation_id"], command["command_id"])
            self.ledger.note_intent(source[0], source[1], key, command["expires_at"])
            intents += 1
        for partition, offset in committed.items():
            self.ledger.committed(partition, offset)
        log.info(
            "command partitions assigned",
            partitions=sorted(partitions),
            results_read=results,
            intents_read=intents,
            seconds=round(time.monotonic() - started, 3),
        )

    # ----- one command ------------------------------------------------------------------------
    async def handle(self, message: ConsumerRecord[bytes, bytes]) -> None:
        self.crash.at("after_receive")
        now = now_micros()
        command: dict[str, Any] | str
        if message.value is None:
            command = "no value (tombstone)"
        else:
            try:
                name, record, _ = await self.serde.resolve(message.value)
                command = record if name == "ControlCommand" else f"a {name}, not a ControlCommand"
            except SerdeError as exc:
                command = str(exc)
        decision = self.decider.decide(message.partition, message.offset, command, now)
        if isinstance(decision, Skip):
            log.info("command already answered", partition=message.partition, offset=message.offset)
        elif isinstance(decision, Finish):
            await self._finish(message, command, decision.status, decision.reason)
        else:
            assert isinstance(command, dict)
            await self._deliver(message, command, decision)
        await self._commit(message)

    async def _deliver(
        self, message: ConsumerRecord[bytes, bytes], command: dict[str, Any], decision: Deliver
    ) -> None:
        conversation = command["conversation_id"]
        kind = command["command_type"]
        ws = self.pool.warm(conversation)
        socket_kind = "warm"
        if ws is None or (kind in CHAT_ONLY and self._chat.get(conversation) is None):
            try:
                info = await self.api.conversation(conversation)
            except UpstreamError as exc:
                await self._finish(message, command, "failed", str(exc))
                return
            self._remember_kind(conversation, info.chat)
            problem = check_conversation(kind, info.status, info.chat)
            if problem is not None:
                await self._finish(message, command, "rejected", problem)
                return
        if ws is None:
            socket_kind = "cold"
            try:
                ws = await self.pool.open(conversation)
            except ConnectFailed as exc:
                await self._finish(message, command, "failed", str(exc))
                return
        await self._send_record(
            self.intents_topic,
            self.serde.encode("ControlCommand", command),
            command["command_id"],
            message,
        )
        self.ledger.note_intent(
            message.partition,
            message.offset,
            (conversation, command["command_id"]),
            command["expires_at"],
        )
        self.crash.at("after_intent")
        await self._write(message, command, ws, encode_frame(decision.frame), socket_kind)

    async def _write(
        self,
        message: ConsumerRecord[bytes, bytes],
        command: dict[str, Any],
        ws: ClientConnection,
        text: str,
        socket_kind: str,
    ) -> None:
        if now_micros() >= command["expires_at"]:
            await self._finish(message, command, "expired", "expired while the socket was opened")
            return
        if ws.protocol.state is not State.OPEN:  # closed after it was chosen: nothing written
            await self._finish(
                message,
                command,
                "failed",
                f"monitor socket closed before the write ({ws.close_code} "
                f"{ws.close_reason or 'no reason'}); the conversation may have ended",
            )
            return
        try:  # from here on the frame is in the transport: a failure leaves the outcome unknown
            await asyncio.wait_for(ws.send(text), self.settings.commands_connect_timeout)
        except (ConnectionClosed, TimeoutError):
            await self.pool.discard(command["conversation_id"])
            await self._finish(
                message,
                command,
                "failed",
                "monitor socket failed during the write; the frame "
                "may or may not have reached the upstream; not retried",
            )
            return
        delivered_at = now_micros()
        self.crash.at("after_write")
        self.metrics.delivery.labels(socket_kind).observe(
            max(0.0, delivered_at / 1e6 - message.timestamp / 1e3)
        )
        await self._finish(message, command, "delivered", None, delivered_at=delivered_at)

    def _remember_kind(self, conversation: str, chat: bool | None) -> None:
        self._chat[conversation] = chat
        self._chat.move_to_end(conversation)
        while len(self._chat) > KIND_CACHE_SIZE:
            self._chat.popitem(last=False)

    # ----- results and offsets ----------------------------------------------------------------
    async def _finish(
        self,
        message: ConsumerRecord[bytes, bytes],
        command: Mapping[str, Any] | str,
        status: Status,
        reason: str | None,
        delivered_at: int | None = None,
    ) -> None:
        fields = command if isinstance(command, Mapping) else {}
        key = message.key.decode("utf-8", "replace") if message.key else ""
        result: dict[str, Any] = {
            "command_id": _text(fields.get("command_id"))
            or f"undecodable:{message.topic}:{message.partition}:{message.offset}",
            "conversation_id": _text(fields.get("conversation_id")) or key,
            "command_type": _text(fields.get("command_type")),
            "status": status,
            "reason": reason,
            "decided_at": now_micros(),
            "worker_id": self.worker_id,
            "delivered_at": delivered_at,
        }
        await self._send_record(
            self.results_topic,
            self.serde.encode("CommandResult", result),
            result["conversation_id"],
            message,
        )
        self.ledger.note_result(message.partition, message.offset)
        self.metrics.results.labels(type_label(result["command_type"]), status).inc()
        log.info(
            "command result",
            command_id=result["command_id"],
            conversation_id=result["conversation_id"],
            command_type=result["command_type"],
            issued_by=_text(fields.get("issued_by")),
            status=status,
            reason=reason,
            partition=message.partition,
            offset=message.offset,
        )
        self.crash.at("after_result")

    async def _send_record(
        self, topic: str, value: bytes, key: str, message: ConsumerRecord[bytes, bytes]
    ) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(
            topic,
            value,
            key=key.encode("utf-8"),
            partition=message.partition,
            headers=source_headers(message.partition, message.offset),
        )

    async def _commit(self, message: ConsumerRecord[bytes, bytes]) -> None:
        assert self._consumer is not None
        tp = TopicPartition(message.topic, message.partition)
        await self._consumer.commit({tp: message.offset + 1})
        self.ledger.committed(message.partition, message.offset + 1)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


async def read_to_end(
    bootstrap: str, topic: str, partitions: list[int]
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic``'s ``partitions`` up to the end offsets seen at the start."""
    if not partitions:
        return
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
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
