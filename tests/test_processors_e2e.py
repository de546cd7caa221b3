"""Processors end to end: simulator, ``convostream collect`` and ``convostream process`` on the
embedded broker; the SQL rows must equal an independent computation from the events topic.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from convostream.broker import create_topics, free_port
from schemas.topics import CONVERSATIONS, EVENTS_LATE, METRICS_AGENT_WINDOWS, MONITOR_EVENTS
from tests.collector_harness import CollectorProcess, collector_env, read_topic
from tests.processor_harness import (
    ProcessorProcess,
    expected_rows,
    processor_env,
    sqlite_rows,
)

pytestmark = pytest.mark.integration

KEY = "sim-key-" + uuid.uuid4().hex
# reorder well within the 10 s grace; reconnects make the collector replay and de-duplicate
SIM = {
    "reorder_ms": 400,
    "disconnect_every": 6,
    "events_per_second": 8,
    "ramp_seconds": 2,
    "conversations": 16,
    "agents": 3,
}


async def _run_pipeline(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path, kill_after: float | None
) -> tuple[dict[str, Any], dict[str, Any], ProcessorProcess, str]:
    prefix = f"p{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    sim = await simulator_factory(api_key=KEY, seed=5, **SIM)
    collector = CollectorProcess(
        "c0",
        collector_env(kafka_broker.bootstrap, sim.url, KEY, prefix, f"g-{prefix}"),
        tmp_path,
    )
    db = tmp_path / "metrics.db"
    processor = ProcessorProcess(
        processor_env(
            kafka_broker.bootstrap,
            prefix,
            f"sqlite:///{db}",
            tmp_path / "state",
            CONVOSTREAM_METRICS_PORT=str(free_port()),
        ),
        tmp_path,
    )
    processor.start()
    collector.start()
    try:
        if kill_after is not None:
            await asyncio.sleep(kill_after)
            assert processor.alive(), processor.log_text()[-3000:]
            processor.kill()
            await asyncio.sleep(1.0)
            processor.start()
        await sim.wait_finished(180)
        await asyncio.sleep(2.0)
        assert collector.stop() == 0, collector.log_text()[-3000:]
        events = [
            r.value
            for r in await read_topic(kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix))
        ]
        lifecycle = [
            r.value
            for r in await read_topic(kafka_broker.bootstrap, CONVERSATIONS.full_name(prefix))
        ]
        expected = expected_rows(events, lifecycle)
        assert (
            len(expected) >= SIM["conversations"] // 2
        )  # the collector's completeness is its own test
        deadline = time.monotonic() + 120
        actual = sqlite_rows(db)
        while actual != expected and time.monotonic() < deadline:
            assert processor.alive(), processor.log_text()[-3000:]
            await asyncio.sleep(1.0)
            actual = sqlite_rows(db)
        return expected, actual, processor, prefix
    except BaseException:
        if processor.alive():
            processor.stop()
        raise


def _diff(expected: dict[str, Any], actual: dict[str, Any]) -> list[Any]:
    return [
        (
            cid,
            {
                k: (row[k], actual.get(cid, {}).get(k))
                for k in row
                if row[k] != actual.get(cid, {}).get(k)
            },
        )
        for cid, row in expected.items()
        if actual.get(cid) != row
    ]


async def test_sql_rows_equal_independent_computation(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    expected, actual, processor, prefix = await _run_pipeline(
        kafka_broker, simulator_factory, tmp_path, kill_after=None
    )
    try:
        assert actual == expected, _diff(expected, actual)
        assert any(r["status"] == "ended" for r in actual.values())
        assert any(r["latency_pairs"] for r in actual.values())
        # live lookup of one conversation
        cid = sorted(expected)[0]
        port = processor.env["CONVOSTREAM_PROCESSOR_WEB_PORT"]
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/conversations/{cid}/"
            async with session.get(url) as resp:
                assert resp.status == 200
                body = await resp.json()
        assert body["events_total"] == expected[cid]["events_total"]
        # Prometheus: counters by type and agent, never a conversation id
        metrics_port = processor.env["CONVOSTREAM_METRICS_PORT"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp,
        ):
            scraped = await resp.text()
        assert 'convostream_events_total{type="user_transcript"}' in scraped
        assert "convostream_response_latency_seconds_bucket" in scraped
        assert not any(c in scraped for c in expected)
        # every event is in a final window or on the late topic (windows close by idle timeout)
        total = sum(r["events_total"] for r in expected.values())
        deadline = time.monotonic() + 60
        counted = 0
        while time.monotonic() < deadline:
            windows = await read_topic(
                kafka_broker.bootstrap, METRICS_AGENT_WINDOWS.full_name(prefix)
            )
            late = await read_topic(kafka_broker.bootstrap, EVENTS_LATE.full_name(prefix))
            counted = sum(w.value["events_total"] for w in windows) + len(late)
            if counted >= total:
                break
            await asyncio.sleep(1.0)
        assert counted == total
        assert all(w.value["final"] for w in windows)
    finally:
        assert processor.stop() == 0, processor.log_text()[-3000:]


async def test_sigkilled_processor_resumes_with_identical_rows(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    expected, actual, processor, _ = await _run_pipeline(
        kafka_broker, simulator_factory, tmp_path, kill_after=6.0
    )
    try:
        assert actual == expected, _diff(expected, actual)
    finally:
        processor.stop()
