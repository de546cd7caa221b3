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

from convostream.broker import create_topics
from schemas.topics import EVENTS_LATE, METRICS_AGENT_WINDOWS
from tests.collector_harness import CollectorProcess, collector_env, read_topic
from tests.processor_harness import (
    ProcessorProcess,
    expected_from_topics,
    forwarded_events,
    pipeline,
    processor_env,
    sqlite_rows,
    sqlite_windows,
    wait_for_rows,
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
    # Windows aligned to the minute close up to size + grace + idle after their first event:
    # short ones close soon after the run whatever the wall clock says.
    windows = {
        "CONVOSTREAM_PROCESSOR_WINDOW_SECONDS": "10",
        "CONVOSTREAM_PROCESSOR_GRACE_SECONDS": "2",
    }
    collector, processor, db = pipeline(
        kafka_broker.bootstrap, sim.url, KEY, prefix, tmp_path, processor_extra=windows
    )
    processor.start()
    collector.start()
    try:
        if kill_after is not None:
            await asyncio.sleep(kill_after)
            assert processor.alive(), processor.failure_text()
            processor.kill()
            await asyncio.sleep(1.0)
            processor.start()
        await sim.wait_finished(180)
        await asyncio.sleep(2.0)
        assert collector.stop() == 0, collector.failure_text()
        expected, _ = await expected_from_topics(kafka_broker.bootstrap, prefix)
        assert (
            len(expected) >= SIM["conversations"] // 2
        )  # the collector's completeness is its own test
        actual = await wait_for_rows(db, expected, processor)
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
        assert processor.stop() == 0, processor.failure_text()
    # an orderly stop keeps the local table stores for the next start (processors.local_state)
    assert (tmp_path / "state" / "orderly-stop").exists()


async def test_a_processor_group_started_after_the_events_counts_every_one(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    """A new consumer group over an events topic that already holds records (processors
    deployed after the collectors, or a partition that moves before its first commit) starts
    each partition at its first record: the fetches made while the tables recover must not
    leave it further on."""
    prefix = f"p{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    sim = await simulator_factory(api_key=KEY, seed=6, **{**SIM, "conversations": 8})
    collector, processor, db = pipeline(kafka_broker.bootstrap, sim.url, KEY, prefix, tmp_path)
    collector.start()
    await sim.wait_finished(180)
    await asyncio.sleep(2.0)
    assert collector.stop() == 0, collector.failure_text()
    expected, _ = await expected_from_topics(kafka_broker.bootstrap, prefix)
    assert len(expected) >= 4
    processor.start()
    try:
        actual = await wait_for_rows(db, expected, processor, timeout=60)
        assert actual == expected, _diff(expected, actual)
    finally:
        processor.stop()


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


def _differing_fields(records: dict[bytes, dict[str, Any]]) -> list[str]:
    """The fields in which ``records`` differ."""
    values = list(records.values())
    return [k for k in values[0] if any(v[k] != values[0][k] for v in values)]


# window 10 s + grace 10 s + idle 20 s, and then some: every window open at the kill has passed
# its idle deadline by the restart
DOWNTIME = 42.0


async def _unforwarded(bootstrap: str, prefix: str) -> str:
    """Where the windows of the two runs part: events one run's window stage never got."""
    sent = {
        name: await forwarded_events(bootstrap, f"{prefix}{name}-agent-events")
        for name in ("clean", "killed")
    }
    only = {
        name: sorted(set(sent[name]) - set(sent[other]))
        for name, other in (("clean", "killed"), ("killed", "clean"))
    }
    return "; ".join(
        f"forwarded only by the {name} run: {len(keys)}, first {keys[:10]}"
        for name, keys in only.items()
    )


def _windows_done(rows: dict[tuple[str, str], dict[str, Any]], total: int) -> bool:
    """Every window final, and every event in a window or counted late."""
    counted = sum(r["events_total"] + r["late_events"] for r in rows.values())
    return bool(rows) and all(r["final"] for r in rows.values()) and counted == total


async def test_sigkilled_processor_emits_the_windows_of_a_clean_run(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    """Two processors (own groups, state and SQL) on the same events, one SIGKILLed mid-run:
    identical conversation rows and agent windows in SQL, and on the shared windows topic every
    window has one content (the killed one re-emits byte for byte what the clean one emits).

    Windows are short so the run ends soon. The killed processor stays down longer than grace +
    idle timeout past the end of every window open at the kill, so a wall-clock tick on restart
    would close those windows before their backlog is forwarded (the events then late, the
    windows different): idle closing must wait until the restarted worker has caught up.
    """
    prefix = f"p{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    sim = await simulator_factory(api_key=KEY, seed=7, **SIM)
    collector = CollectorProcess(
        "c0",
        collector_env(kafka_broker.bootstrap, sim.url, KEY, prefix, f"g-{prefix}"),
        tmp_path,
    )
    windows = {
        "CONVOSTREAM_PROCESSOR_WINDOW_SECONDS": "10",
        "CONVOSTREAM_PROCESSOR_GRACE_SECONDS": "10",
        "CONVOSTREAM_PROCESSOR_IDLE_SECONDS": "20",
    }
    runs = {
        name: ProcessorProcess(
            processor_env(
                kafka_broker.bootstrap,
                prefix,
                f"sqlite:///{tmp_path / name}.db",
                tmp_path / f"state-{name}",
                CONVOSTREAM_PROCESSOR_APP_ID=name,
                **windows,
            ),
            tmp_path,
            name,
        )
        for name in ("clean", "killed")
    }
    for run in runs.values():
        run.start()
    collector.start()
    try:
        await asyncio.sleep(8.0)
        killed = runs["killed"]
        assert killed.alive(), killed.failure_text()
        killed.kill()
        stores = (tmp_path / "state-killed" / "v1" / "tables").exists()
        await asyncio.sleep(DOWNTIME)
        killed.start()
        await sim.wait_finished(180)
        await asyncio.sleep(2.0)
        assert collector.stop() == 0, collector.failure_text()
        expected, _ = await expected_from_topics(kafka_broker.bootstrap, prefix)
        total = sum(r["events_total"] for r in expected.values() if r["agent_id"] is not None)
        deadline = time.monotonic() + 150
        done = dict.fromkeys(runs, False)
        while not all(done.values()) and time.monotonic() < deadline:
            for name, run in runs.items():
                assert run.alive(), run.failure_text()
                db = tmp_path / f"{name}.db"
                done[name] = sqlite_rows(db) == expected and _windows_done(
                    sqlite_windows(db), total
                )
            await asyncio.sleep(1.0)
        for name in runs:
            assert sqlite_rows(tmp_path / f"{name}.db") == expected, name
        clean = sqlite_windows(tmp_path / "clean.db")
        assert _windows_done(clean, total)
        # killed with its stores open: rebuilt from the changelogs (processors.local_state)
        assert not stores or "local table stores discarded" in killed.log_text()
        restarted = sqlite_windows(tmp_path / "killed.db")
        # not done is not different: on a starved machine it may still be catching up
        assert _windows_done(restarted, total), (
            "the restarted processor had not made every window final within 150 s; "
            + await _unforwarded(kafka_broker.bootstrap, prefix)
        )
        assert restarted == clean, await _unforwarded(kafka_broker.bootstrap, prefix)
        on_topic: dict[tuple[str, int], dict[bytes, dict[str, Any]]] = {}
        for record in await read_topic(
            kafka_broker.bootstrap, METRICS_AGENT_WINDOWS.full_name(prefix)
        ):
            window = (record.value["agent_id"], record.value["window_start"])
            on_topic.setdefault(window, {})[record.raw] = record.value
        assert len(on_topic) == len(clean)
        different = {
            window: {k: [r[k] for r in records.values()] for k in _differing_fields(records)}
            for window, records in on_topic.items()
            if len(records) > 1
        }
        assert not different, different
    finally:
        for run in runs.values():
            if run.proc is not None and run.alive():
                run.stop()
