"""The command worker: ``convai.commands`` in, frames upstream, ``convai.command-results`` out.

Per command, in this order (each step is a crash point; see the ledger for how a restart reads
them back):
1. receive (offset not committed yet);
2. decide (sans-I/O, ``decide.py``); conversation check and socket for deliverable commands;
3. write the *intent* (the command, key = command_id, headers = source partition/offset) to
   ``convai.command-intents``, acks=all; the frame is written only if no earlier intent in
   that partition claimed the command id (any other copy is a duplicate);
4. check ``expires_at`` once more, then write the frame on the socket;
5. write the one result (same headers, same partition number as the command), acks=all;
6. commit the offset.
A crash before 3 leaves nothing: the command is decided again. A crash between 3 and 5 leaves an
intent without a result: the command is answered ``failed`` (in doubt), never written again. A
crash between 5 and 6 leaves a result: the command is skipped. Commands are handled one at a
time, and a revoked partition is released only after the command in hand is finished. A worker
stalled past its session timeout while another takes over still writes no second frame (only
the first intent claims the command id), but it may write a second result for the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError
from aiokafka.structs import ConsumerRecord

from commands.decide import (
    DUPLICATE_REASON,
    Decider,
    Deliver,
    Finish,
    Skip,
    command_key,
)
from commands.frames import encode_frame
from commands.intents import IntentTail
from commands.keyring import KeyRing
from commands.ledger import CommandLedger, claim_horizon_micros, read_source, source_headers
from commands.metrics import CommandMetrics, type_label
from commands.policy import Policy
from commands.pool import ConnectFailed, SocketPool
from commands.ratelimit import RateLimiter
from commands.settings import CRASH_POINTS, CommandWorkerSettings
from commands.validate import Limits, check_conversation
from convostream.assignment import PausedAssignment
from convostream.logs import get_logger
from convostream.ops import Health
from convostream.topic_reader import read_to_end
from schemas.clock import now_micros
from schemas.commands import CHAT_ONLY
from schemas.records import CommandResult
from schemas.serde import Serde, SerdeError
from schemas.topics import COMMAND_INTENTS, COMMAND_RESULTS, COMMANDS
from upstream.conversations import ConversationApi
from upstream.rest import UpstreamError
from upstream.websocket import ClientConnection, ConnectionClosed, State

log = get_logger(__name__)

KIND_CACHE_SIZE = 10_000
HOUSEKEEPING_EVERY = 1.0
# Longest wait for the intents reader: up to the worker's own intent (else the command fails
# without a frame), and to the end offsets seen on an assignment (else the worker stops).
CLAIM_TIMEOUT = 10.0
CATCH_UP_TIMEOUT = 120.0
# An open pooled socket stands for a live conversation: the upstream accepts monitor sockets
# for live conversations only and closes them when the conversation ends.
LIVE = "in-progress"


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
        self.worker.health.set("assignment", False, "rebalancing")
        async with self.worker.busy:  # the command in hand finishes first
            for tp in revoked:
                self.worker.ledger.forget(tp.partition)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # no heartbeat until this returns (convostream.assignment): the loop rebuilds them
        self.worker.assigned(assigned)


class CommandWorker:
    """One worker process; ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: CommandWorkerSettings,
        policy: Policy,
        keys: KeyRing,
        serde: Serde,
        metrics: CommandMetrics,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.serde = serde
        self.metrics = metrics
        self.health = health or Health("command-worker")
        prefix = settings.topic_prefix
        self.commands_topic = COMMANDS.full_name(prefix)
        self.results_topic = COMMAND_RESULTS.full_name(prefix)
        self.intents_topic = COMMAND_INTENTS.full_name(prefix)
        self.ledger = CommandLedger()
        self.limits = Limits(
            settings.commands_max_text_chars,
            int(settings.commands_max_ttl * 1_000_000),
            int(settings.commands_max_clock_skew * 1_000_000),
        )
        self.decider = Decider(
            policy,
            keys,
            self.limits,
            self.ledger,
            RateLimiter(settings.commands_rate_per_second, settings.commands_rate_burst),
        )
        self.intents = IntentTail(
            settings.kafka_bootstrap,
            self.intents_topic,
            serde,
            self.ledger,
            settings.fetch_wait_ms(settings.commands_fetch_wait_ms),
            settings.kafka_security(),
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
        self._unbuilt = PausedAssignment()  # assigned, ledger not yet rebuilt
        self._chat: OrderedDict[str, bool | None] = OrderedDict()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.worker_id = settings.worker_id()

    # ----- lifecycle ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        bootstrap = self.settings.kafka_bootstrap
        security = self.settings.kafka_security().client_kwargs()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            **security,
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            **security,
            group_id=self.settings.commands_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=self.worker_id,
            fetch_max_wait_ms=self.settings.fetch_wait_ms(self.settings.commands_fetch_wait_ms),
            session_timeout_ms=self.settings.group_session_timeout_ms,
            heartbeat_interval_ms=self.settings.group_heartbeat_ms(),
        )
        await self._producer.start()
        try:
            await self._check_partitions()
            horizon = claim_horizon_micros(
                self.limits.max_ttl_micros, self.limits.max_clock_skew_micros
            )
            await self.intents.start(
                await self._producer.partitions_for(self.intents_topic),
                (now_micros() - horizon) // 1000,
            )
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
            await self.intents.stop()
            await self._producer.stop()
            await self.pool.close()
            await self.api.close()
            log.info("command worker stopped", worker_id=self.worker_id)

    def assignment(self) -> set[int]:
        """The partitions of ``convai.commands`` this worker holds now."""
        if self._consumer is None:
            return set()
        return {tp.partition for tp in self._consumer.assignment()}

    async def _check_partitions(self) -> None:
        assert self._producer is not None
        counts = {}
        for topic in (self.commands_topic, self.results_topic):
            parts = await self._producer.partitions_for(topic)
            counts[topic] = len(parts)
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"commands and results need equal partition counts: {counts}")

    async def _loop(self, stop: asyncio.Event) -> None:
        assert self._consumer is not None
        last_housekeeping = time.monotonic()
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if self._unbuilt:
                    async with self.busy:
                        await self._unbuilt.rebuild(self._consumer, self.rebuild)
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
                    failure = self.intents.failure()
                    if failure is not None:
                        raise RuntimeError("the command intents reader failed") from failure
                    await self.pool.sweep()
                    self.decider.housekeeping(now_micros())
                    self.metrics.sockets.set(len(self.pool))
                    self.metrics.ledger.set(self.ledger.size())
        finally:
            stopping.cancel()

    # ----- rebuilding the ledger on assignment ---------------------------------------------
    def assigned(self, assigned: list[TopicPartition]) -> None:
        """A new assignment: its partitions are paused until their ledger is rebuilt."""
        assert self._consumer is not None
        self._unbuilt.assigned(self._consumer, assigned)

    async def rebuild(self, assigned: list[TopicPartition]) -> None:
        """Catch the intents reader up, then read the assigned partitions' results to the end."""
        assert self._consumer is not None
        started = time.monotonic()
        if not await self.intents.caught_up(await self.intents.end_offsets(), CATCH_UP_TIMEOUT):
            raise RuntimeError(f"intents not read to the end within {CATCH_UP_TIMEOUT:g} s")
        committed: dict[int, int] = {}
        for tp in assigned:
            self.ledger.forget(tp.partition)
            committed[tp.partition] = await self._consumer.committed(tp) or 0
        partitions = [tp.partition for tp in assigned]
        results = 0
        async for record in read_to_end(
            self.settings.kafka_bootstrap,
            self.results_topic,
            partitions,
            self.settings.kafka_security(),
        ):
            source = read_source(record.headers)
            if source is not None:
                self.ledger.note_result(*source)
                results += 1
        for partition, offset in committed.items():
            self.ledger.committed(partition, offset)
        log.info(
            "command partitions assigned",
            partitions=sorted(partitions),
            results_read=results,
            ledger_entries=self.ledger.size(),
            seconds=round(time.monotonic() - started, 3),
        )
        self.health.set("assignment", True)  # ledger rebuilt: ready to decide

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
        else:
            if isinstance(decision, Finish):
                outcome = decision
            else:
                assert isinstance(command, dict)
                outcome = await self._deliver(message, command, decision)
            await self._finish(message, command, outcome)
        await self._commit(message)

    async def _deliver(
        self, message: ConsumerRecord[bytes, bytes], command: dict[str, Any], decision: Deliver
    ) -> Finish:
        conversation = command["conversation_id"]
        kind = command["command_type"]
        ws = self.pool.warm(conversation)
        socket_kind = "warm" if ws is not None else "cold"
        status: str | None = LIVE
        chat = self._chat.get(conversation)
        if ws is None or (kind in CHAT_ONLY and chat is None):  # kinds are cached from REST
            try:
                info = await self.api.conversation(conversation)
            except UpstreamError as exc:
                return Finish("failed", str(exc))
            status, chat = info.status, info.chat
            self._remember_kind(conversation, chat)
        problem = check_conversation(kind, status, chat)  # on every command, warm or cold
        if problem is not None:
            return Finish("rejected", problem)
        if ws is None:
            try:
                ws = await self.pool.open(conversation)
            except ConnectFailed as exc:
                return Finish("failed", str(exc))
        refused = await self._claim(message, command)
        if refused is not None:
            return refused
        return await self._write(message, command, ws, encode_frame(decision.frame), socket_kind)

    async def _claim(
        self, message: ConsumerRecord[bytes, bytes], command: dict[str, Any]
    ) -> Finish | None:
        """Write the intent; None if it is the first intent for the command id in log order,
        else the command's outcome.

        The intents reader needs to have read only the records before this intent: if none of
        them claimed the id, this one does. When the reader is idle at the end of the partition
        (the usual case) that holds at once, so claiming costs no extra round trip.
        """
        assert self._producer is not None
        written = await self._producer.send_and_wait(
            self.intents_topic,
            self.serde.encode("ControlCommand", command),
            key=command["command_id"].encode("utf-8"),
            headers=source_headers(message.partition, message.offset),
        )
        self.crash.at("after_intent")
        at = (written.partition, written.offset)
        if not await self.intents.caught_up({at[0]: at[1]}, CLAIM_TIMEOUT):
            return Finish(
                "failed",
                f"could not read the intents before its own within {CLAIM_TIMEOUT:g} s to "
                "confirm that no other copy claimed the command first; nothing written upstream",
            )
        if self.ledger.claim(command_key(command)) not in (None, at):
            return Finish("duplicate", DUPLICATE_REASON)
        return None

    async def _write(
        self,
        message: ConsumerRecord[bytes, bytes],
        command: dict[str, Any],
        ws: ClientConnection,
        text: str,
        socket_kind: str,
    ) -> Finish:
        if now_micros() >= command["expires_at"]:
            return Finish("expired", "expired while the socket was opened")
        if ws.state is not State.OPEN:  # closed after it was chosen: nothing written
            return Finish(
                "failed",
                f"monitor socket closed before the write ({ws.close_code} "
                f"{ws.close_reason or 'no reason'}); the conversation may have ended",
            )
        try:  # from here on the frame is in the transport: a failure leaves the outcome unknown
            await asyncio.wait_for(ws.send(text), self.settings.commands_connect_timeout)
        except (ConnectionClosed, TimeoutError):
            await self.pool.discard(command["conversation_id"])
            return Finish(
                "failed",
                "monitor socket failed during the write; the frame "
                "may or may not have reached the upstream; not retried",
            )
        delivered_at = now_micros()
        self.crash.at("after_write")
        self.metrics.delivery.labels(socket_kind).observe(
            max(0.0, delivered_at / 1e6 - message.timestamp / 1e3)
        )
        return Finish("delivered", None, delivered_at)

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
        outcome: Finish,
    ) -> None:
        """Write the command's one result (the only place results are written)."""
        status, reason = outcome.status, outcome.reason
        fields = command if isinstance(command, Mapping) else {}
        key = message.key.decode("utf-8", "replace") if message.key else ""
        result: CommandResult = {
            "command_id": _text(fields.get("command_id"))
            or f"undecodable:{message.topic}:{message.partition}:{message.offset}",
            "conversation_id": _text(fields.get("conversation_id")) or key,
            "command_type": _text(fields.get("command_type")),
            "status": status,
            "reason": reason,
            "decided_at": now_micros(),
            "worker_id": self.worker_id,
            "delivered_at": outcome.delivered_at,
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
        try:
            await self._consumer.commit({tp: message.offset + 1})
        except CommitFailedError:  # the partition moved: its new owner finds the result
            log.warning("offset commit failed after a rebalance", partition=message.partition)
            return
        self.ledger.committed(message.partition, message.offset + 1)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
