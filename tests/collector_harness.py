"""Helpers for the collector's integration tests: subprocess collectors, topic reads, a proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from convostream.broker import partitions_of
from schemas.serde import Serde
from tests.cli_process import CliProcess

SERDE = Serde()


class CollectorProcess(CliProcess):
    """``python -m convostream collect`` under a fixed collector id."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        super().__init__("collect", {**env, "CONVOSTREAM_COLLECTOR_ID": name}, log_dir, name)

    async def joined(self, timeout: float = 120) -> None:
        """Until the collector says it joined its group (seconds on a busy machine): a
        conversation that ends before any collector runs is out of every collector's reach."""
        async with asyncio.timeout(timeout):
            while '"collector started"' not in self.log_text():
                assert self.alive(), self.failure_text()
                await asyncio.sleep(0.1)


def collector_env(
    bootstrap: str, upstream: str, key: str, prefix: str, group: str, **extra: str
) -> dict[str, str]:
    return {
        "CONVOSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "CONVOSTREAM_UPSTREAM_URL": upstream,
        "CONVOSTREAM_API_KEY": key,
        "CONVOSTREAM_TOPIC_PREFIX": prefix,
        "CONVOSTREAM_COLLECTOR_GROUP_ID": group,
        "CONVOSTREAM_LOG_FORMAT": "json",
        "CONVOSTREAM_COLLECTOR_POLL_INTERVAL": "0.5",
        "CONVOSTREAM_COLLECTOR_BACKOFF_BASE": "0.1",
        "CONVOSTREAM_COLLECTOR_BACKOFF_MAX": "2",
        **extra,
    }


@dataclass
class Record:
    partition: int
    offset: int
    value: dict[str, Any]
    raw: bytes


async def new_topic(bootstrap: str, stem: str, partitions: int = 2) -> str:
    """A topic of a fresh name (``stem`` and a random suffix) with ``partitions``, 1 replica."""
    topic = f"{stem}-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def fence(bootstrap: str, topic: str) -> None:
    """Write a one-record tombstone batch to every partition of ``topic``.

    Tansu 0.6 sets a partition's high watermark to the last batch's base offset + 1, so the
    tail of a multi-record batch stays invisible to consumers until another batch arrives (see
    the report); a single-record batch after everything makes all of it readable.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        partitions = await producer.partitions_for(topic)
        for partition in sorted(partitions):
            await producer.send_and_wait(topic, None, key=b"fence", partition=partition)
    finally:
        await producer.stop()


async def raw_records(
    bootstrap: str, topic: str, tombstones: bool = False
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` as stored (tombstones only when asked), in partition and
    offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        parts = await partitions_of(consumer, topic)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[ConsumerRecord[bytes, bytes]] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                out += [
                    m
                    for m in messages
                    if m.offset < ends[tp] and (tombstones or m.value is not None)
                ]
        return sorted(out, key=lambda m: (m.partition, m.offset))
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, serde: Serde = SERDE) -> list[Record]:
    """Every record of ``topic`` (fenced first), decoded, in offset order; tombstones skipped."""
    await fence(bootstrap, topic)
    return [
        Record(m.partition, m.offset, (await serde.resolve(m.value)).record, m.value)
        for m in await raw_records(bootstrap, topic)
        if m.value is not None
    ]


def dump_records(path: Path, records: Iterable[Record]) -> None:
    """Write records as JSON lines (payloads left out), kept beside a test's logs so that a
    failure can be diagnosed after the broker is gone."""
    with path.open("w") as out:
        for rec in records:
            value = {k: v for k, v in rec.value.items() if k != "payload"}
            line = {"partition": rec.partition, "offset": rec.offset, **value}
            out.write(json.dumps(line, default=str) + "\n")


def ground_truth(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@dataclass
class Check:
    missing: list[tuple[str, str]]
    duplicates: int
    copies: dict[tuple[str, str], list[tuple[Any, ...]]]
    mismatched_keys: int
    order_violations: int


def check_events(truth: Iterable[dict[str, Any]], events: list[Record]) -> Check:
    """Match events to the ground truth on (conversation, raw) and check per-connection order."""
    expected = {(g["conversation_id"], g["frame"]) for g in truth}
    seen: Counter[tuple[str, str]] = Counter()
    keys: dict[tuple[str, str], str] = {}
    mismatched = 0
    last_seq: dict[str, int] = defaultdict(lambda: -1)
    violations = 0
    copies: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
    for rec in events:  # offset order within a partition = publish order per conversation
        v = rec.value
        ident = (v["conversation_id"], v["raw"])
        seen[ident] += 1
        copies[ident].append(
            (
                v["collector_id"],
                v["connection_id"],
                v["connection_seq"],
                v["replay"],
                v["event_key"],
            )
        )
        if ident in keys and keys[ident] != v["event_key"]:
            mismatched += 1
        keys.setdefault(ident, v["event_key"])
        if seen[ident] > 1:
            continue
        conn = v["connection_id"]
        if v["connection_seq"] <= last_seq[conn]:
            violations += 1
        last_seq[conn] = v["connection_seq"]
    return Check(
        missing=sorted(expected - set(seen)),
        duplicates=sum(n - 1 for n in seen.values()),
        copies={k: c for k, c in copies.items() if len(c) > 1},
        mismatched_keys=mismatched,
        order_violations=violations,
    )


def unreported_loss(missing: list[tuple[str, str]], lifecycle: list[Record]) -> list[str]:
    """Conversations with missing frames and no gap record saying why.

    A conversation that ends while no collector holds its socket (its owner was killed, or the
    broker outage held the collector back) refuses the reconnect with 1008: frames sent after
    the last replay are gone for good, and the collector must say so with a gap record.
    """
    reported = {
        r.value["conversation_id"]
        for r in lifecycle
        if r.value["state"] == "gap" and "ended_while_disconnected" in (r.value["detail"] or "")
    }
    return sorted({cid for cid, _ in missing} - reported)


class CuttableProxy:
    """A loopback TCP proxy whose :meth:`cut` makes the target unreachable until :meth:`restore`."""

    def __init__(self, target_port: int, port: int) -> None:
        self.target_port = target_port
        self.port = port
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._pipes.difference_update(pipes)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._pipes):
            task.cancel()
