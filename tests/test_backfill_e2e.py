"""Acceptance: a 25 s monitor outage, repaired from the post-call transcripts.

Simulator (handshakes answered 503 for 25 s, sockets dropped every few seconds, conversations
starting and ending during the outage, webhooks on), ``convostream collect``, ``convostream
webhooks`` (receiver + backfill) and ``convostream process`` on the embedded broker. After the
backfill every conversation's turn counts in SQL equal what the simulator generated, each
conversation has one verdict (``repaired`` when the live stream lost turns, else ``complete``),
and no turn is on the events topic twice (live and backfilled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from convostream.broker import create_topics, free_port
from schemas.topics import CONVERSATIONS, MONITOR_EVENTS
from tests.cli_process import CliProcess
from tests.collector_harness import (
    CollectorProcess,
    collector_env,
    fence,
    ground_truth,
    read_topic,
)
from tests.processor_harness import ProcessorProcess, processor_env, sqlite_rows

pytestmark = pytest.mark.integration

KEY = "sim-key-" + uuid.uuid4().hex
SECRET = "whsec-" + uuid.uuid4().hex
TURN_TYPES = {
    "user_transcript": "user_turns",
    "agent_response": "agent_turns",
    "interruption": "interruptions",
    "agent_response_correction": "corrections",
    "agent_tool_response": "tool_calls",
}


def _sql(db: Path, query: str) -> list[tuple[Any, ...]]:
    try:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return conn.execute(query).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


async def _verdict_records(bootstrap: str, prefix: str) -> Counter[str]:
    lifecycle = await read_topic(bootstrap, CONVERSATIONS.full_name(prefix))
    return Counter(r.value["conversation_id"] for r in lifecycle if r.value["verdict"])


async def _settled(port: int, count: int, proc: CliProcess) -> None:
    """Until the backfill's metrics say it knows ``count`` verdicts."""
    want = f"convostream_backfill_settled_conversations {float(count)}"
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while True:
            assert proc.alive(), proc.failure_text()
            try:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    if want in (await resp.text()).splitlines():
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)


def _generated(path: Path) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for line in ground_truth(path):
        kind = json.loads(line["frame"])["type"]
        if kind in TURN_TYPES:
            counts[line["conversation_id"]][TURN_TYPES[kind]] += 1
    return counts


@pytest.mark.parametrize(
    ("outage", "turns"),
    # longer than the 100-frame replay covers, and shorter (on Kafka the long one: CI time)
    [
        pytest.param("4:25", 10, id="outage-25s"),
        pytest.param("4:5", 6, id="outage-5s", marks=pytest.mark.tansu_only),
    ],
)
async def test_outage_is_repaired_from_transcripts(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path, outage: str, turns: int
) -> None:
    prefix = f"b{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    hook_port, ops_port = free_port(), free_port()
    gt = tmp_path / "gt.jsonl"
    sim = await simulator_factory(
        api_key=KEY, seed=21, conversations=6, duration=26, events_per_second=7, turns=turns,
        disconnect_every=3, outage=outage, processing_seconds=0.5, ground_truth=gt,
        webhook_url=f"http://127.0.0.1:{hook_port}/hook", webhook_secret=SECRET,
    )  # fmt: skip
    db = tmp_path / "metrics.db"
    env = {"CONVOSTREAM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
           "CONVOSTREAM_TOPIC_PREFIX": prefix}  # fmt: skip
    webhooks = CliProcess(
        "webhooks",
        {
            **env,
            "CONVOSTREAM_UPSTREAM_URL": sim.url,
            "CONVOSTREAM_API_KEY": KEY,
            "CONVOSTREAM_WEBHOOK_SECRET": SECRET,
            "CONVOSTREAM_WEBHOOK_HOST": "127.0.0.1",
            "CONVOSTREAM_WEBHOOK_PORT": str(hook_port),
            "CONVOSTREAM_METRICS_PORT": str(ops_port),
        },
        tmp_path,
    )
    collector = CollectorProcess(
        "c0", collector_env(kafka_broker.bootstrap, sim.url, KEY, prefix, f"g-{prefix}"), tmp_path
    )
    processor = ProcessorProcess(
        processor_env(kafka_broker.bootstrap, prefix, f"sqlite:///{db}", tmp_path / "state"),
        tmp_path,
    )
    for proc in (webhooks, processor, collector):
        proc.start()
    try:
        await sim.wait_finished(180)
        assert sim.status()["handshakes_refused"] > 0
        generated = _generated(gt)
        verdicts: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while len(verdicts) < len(generated) and time.monotonic() < deadline:
            assert webhooks.alive(), webhooks.failure_text()
            await asyncio.sleep(1.0)
            lifecycle = await read_topic(kafka_broker.bootstrap, CONVERSATIONS.full_name(prefix))
            verdicts = {r.value["conversation_id"]: r.value["verdict"] for r in lifecycle
                        if r.value["verdict"]}  # fmt: skip
        missing = set(generated) - set(verdicts)
        assert not missing, [r.value for r in lifecycle if r.value["conversation_id"] in missing]
        # Tansu hides the tail of a partition's last batch (README): make the collector's last
        # events visible to the processor, as the lifecycle reads above did for the backfill
        await fence(kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix))
        expected = {cid: {m: c[m] for m in TURN_TYPES.values()} for cid, c in generated.items()}
        actual: dict[str, dict[str, int]] = {}
        deadline = time.monotonic() + 90
        while actual != expected and time.monotonic() < deadline:
            assert processor.alive(), processor.failure_text()
            await asyncio.sleep(1.0)
            rows = sqlite_rows(db)
            actual = {cid: {m: rows[cid][m] for m in TURN_TYPES.values()}
                      for cid in generated if cid in rows}  # fmt: skip
        assert actual == expected
        # for data teams: one summary per conversation with its verdict, one row per turn
        summaries: dict[str, tuple[Any, ...]] = {}
        want = {cid: (verdicts[cid], c["user_turns"], c["agent_turns"])
                for cid, c in expected.items()}  # fmt: skip
        deadline = time.monotonic() + 60
        while summaries != want and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            summaries = {r[0]: tuple(r[1:]) for r in _sql(db, "SELECT conversation_id, verdict, "
                         "user_turns, agent_turns FROM conversation_summaries")}  # fmt: skip
        assert summaries == want
        user_rows = Counter(r[0] for r in _sql(db, "SELECT conversation_id FROM "
                            "conversation_transcripts WHERE role = 'user'"))  # fmt: skip
        assert user_rows == {cid: c["user_turns"] for cid, c in expected.items()}
        events = [r.value for r in await read_topic(
            kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix))]  # fmt: skip
        given = await _verdict_records(kafka_broker.bootstrap, prefix)
        assert set(given.values()) == {1}  # one verdict each
        # A restarted backfill reads its verdicts back and publishes nothing again.
        assert webhooks.stop() == 0
        webhooks.start()
        await _settled(ops_port, len(generated), webhooks)
        assert await _verdict_records(kafka_broker.bootstrap, prefix) == given
        again = await read_topic(kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix))
        assert len([r for r in again if r.value["source"] == "backfill"]) == len(
            [e for e in events if e["source"] == "backfill"]
        )
    finally:
        for proc in (collector, webhooks, processor):
            if proc.alive():
                proc.stop()
    # No turn is there twice, live and backfilled (the processors count keys, not turns).
    turns = Counter(
        (e["conversation_id"], e["type"], e["upstream_event_id"], e["payload"][1].get("tool_call_id"))  # noqa: E501
        for e in events if e["type"] in TURN_TYPES
    )  # fmt: skip
    assert max(turns.values()) == 1
    backfilled = {e["conversation_id"] for e in events if e["source"] == "backfill"}
    live_turns = Counter(e["conversation_id"] for e in events
                         if e["source"] == "live" and e["type"] in TURN_TYPES)  # fmt: skip
    for cid, counts in generated.items():
        missed = sum(counts.values()) - live_turns[cid]
        if missed:  # the live stream lost turns: only the transcript can have brought them back
            assert verdicts[cid] == "repaired", cid
            assert cid in backfilled
        else:
            assert verdicts[cid] == "complete", cid
            assert cid not in backfilled
    assert "repaired" in verdicts.values()
    assert "complete" in verdicts.values()
    assert SECRET not in webhooks.log_text()


async def test_conversations_no_collector_saw_are_repaired_whole(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    """No collector runs at all: every conversation is known only by its post-call webhook,
    and after ``--unseen-seconds`` each is repaired whole from it (every turn republished)."""
    prefix = f"u{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    hook_port = free_port()
    gt = tmp_path / "gt.jsonl"
    sim = await simulator_factory(
        api_key=KEY, seed=23, conversations=3, duration=6, events_per_second=8, turns=4,
        processing_seconds=0.2, ground_truth=gt,
        webhook_url=f"http://127.0.0.1:{hook_port}/hook", webhook_secret=SECRET,
    )  # fmt: skip
    webhooks = CliProcess(
        "webhooks",
        {
            "CONVOSTREAM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
            "CONVOSTREAM_TOPIC_PREFIX": prefix,
            "CONVOSTREAM_UPSTREAM_URL": sim.url,
            "CONVOSTREAM_API_KEY": KEY,
            "CONVOSTREAM_WEBHOOK_SECRET": SECRET,
            "CONVOSTREAM_WEBHOOK_HOST": "127.0.0.1",
            "CONVOSTREAM_WEBHOOK_PORT": str(hook_port),
            "CONVOSTREAM_WEBHOOK_UNSEEN_SECONDS": "2",
        },
        tmp_path,
    )
    webhooks.start()
    try:
        await sim.wait_finished(120)
        generated = _generated(gt)
        verdicts: Counter[str] = Counter()
        deadline = time.monotonic() + 60
        while set(verdicts) != set(generated) and time.monotonic() < deadline:
            assert webhooks.alive(), webhooks.failure_text()
            await asyncio.sleep(1.0)
            verdicts = await _verdict_records(kafka_broker.bootstrap, prefix)
        assert verdicts == Counter(dict.fromkeys(generated, 1))
        lifecycle = await read_topic(kafka_broker.bootstrap, CONVERSATIONS.full_name(prefix))
        assert {r.value["verdict"] for r in lifecycle} == {"repaired"}
        events = await read_topic(kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix))
        republished: dict[str, Counter[str]] = defaultdict(Counter)
        for record in events:
            assert record.value["source"] == "backfill"
            republished[record.value["conversation_id"]][TURN_TYPES[record.value["type"]]] += 1
        assert republished == generated
        assert "conversation missed by every collector" in webhooks.log_text()
    finally:
        webhooks.stop()
