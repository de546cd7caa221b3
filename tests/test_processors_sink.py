"""The SQL sink against real SQLite and a real PostgreSQL 15 started by the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from convostream.broker import free_port
from processors.sink import SCHEMA_VERSION, Sink, open_sink
from tests.needs import missing_tool

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _conversation(events_total: int, status: str = "active") -> dict[str, Any]:
    return {
        "conversation_id": "conv-1",
        "agent_id": "agent-1",
        "status": status,
        "events_by_type": {"user_transcript": 2, "agent_response": events_total - 2},
        "events_total": events_total,
        "user_turns": 2,
        "agent_turns": events_total - 2,
        "interruptions": 0,
        "corrections": 1,
        "tool_calls": 0,
        "tool_errors": 0,
        "latency_pairs": 2,
        "latency_p50_ms": 120.5,
        "latency_p95_ms": 900.0,
        "first_received_at": 1_700_000_000_000_000,
        "last_received_at": 1_700_000_060_123_456,
        "updated_at": 1_700_000_061_000_000,
    }


def _window(final: bool, events_total: int, late: int = 0) -> dict[str, Any]:
    return {
        "agent_id": "agent-1",
        "window_start": 1_700_000_040_000_000,
        "window_end": 1_700_000_100_000_000,
        "events_by_type": {"ping": events_total},
        "events_total": events_total,
        "conversations": 1,
        "user_turns": 0,
        "agent_turns": 0,
        "interruptions": 0,
        "tool_errors": 0,
        "late_events": late,
        "final": final,
        "closed_by": "event_time" if final else None,
        "emitted_at": 1_700_000_111_000_000,
    }


def _pg_run(*args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port, owned by user postgres."""
    if not (PG_BIN / "initdb").exists():
        missing_tool(
            f"PostgreSQL 15 binaries not found in {PG_BIN} (apt-get install postgresql-15)"
        )
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        missing_tool("starting PostgreSQL as user postgres needs root and runuser")
    base = Path(tempfile.mkdtemp(prefix="convostream-pg-"))
    data = base / "data"
    shutil.chown(base, "postgres", "postgres")
    port = free_port()
    _pg_run(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
    _pg_run(
        str(PG_BIN / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(base / "log"),
        "-o",
        f"-p {port} -h 127.0.0.1 -k {base}",
        "-w",
        "start",
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _pg_run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def sink_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metrics.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    try:  # each test starts from an empty database
        await conn.execute(
            "DROP TABLE IF EXISTS conversation_metrics, agent_window_metrics, "
            "conversation_transcripts, conversation_summaries, convostream_schema_migrations"
        )
    finally:
        await conn.close()
    yield url


async def _rows(url: str, table: str) -> list[dict[str, Any]]:
    return await _query(url, f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608


async def _query(url: str, query: str) -> list[dict[str, Any]]:
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(query).fetchall()]
        finally:
            conn.close()
    import asyncpg

    pg = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await pg.fetch(query)]
    finally:
        await pg.close()


async def _started(url: str) -> Sink:
    sink = open_sink(url)
    await sink.start()
    return sink


pytestmark = pytest.mark.integration


async def test_migration_is_versioned_and_rerunnable(sink_url: str) -> None:
    for _ in range(2):  # a second start finds the schema current and changes nothing
        sink = await _started(sink_url)
        await sink.close()
    versions = await _rows(sink_url, "convostream_schema_migrations")
    assert [v["version"] for v in versions] == list(range(1, SCHEMA_VERSION + 1))


async def test_upserts_are_idempotent_and_never_go_backwards(sink_url: str) -> None:
    sink = await _started(sink_url)
    try:
        for _ in range(3):  # a replay rewrites the same row
            await sink.write([_conversation(10)], [_window(False, 5)])
        first = await _rows(sink_url, "conversation_metrics")
        assert len(first) == 1
        assert first[0]["events_total"] == 10
        assert first[0]["latency_p95_ms"] == 900.0
        await sink.write([_conversation(12, "ended")], [_window(True, 7)])
        await sink.write([_conversation(11)], [_window(False, 9)])  # stale: ignored
        (row,) = await _rows(sink_url, "conversation_metrics")
        assert (row["events_total"], row["status"]) == (12, "ended")
        (window,) = await _rows(sink_url, "agent_window_metrics")
        assert (window["events_total"], bool(window["final"])) == (7, True)
        await sink.write([], [_window(True, 7, late=2)])  # only late_events may still move
        (window,) = await _rows(sink_url, "agent_window_metrics")
        assert (window["events_total"], window["late_events"]) == (7, 2)
    finally:
        await sink.close()


# The README's example queries: they must run unchanged on both stores.
EXAMPLE_QUERIES = {
    "slowest_conversations": (
        "SELECT conversation_id, agent_id, latency_pairs, latency_p95_ms "
        "FROM conversation_metrics WHERE latency_pairs > 0 "
        "ORDER BY latency_p95_ms DESC LIMIT 10"
    ),
    "per_agent": (
        "SELECT agent_id, COUNT(*) AS conversations, SUM(interruptions) AS interruptions, "
        "SUM(tool_errors) AS tool_errors, AVG(latency_p50_ms) AS avg_p50_ms "
        "FROM conversation_metrics GROUP BY agent_id ORDER BY conversations DESC"
    ),
    "recent_windows": (
        "SELECT agent_id, window_start, events_total, conversations, user_turns, late_events "
        "FROM agent_window_metrics WHERE final ORDER BY window_start DESC LIMIT 20"
    ),
}


async def test_example_queries_run(sink_url: str) -> None:
    sink = await _started(sink_url)
    try:
        await sink.write([_conversation(10)], [_window(True, 5)])
    finally:
        await sink.close()
    results = {name: await _query(sink_url, sql) for name, sql in EXAMPLE_QUERIES.items()}
    assert results["slowest_conversations"][0]["latency_p95_ms"] == 900.0
    assert results["per_agent"][0]["conversations"] == 1
    assert results["recent_windows"][0]["events_total"] == 5


def _turn(
    index: int, event_id: int, role: str, message: str, source: str = "live"
) -> dict[str, Any]:
    return {
        "conversation_id": "conv-1",
        "turn_index": index,
        "event_id": event_id,
        "role": role,
        "message": message,
        "original_message": None,
        "interrupted": False,
        "tool_calls": "[]",
        "tool_errors": 0,
        "source": source,
        "first_received_at": 1_700_000_000_000_000 + event_id,
    }


def _summary(user_turns: int, verdict: str | None) -> dict[str, Any]:
    return {
        "conversation_id": "conv-1",
        "agent_id": "agent-1",
        "ended_at": 1_700_000_100_000_000,
        "verdict": verdict,
        "verdict_detail": None if verdict is None else '{"source": "rest"}',
        "channel": None,
        "start_time_unix_secs": None,
        "call_duration_secs": None,
        "termination_reason": None,
        "call_successful": None,
        "transcript_summary": None,
        "user_turns": user_turns,
        "agent_turns": 1,
        "interrupted_turns": 0,
        "corrected_turns": 0,
        "backfilled_turns": 0 if verdict is None else 1,
        "updated_at": 1_700_000_101_000_000,
    }


async def test_transcripts_are_replaced_whole_and_summaries_upserted(sink_url: str) -> None:
    sink = await _started(sink_url)
    try:
        live = [_turn(0, 1, "agent", "Hello"), _turn(1, 4, "user", "Bye")]
        await sink.write_finished([live], [_summary(1, None)])
        # the backfill brings a missed turn in the middle: indices after it shift
        repaired = [live[0], _turn(1, 2, "user", "Hi", "backfill"), {**live[1], "turn_index": 2}]
        for _ in range(2):  # idempotent
            await sink.write_finished([repaired], [_summary(2, "repaired")])
        rows = await _query(
            sink_url, "SELECT turn_index, event_id, source FROM conversation_transcripts "
            "ORDER BY turn_index"
        )  # fmt: skip
        assert [tuple(r.values()) for r in rows] == [(0, 1, "live"), (1, 2, "backfill"),
                                                     (2, 4, "live")]  # fmt: skip
        (summary,) = await _rows(sink_url, "conversation_summaries")
        assert (summary["user_turns"], summary["verdict"]) == (2, "repaired")
    finally:
        await sink.close()
