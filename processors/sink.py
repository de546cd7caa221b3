"""The SQL store for data teams: ``conversation_metrics`` and ``agent_window_metrics``.

Rows are upserted keyed like the topics (conversation; agent + window start), in one batch per
processed batch, so a replay rewrites the same rows instead of adding to them. Two guards keep
concurrent or replayed writes from going backwards: a conversation row only moves to a summary
of at least as many events, and a final window row keeps its counts (only ``late_events`` may
still rise). The schema is versioned in ``convostream_schema_migrations`` and migrated at start.

PostgreSQL goes through asyncpg; SQLite (the embedded default) through the standard library in
one worker thread, which is also what serialises its writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson

from processors.sql_schema import comments_sql

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CONVERSATION_COLUMNS = (
    "conversation_id",
    "agent_id",
    "status",
    "events_total",
    "events_by_type",
    "user_turns",
    "agent_turns",
    "interruptions",
    "corrections",
    "tool_calls",
    "tool_errors",
    "latency_pairs",
    "latency_p50_ms",
    "latency_p95_ms",
    "first_received_at",
    "last_received_at",
    "updated_at",
)
WINDOW_COLUMNS = (
    "agent_id",
    "window_start",
    "window_end",
    "events_total",
    "events_by_type",
    "conversations",
    "user_turns",
    "agent_turns",
    "interruptions",
    "tool_errors",
    "late_events",
    "final",
    "closed_by",
    "emitted_at",
)
TRANSCRIPT_COLUMNS = (
    "conversation_id",
    "turn_index",
    "event_id",
    "role",
    "message",
    "original_message",
    "interrupted",
    "tool_calls",
    "tool_errors",
    "source",
    "first_received_at",
)
SUMMARY_COLUMNS = (
    "conversation_id",
    "agent_id",
    "ended_at",
    "verdict",
    "verdict_detail",
    "channel",
    "start_time_unix_secs",
    "call_duration_secs",
    "termination_reason",
    "call_successful",
    "transcript_summary",
    "user_turns",
    "agent_turns",
    "interrupted_turns",
    "corrected_turns",
    "backfilled_turns",
    "updated_at",
)
_TIMESTAMPS = frozenset(
    {"first_received_at", "last_received_at", "updated_at", "window_start", "window_end"}
    | {"emitted_at", "ended_at"}
)


def _migrations(ts: str, json: str, real: str, boolean: str, comments: bool = False) -> list[str]:
    """Schema versions in order; version n is the n-th entry. Append, never edit. ``comments``
    (PostgreSQL) documents each table's columns in the version that creates or indexes it."""

    def documented(*tables: str) -> str:
        return comments_sql(*tables) if comments else ""

    return [
        f"""
        CREATE TABLE conversation_metrics (
            conversation_id TEXT PRIMARY KEY,
            agent_id TEXT,
            status TEXT NOT NULL,
            events_total BIGINT NOT NULL,
            events_by_type {json} NOT NULL,
            user_turns BIGINT NOT NULL,
            agent_turns BIGINT NOT NULL,
            interruptions BIGINT NOT NULL,
            corrections BIGINT NOT NULL,
            tool_calls BIGINT NOT NULL,
            tool_errors BIGINT NOT NULL,
            latency_pairs BIGINT NOT NULL,
            latency_p50_ms {real},
            latency_p95_ms {real},
            first_received_at {ts} NOT NULL,
            last_received_at {ts} NOT NULL,
            updated_at {ts} NOT NULL
        );
        CREATE INDEX conversation_metrics_agent ON conversation_metrics (agent_id, status);
        CREATE TABLE agent_window_metrics (
            agent_id TEXT NOT NULL,
            window_start {ts} NOT NULL,
            window_end {ts} NOT NULL,
            events_total BIGINT NOT NULL,
            events_by_type {json} NOT NULL,
            conversations BIGINT NOT NULL,
            user_turns BIGINT NOT NULL,
            agent_turns BIGINT NOT NULL,
            interruptions BIGINT NOT NULL,
            tool_errors BIGINT NOT NULL,
            late_events BIGINT NOT NULL,
            final {boolean} NOT NULL,
            closed_by TEXT,
            emitted_at {ts} NOT NULL,
            PRIMARY KEY (agent_id, window_start)
        );
        """,
        # Time ranges across all agents, the slowest conversations, retention of old windows.
        f"""
        CREATE INDEX conversation_metrics_first_received ON conversation_metrics
            (first_received_at);
        CREATE INDEX conversation_metrics_last_received ON conversation_metrics
            (last_received_at);
        CREATE INDEX conversation_metrics_latency ON conversation_metrics (latency_p95_ms)
            WHERE latency_pairs > 0;
        CREATE INDEX agent_window_metrics_start ON agent_window_metrics (window_start);
        CREATE INDEX agent_window_metrics_end ON agent_window_metrics (window_end);
        {documented("conversation_metrics", "agent_window_metrics")}
        """,
        # Transcripts and summaries of finished conversations (issue 13).
        f"""
        CREATE TABLE conversation_transcripts (
            conversation_id TEXT NOT NULL,
            turn_index BIGINT NOT NULL,
            event_id BIGINT NOT NULL,
            role TEXT NOT NULL,
            message TEXT,
            original_message TEXT,
            interrupted {boolean} NOT NULL,
            tool_calls {json} NOT NULL,
            tool_errors BIGINT NOT NULL,
            source TEXT NOT NULL,
            first_received_at {ts} NOT NULL,
            PRIMARY KEY (conversation_id, turn_index)
        );
        CREATE TABLE conversation_summaries (
            conversation_id TEXT PRIMARY KEY,
            agent_id TEXT,
            ended_at {ts},
            verdict TEXT,
            verdict_detail {json},
            channel TEXT,
            start_time_unix_secs BIGINT,
            call_duration_secs BIGINT,
            termination_reason TEXT,
            call_successful TEXT,
            transcript_summary TEXT,
            user_turns BIGINT NOT NULL,
            agent_turns BIGINT NOT NULL,
            interrupted_turns BIGINT NOT NULL,
            corrected_turns BIGINT NOT NULL,
            backfilled_turns BIGINT NOT NULL,
            updated_at {ts} NOT NULL
        );
        CREATE INDEX conversation_summaries_not_complete ON conversation_summaries (ended_at)
            WHERE verdict <> 'complete';
        {documented("conversation_transcripts", "conversation_summaries")}
        """,
    ]


SQLITE_MIGRATIONS = _migrations("TEXT", "TEXT", "REAL", "BOOLEAN")
POSTGRES_MIGRATIONS = _migrations("TIMESTAMPTZ", "JSONB", "DOUBLE PRECISION", "BOOLEAN", True)
SCHEMA_VERSION = len(SQLITE_MIGRATIONS)


def _upsert_sql(mark: Any) -> tuple[str, str, str]:
    """(conversation upsert, window upsert, late update) with placeholders from ``mark(i)``.

    Only the constant column names above are interpolated; values always go as parameters.
    """

    def values(columns: Sequence[str]) -> str:
        return ", ".join(mark(i + 1) for i in range(len(columns)))

    def assign(columns: Sequence[str], keys: Sequence[str]) -> str:
        return ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)

    conv = (
        f"INSERT INTO conversation_metrics ({', '.join(CONVERSATION_COLUMNS)}) "  # noqa: S608
        f"VALUES ({values(CONVERSATION_COLUMNS)}) ON CONFLICT (conversation_id) DO UPDATE SET "
        f"{assign(CONVERSATION_COLUMNS, ('conversation_id',))} "
        "WHERE excluded.events_total >= conversation_metrics.events_total"
    )
    window = (
        f"INSERT INTO agent_window_metrics ({', '.join(WINDOW_COLUMNS)}) "  # noqa: S608
        f"VALUES ({values(WINDOW_COLUMNS)}) ON CONFLICT (agent_id, window_start) DO UPDATE SET "
        f"{assign(WINDOW_COLUMNS, ('agent_id', 'window_start'))} "
        "WHERE NOT agent_window_metrics.final"
    )
    late = (
        f"UPDATE agent_window_metrics SET late_events = {mark(3)} "  # noqa: S608
        f"WHERE agent_id = {mark(1)} AND window_start = {mark(2)} AND late_events < {mark(3)}"
    )
    return conv, window, late


# Retention: only final windows go (an open one may still be written), by the indexed window_end.
PRUNE_SQL = "DELETE FROM agent_window_metrics WHERE final AND window_end < {mark}"


def _finished_sql(mark: Any) -> tuple[str, str, str]:
    """(transcript delete, transcript insert, summary upsert): a finished conversation's turns
    are replaced as a whole, since a backfilled turn can shift the turn indices after it."""
    values = ", ".join(mark(i + 1) for i in range(len(TRANSCRIPT_COLUMNS)))
    summary_values = ", ".join(mark(i + 1) for i in range(len(SUMMARY_COLUMNS)))
    assign = ", ".join(f"{c} = excluded.{c}" for c in SUMMARY_COLUMNS[1:])
    return (
        f"DELETE FROM conversation_transcripts WHERE conversation_id = {mark(1)}",  # noqa: S608
        f"INSERT INTO conversation_transcripts ({', '.join(TRANSCRIPT_COLUMNS)}) "  # noqa: S608
        f"VALUES ({values})",
        f"INSERT INTO conversation_summaries ({', '.join(SUMMARY_COLUMNS)}) "  # noqa: S608
        f"VALUES ({summary_values}) ON CONFLICT (conversation_id) DO UPDATE SET {assign}",
    )


def micros_to_datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class Sink(Protocol):
    """What the worker needs from a SQL store."""

    async def start(self) -> None:
        """Connect and bring the schema to :data:`SCHEMA_VERSION`."""

    async def write(
        self, conversations: Sequence[Mapping[str, Any]], windows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Upsert ConversationMetrics and AgentWindowMetrics records (one transaction)."""

    async def ping(self) -> None:
        """Raise unless the store answers a trivial query now (readiness)."""

    async def prune_windows(self, before_micros: int) -> int:
        """Delete final windows that ended before ``before_micros``; returns how many."""

    async def write_finished(
        self, transcripts: Sequence[Sequence[dict[str, Any]]], summaries: Sequence[dict[str, Any]]
    ) -> None:
        """Replace the transcripts of ``summaries``' conversations and upsert the summaries."""

    async def close(self) -> None:
        """Release the connection."""


def open_sink(url: str) -> Sink:
    """The sink for ``postgresql://…`` or ``sqlite:///path`` (``sqlite://`` alone: in memory)."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresSink(url)
    if url.startswith("sqlite://"):
        return SqliteSink(url.removeprefix("sqlite://").removeprefix("/") or ":memory:")
    raise ValueError("CONVOSTREAM_DATABASE_URL must start with postgresql:// or sqlite:///")


def _row(record: Mapping[str, Any], columns: Sequence[str], ts: Any, js: Any) -> tuple[Any, ...]:
    out = []
    for column in columns:
        value = record[column]
        if value is None:
            pass
        elif column in _TIMESTAMPS:
            value = ts(value)
        elif column == "events_by_type":
            value = js(value)
        out.append(value)
    return tuple(out)


def _iso(micros: int) -> str:
    return micros_to_datetime(micros).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json_text(value: dict[str, int]) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class SqliteSink:
    """SQLite through one dedicated thread; timestamps as ISO-8601 UTC text, JSON as text."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-sink")
        self._sql = _upsert_sql(lambda i: f"?{i}")  # numbered: late uses ?3 twice
        self._finished = _finished_sql(lambda i: f"?{i}")

    async def _call(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, func, *args)

    async def start(self) -> None:
        await self._call(self._start)

    def _start(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS convostream_schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            (current,) = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM convostream_schema_migrations"
            ).fetchone()
            for version, script in enumerate(SQLITE_MIGRATIONS, start=1):
                if version > current:
                    for statement in filter(str.strip, script.split(";")):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO convostream_schema_migrations VALUES (?, datetime('now'))",
                        (version,),
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._conn = conn

    async def write(
        self, conversations: Sequence[Mapping[str, Any]], windows: Sequence[Mapping[str, Any]]
    ) -> None:
        if conversations or windows:
            await self._call(self._write, conversations, windows)

    def _write(
        self, conversations: Sequence[Mapping[str, Any]], windows: Sequence[Mapping[str, Any]]
    ) -> None:
        assert self._conn is not None
        conv_sql, window_sql, late_sql = self._sql
        conn = self._conn
        conn.execute("BEGIN")
        try:
            conn.executemany(
                conv_sql, [_row(r, CONVERSATION_COLUMNS, _iso, _json_text) for r in conversations]
            )
            conn.executemany(
                window_sql, [_row(r, WINDOW_COLUMNS, _iso, _json_text) for r in windows]
            )
            conn.executemany(
                late_sql,
                [(w["agent_id"], _iso(w["window_start"]), w["late_events"]) for w in windows],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def ping(self) -> None:
        conn = self._conn
        if conn is None:
            raise sqlite3.OperationalError("not open")
        await self._call(conn.execute, "SELECT 1")

    async def prune_windows(self, before_micros: int) -> int:
        conn = self._conn
        assert conn is not None
        cursor = await self._call(conn.execute, PRUNE_SQL.format(mark="?"), (_iso(before_micros),))
        return int(cursor.rowcount)

    async def write_finished(
        self, transcripts: Sequence[Sequence[dict[str, Any]]], summaries: Sequence[dict[str, Any]]
    ) -> None:
        if summaries:
            await self._call(self._write_finished, transcripts, summaries)

    def _write_finished(
        self, transcripts: Sequence[Sequence[dict[str, Any]]], summaries: Sequence[dict[str, Any]]
    ) -> None:
        assert self._conn is not None
        delete, insert, upsert = self._finished
        conn = self._conn
        conn.execute("BEGIN")
        try:
            conn.executemany(delete, [(s["conversation_id"],) for s in summaries])
            conn.executemany(
                insert,
                [_row(r, TRANSCRIPT_COLUMNS, _iso, None) for rows in transcripts for r in rows],
            )
            conn.executemany(upsert, [_row(s, SUMMARY_COLUMNS, _iso, None) for s in summaries])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._thread.shutdown(wait=True)


class PostgresSink:
    """PostgreSQL through an asyncpg pool; TIMESTAMPTZ and JSONB columns."""

    _LOCK_ID = 0x636F6E76  # advisory lock: one migrating worker at a time

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None
        self._sql = _upsert_sql(lambda i: f"${i}")
        self._finished = _finished_sql(lambda i: f"${i}")

    async def start(self) -> None:
        import asyncpg  # type: ignore[import-untyped]  # here: SQLite users need not install it

        self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._LOCK_ID)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS convostream_schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval(
                "SELECT COALESCE(MAX(version), 0) FROM convostream_schema_migrations"
            )
            for version, script in enumerate(POSTGRES_MIGRATIONS, start=1):
                if version > current:
                    await conn.execute(script)
                    await conn.execute(
                        "INSERT INTO convostream_schema_migrations (version) VALUES ($1)", version
                    )

    async def write(
        self, conversations: Sequence[Mapping[str, Any]], windows: Sequence[Mapping[str, Any]]
    ) -> None:
        if not (conversations or windows):
            return
        conv_sql, window_sql, late_sql = self._sql
        ts, js = micros_to_datetime, _json_text
        async with self._pool.acquire() as conn, conn.transaction():
            if conversations:
                await conn.executemany(
                    conv_sql, [_row(r, CONVERSATION_COLUMNS, ts, js) for r in conversations]
                )
            if windows:
                await conn.executemany(
                    window_sql, [_row(r, WINDOW_COLUMNS, ts, js) for r in windows]
                )
                await conn.executemany(
                    late_sql,
                    [(w["agent_id"], ts(w["window_start"]), w["late_events"]) for w in windows],
                )

    async def ping(self) -> None:
        if self._pool is None:
            raise ConnectionError("not open")
        async with self._pool.acquire(timeout=5) as conn:
            await conn.fetchval("SELECT 1", timeout=5)

    async def prune_windows(self, before_micros: int) -> int:
        status = await self._pool.execute(
            PRUNE_SQL.format(mark="$1"), micros_to_datetime(before_micros)
        )
        return int(status.rsplit(" ", 1)[-1])  # "DELETE n"

    async def write_finished(
        self, transcripts: Sequence[Sequence[dict[str, Any]]], summaries: Sequence[dict[str, Any]]
    ) -> None:
        if not summaries:
            return
        delete, insert, upsert = self._finished
        ts = micros_to_datetime
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(delete, [(s["conversation_id"],) for s in summaries])
            await conn.executemany(
                insert,
                [_row(r, TRANSCRIPT_COLUMNS, ts, None) for rows in transcripts for r in rows],
            )
            await conn.executemany(upsert, [_row(s, SUMMARY_COLUMNS, ts, None) for s in summaries])

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
