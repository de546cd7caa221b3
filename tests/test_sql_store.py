"""The SQL store as data teams see it: documented columns, indexed time ranges, retention."""

from __future__ import annotations

import re
from typing import Any

import pytest

from processors.sink import Sink, open_sink
from processors.sql_schema import COLUMN_DOCS
from tests.deploy_tools import ROOT
from tests.test_processors_sink import _conversation, _query, _window, postgres_url, sink_url

pytestmark = pytest.mark.integration
__all__ = ["postgres_url", "sink_url"]  # fixtures shared with the sink's own tests

HOUR = 3_600_000_000
MINUTE = 60_000_000
DAY_OF_README = 1_793_491_200_000_000  # 2026-11-01T00:00:00Z, the day the README's queries ask


def readme_queries() -> list[str]:
    """The statements of the README's example SQL block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text.split("**Example queries**", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    body = "\n".join(line for line in block.splitlines() if not line.startswith("--"))
    return [" ".join(q.split()) for q in body.split(";") if q.strip()]


async def started(url: str) -> Sink:
    sink = open_sink(url)
    await sink.start()
    return sink


def conversations(n: int, start: int) -> list[dict[str, Any]]:
    """``n`` conversations an hour apart from ``start``, three agents."""
    rows = []
    for i in range(n):
        row = _conversation(10)
        first = start + i * HOUR
        row.update(
            conversation_id=f"conv-{i}",
            agent_id=f"agent-{i % 3}",
            latency_pairs=i % 2,
            first_received_at=first,
            last_received_at=first + 60_000_000,
        )
        rows.append(row)
    return rows


def finished(n: int, start: int) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Transcripts (ten turns each) and summaries of ``n`` finished conversations; every 50th
    is gapped, and the README's placeholder id ``conv_...`` is the first."""
    transcripts, summaries = [], []
    for i in range(n):
        cid = "conv_..." if i == 0 else f"conv-{i}"
        ended = start + i * MINUTE
        transcripts.append(
            [
                {
                    "conversation_id": cid,
                    "turn_index": t,
                    "event_id": t,
                    "role": "user" if t % 2 == 0 else "agent",
                    "message": f"turn {t}",
                    "original_message": None,
                    "interrupted": False,
                    "tool_calls": "[]",
                    "tool_errors": 0,
                    "source": "live",
                    "first_received_at": ended - (10 - t) * 1_000_000,
                }
                for t in range(10)
            ]
        )
        summaries.append(
            {
                "conversation_id": cid,
                "agent_id": f"agent-{i % 3}",
                "ended_at": ended,
                "verdict": "gapped" if i % 50 == 0 else "complete",
                "verdict_detail": "{}",
                "channel": "voice",
                "start_time_unix_secs": None,
                "call_duration_secs": None,
                "termination_reason": None,
                "call_successful": None,
                "transcript_summary": None,
                "user_turns": 5,
                "agent_turns": 5,
                "interrupted_turns": 0,
                "corrected_turns": 0,
                "backfilled_turns": 0,
                "updated_at": ended,
            }
        )
    return transcripts, summaries


def windows(n: int, start: int) -> list[dict[str, Any]]:
    """``n`` final one-minute windows a minute apart from ``start``, three agents."""
    rows = []
    for i in range(n):
        row = _window(True, 5)
        begin = start + i * MINUTE
        row.update(agent_id=f"agent-{i % 3}", window_start=begin, window_end=begin + MINUTE)
        rows.append(row)
    return rows


def test_docs_describe_every_column() -> None:
    from processors.sink import (
        CONVERSATION_COLUMNS,
        SUMMARY_COLUMNS,
        TRANSCRIPT_COLUMNS,
        WINDOW_COLUMNS,
    )

    assert set(COLUMN_DOCS["conversation_metrics"]) == set(CONVERSATION_COLUMNS)
    assert set(COLUMN_DOCS["agent_window_metrics"]) == set(WINDOW_COLUMNS)
    assert set(COLUMN_DOCS["conversation_transcripts"]) == set(TRANSCRIPT_COLUMNS)
    assert set(COLUMN_DOCS["conversation_summaries"]) == set(SUMMARY_COLUMNS)
    docs = (ROOT / "docs" / "sql.md").read_text()
    for columns in COLUMN_DOCS.values():
        for column, meaning in columns.items():
            assert f"| `{column}` | {meaning} |" in docs, column


async def test_postgres_columns_carry_their_comments(postgres_url: str) -> None:
    sink = await started(postgres_url)
    await sink.close()
    rows = await _query(
        postgres_url,
        "SELECT c.relname AS table_name, a.attname AS column_name, "
        "col_description(c.oid, a.attnum) AS comment FROM pg_class c "
        "JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relname IN ('conversation_metrics', 'agent_window_metrics', "
        "'conversation_transcripts', 'conversation_summaries') AND a.attnum > 0",
    )
    got = {(r["table_name"], r["column_name"]): r["comment"] for r in rows}
    want = {(t, c): text for t, cols in COLUMN_DOCS.items() for c, text in cols.items()}
    assert got == want


async def test_readme_queries_use_the_indices_on_postgresql(postgres_url: str) -> None:
    sink = await started(postgres_url)
    try:
        # Years of conversations and two weeks of windows: the README's ranges are a sliver.
        await sink.write(
            conversations(20_000, DAY_OF_README - 8_000 * HOUR),
            windows(20_000, DAY_OF_README - 2 * 24 * 60 * MINUTE),
        )
        await sink.write_finished(*finished(5_000, DAY_OF_README))
    finally:
        await sink.close()
    await _query(postgres_url, "ANALYZE")
    queries = readme_queries()
    assert len(queries) >= 5
    filtered = [q for q in queries if " WHERE " in q]
    assert len(filtered) >= 4
    for query in queries:
        plan = "\n".join(r["QUERY PLAN"] for r in await _query(postgres_url, f"EXPLAIN {query}"))
        if query in filtered:
            assert re.search(r"Index (Only )?Scan|Bitmap Index Scan", plan), (query, plan)
        assert await _query(postgres_url, query), query  # and each one finds rows


async def test_readme_queries_run_on_sqlite(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    sink = await started(url)
    try:
        await sink.write(
            conversations(50, DAY_OF_README - 10 * HOUR),
            windows(200, DAY_OF_README - 30 * MINUTE),
        )
        await sink.write_finished(*finished(60, DAY_OF_README))
    finally:
        await sink.close()
    for query in readme_queries():
        assert await _query(url, query), query


async def test_retention_deletes_only_old_final_windows(sink_url: str) -> None:
    sink = await started(sink_url)
    try:
        rows = windows(10, DAY_OF_README)
        rows[0]["final"] = False  # still open: kept whatever its age
        rows[0]["closed_by"] = None
        await sink.write([], rows)
        cutoff = DAY_OF_README + 5 * MINUTE + 1  # windows 0-4 ended before it
        assert await sink.prune_windows(cutoff) == 4
        assert await sink.prune_windows(cutoff) == 0
    finally:
        await sink.close()
    left = await _query(sink_url, "SELECT agent_id, final FROM agent_window_metrics")
    assert len(left) == 6
    assert sum(1 for r in left if not r["final"]) == 1
