"""The processor's stored conversation states on a real broker, events produced straight onto
the events topic: long conversations stored in chunks come back whole after a SIGKILL (the
local stores rebuilt from the changelog); states untouched for longer than
``CONVOSTREAM_PROCESSOR_STATE_RETENTION_DAYS`` are deleted (tombstones in the table's
changelog, gone from lookups) while their SQL rows stay, and an old copy of an event of a
deleted conversation is skipped rather than starting an empty state that would overwrite the
conversation's metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from bench.process import make_event
from convostream.broker import create_topics, free_port
from schemas.clock import now_micros
from schemas.topics import MONITOR_EVENTS
from tests.collector_harness import fence, raw_records
from tests.processor_harness import ProcessorProcess, processor_env, sqlite_rows

pytestmark = pytest.mark.integration

RETENTION_S = 10.0
APP_ID = "retention"
COUNTS = [300, 20, 20]  # conv-a's state has a stored chunk


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        acks = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def _latest_by_key(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """The last value of every key of ``topic`` (None: a tombstone)."""
    await fence(bootstrap, topic)
    records = await raw_records(bootstrap, topic, tombstones=True)
    return {m.key: m.value for m in records if m.key is not None}


async def _fresh_topics(bootstrap: str) -> tuple[str, str]:
    """A topic prefix of this test's own, its topics created, and its events topic."""
    prefix = f"s{uuid.uuid4().hex[:8]}."
    await create_topics(bootstrap, prefix=prefix)
    return prefix, MONITOR_EVENTS.full_name(prefix)


def _processor(bootstrap: str, prefix: str, tmp_path: Path, **extra: str) -> ProcessorProcess:
    """A processor on ``prefix`` writing SQLite ``tmp_path/metrics.db`` (not started)."""
    env = processor_env(
        bootstrap, prefix, f"sqlite:///{tmp_path / 'metrics.db'}", tmp_path / "state", **extra
    )
    return ProcessorProcess(env, tmp_path)


async def _metric(port: str, name: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def _lookup_status(port: str, cid: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/conversations/{cid}/") as resp,
    ):
        return resp.status


async def _until(check: Any, timeout: float, what: str, processor: ProcessorProcess) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert processor.alive(), processor.failure_text()
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        await asyncio.sleep(0.5)


async def test_untouched_states_expire_and_old_copies_do_not_revive_them(
    kafka_broker: Any, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    prefix, events = await _fresh_topics(bootstrap)
    db = tmp_path / "metrics.db"
    metrics_port = str(free_port())
    processor = _processor(
        bootstrap,
        prefix,
        tmp_path,
        CONVOSTREAM_METRICS_PORT=metrics_port,
        CONVOSTREAM_PROCESSOR_APP_ID=APP_ID,
        CONVOSTREAM_PROCESSOR_STATE_RETENTION_DAYS=str(RETENTION_S / 86_400),
    )
    web_port = processor.env["CONVOSTREAM_PROCESSOR_WEB_PORT"]
    processor.start()
    try:
        # running once a fresh event shows in SQL (events are stamped when produced: produced
        # before the worker has joined, they would be older than the retention by the time
        # it reads them, and rightly skipped)
        warm = 0

        async def warmed_up() -> bool:
            nonlocal warm
            warm += 1
            await _produce(bootstrap, events, [make_event("warm", "agent-w", warm, now_micros())])
            return "warm" in sqlite_rows(db)

        await _until(warmed_up, 120, "the processor handled a first event", processor)
        cids = ["conv-a", "conv-b", "conv-c"]
        produced = [
            make_event(cid, "agent-r", seq, now_micros())
            for cid, count in zip(cids, COUNTS, strict=True)
            for seq in range(count)
        ]
        await _produce(bootstrap, events, produced)

        async def rows_in() -> bool:
            rows = sqlite_rows(db)
            return [rows.get(cid, {}).get("events_total") for cid in cids] == COUNTS

        await _until(rows_in, 60, "every event in SQL", processor)
        assert {await _lookup_status(web_port, cid) for cid in cids} == {200}

        async def expired() -> bool:
            gone = [await _lookup_status(web_port, cid) == 404 for cid in cids]
            return all(gone)

        await _until(expired, RETENTION_S + 60, "the states deleted past the retention", processor)
        assert await _metric(metrics_port, "convostream_conversation_states_expired_total") >= 3
        changelog = await _latest_by_key(bootstrap, f"{prefix}{APP_ID}-conversations-changelog")
        assert {cid: changelog[cid.encode()] for cid in cids} == dict.fromkeys(cids)
        assert changelog[b"\x00t0:conv-a"] is None  # a chunk goes with its state
        rows = sqlite_rows(db)
        assert [rows[cid]["events_total"] for cid in cids] == COUNTS  # SQL keeps them

        # an old copy of a deleted conversation's event: skipped, counted, nothing rewritten
        old_key, old_value = make_event("conv-a", "agent-r", 0, now_micros() - 3_600_000_000)
        fresh = make_event("conv-new", "agent-r", 0, now_micros())
        await _produce(bootstrap, events, [(old_key, old_value), fresh])

        async def both_handled() -> bool:
            skipped = await _metric(metrics_port, "convostream_expired_events_total")
            return skipped >= 1 and "conv-new" in sqlite_rows(db)

        await _until(both_handled, 60, "the old copy skipped and the fresh event in", processor)
        assert await _metric(metrics_port, "convostream_expired_events_total") == 1
        assert sqlite_rows(db)["conv-a"] == rows["conv-a"]
        assert await _lookup_status(web_port, "conv-a") == 404
    finally:
        assert processor.stop() == 0, processor.failure_text()


async def test_long_conversations_come_back_from_their_chunks_after_a_sigkill(
    kafka_broker: Any, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    prefix, events = await _fresh_topics(bootstrap)
    db = tmp_path / "metrics.db"
    processor = _processor(bootstrap, prefix, tmp_path)
    web_port = processor.env["CONVOSTREAM_PROCESSOR_WEB_PORT"]
    cids = ["long-a", "long-b"]
    start = now_micros()
    await _produce(
        bootstrap,
        events,
        [make_event(cid, "agent-l", seq, start + seq) for cid in cids for seq in range(700)],
    )
    processor.start()
    try:

        def totals() -> list[int | None]:
            rows = sqlite_rows(db)
            return [rows.get(cid, {}).get("events_total") for cid in cids]

        async def all_in() -> bool:
            return totals() == [700, 700]

        await _until(all_in, 120, "700 events of each conversation in SQL", processor)
        processor.kill()  # its stores open: rebuilt from the changelog at the next start
        processor.start()
        # five new events each, and a copy of the first event received earlier than it: a
        # value in the first stored chunk changes
        more = [
            make_event(cid, "agent-l", seq, now_micros()) for cid in cids for seq in range(700, 705)
        ]
        copy_key, copy = make_event("long-a", "agent-l", 0, start - 1_000)
        await _produce(bootstrap, events, [*more, (copy_key, copy)])

        async def caught_up() -> bool:
            first = sqlite_rows(db).get("long-a", {}).get("first_received_at")
            return totals() == [705, 705] and first == start - 1_000

        await _until(caught_up, 120, "the events after the restart in SQL", processor)
        assert "local table stores discarded" in processor.log_text()
        for cid in cids:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{web_port}/conversations/{cid}/") as resp,
            ):
                assert resp.status == 200
                assert (await resp.json())["events_total"] == 705
    finally:
        assert processor.stop() == 0, processor.failure_text()
