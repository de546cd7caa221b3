"""Helpers for the processors' integration tests.

``expected_rows`` is the independent computation of DESIGN.md §3 the tests compare the SQL store
with: written from the definitions, on decoded topic records, sharing no code with processors/.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from convostream.broker import free_port
from processors import forward
from processors.sink import CONVERSATION_COLUMNS, WINDOW_COLUMNS
from schemas.serde import Serde
from schemas.topics import CONVERSATIONS, MONITOR_EVENTS
from tests.cli_process import CliProcess
from tests.collector_harness import (
    SERDE,
    CollectorProcess,
    collector_env,
    raw_records,
    read_topic,
)

# The columns the test computes itself (all but the row's own write time).
SQL_COLUMNS = tuple(c for c in CONVERSATION_COLUMNS if c != "updated_at")


class ProcessorProcess(CliProcess):
    """``python -m convostream process``; Faust may take a while to flush on SIGTERM."""

    def __init__(self, env: dict[str, str], log_dir: Path, name: str = "processor") -> None:
        super().__init__("process", env, log_dir, name, stop_timeout=60.0)


def processor_env(
    bootstrap: str, prefix: str, database_url: str, data_dir: Path, **extra: str
) -> dict[str, str]:
    return {
        "CONVOSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "CONVOSTREAM_TOPIC_PREFIX": prefix,
        "CONVOSTREAM_DATABASE_URL": database_url,
        "CONVOSTREAM_PROCESSOR_DATA_DIR": str(data_dir),
        "CONVOSTREAM_PROCESSOR_WEB_PORT": str(free_port()),
        "CONVOSTREAM_PROCESSOR_IDLE_SECONDS": "2",
        "CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS": "2000",  # embedded broker: join in ~1 s
        "CONVOSTREAM_LOG_FORMAT": "json",
        **extra,
    }


def pipeline(
    bootstrap: str,
    upstream: str,
    key: str,
    prefix: str,
    tmp_path: Path,
    collector_extra: dict[str, str] | None = None,
    processor_extra: dict[str, str] | None = None,
) -> tuple[CollectorProcess, ProcessorProcess, Path]:
    """A collector ``c0`` and a processor writing SQLite ``tmp_path/metrics.db`` on ``prefix``
    (not started), and that database's path."""
    collector = CollectorProcess(
        "c0",
        collector_env(bootstrap, upstream, key, prefix, f"g-{prefix}", **(collector_extra or {})),
        tmp_path,
    )
    db = tmp_path / "metrics.db"
    processor = ProcessorProcess(
        processor_env(
            bootstrap,
            prefix,
            f"sqlite:///{db}",
            tmp_path / "state",
            CONVOSTREAM_METRICS_PORT=str(free_port()),
            **(processor_extra or {}),
        ),
        tmp_path,
    )
    return collector, processor, db


def _nearest_rank(values: list[int], p: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.ceil(p / 100 * len(ordered)) - 1] / 1000.0


def expected_rows(
    events: list[dict[str, Any]], lifecycle: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per conversation, the SQL row that DESIGN.md §3 defines (timestamps in µs)."""
    first_copy: dict[tuple[str, str], dict[str, Any]] = {}
    earliest: dict[tuple[str, str], int] = {}
    for ev in events:
        ident = (ev["conversation_id"], ev["event_key"])
        first_copy.setdefault(ident, ev)
        earliest[ident] = min(earliest.get(ident, ev["received_at"]), ev["received_at"])
    per_conv: dict[str, list[tuple[dict[str, Any], int]]] = defaultdict(list)
    for ident, ev in first_copy.items():
        per_conv[ident[0]].append((ev, earliest[ident]))
    ended = {r["conversation_id"] for r in lifecycle if r["state"] == "ended"}
    rows = {}
    for cid, items in per_conv.items():
        by_type: dict[str, int] = defaultdict(int)
        for ev, _ in items:
            by_type[ev["type"]] += 1
        tools = [ev for ev, _ in items if ev["type"] == "agent_tool_response"]
        users = [
            (ev["upstream_event_id"], at)
            for ev, at in items
            if ev["type"] == "user_transcript" and ev["upstream_event_id"] is not None
        ]
        answers = sorted(
            (ev["upstream_event_id"], at)
            for ev, at in items
            if ev["type"] == "agent_response" and ev["upstream_event_id"] is not None
        )
        latencies = []
        for uid, u_at in users:
            later = [(aid, a_at) for aid, a_at in answers if aid > uid]
            if later:
                latencies.append(max(0, later[0][1] - u_at))  # smallest id, then earliest copy
        agents = sorted({ev["agent_id"] for ev, _ in items if ev["agent_id"] is not None})
        end_call = any(ev["payload"][1].get("tool_name") == "end_call" for ev in tools)
        rows[cid] = {
            "conversation_id": cid,
            "agent_id": agents[0] if agents else None,
            "status": "ended" if end_call or cid in ended else "active",
            "events_total": len(items),
            "events_by_type": dict(by_type),
            "user_turns": by_type.get("user_transcript", 0),
            "agent_turns": by_type.get("agent_response", 0),
            "interruptions": by_type.get("interruption", 0),
            "corrections": by_type.get("agent_response_correction", 0),
            "tool_calls": len(tools),
            "tool_errors": sum(1 for ev in tools if ev["payload"][1].get("is_error")),
            "latency_pairs": len(latencies),
            "latency_p50_ms": _nearest_rank(latencies, 50),
            "latency_p95_ms": _nearest_rank(latencies, 95),
            "first_received_at": min(at for _, at in items),
            "last_received_at": max(at for _, at in items),
        }
    return rows


async def expected_from_topics(
    bootstrap: str, prefix: str, serde: Serde = SERDE
) -> tuple[dict[str, dict[str, Any]], list[bytes]]:
    """:func:`expected_rows` of the events and lifecycle topics, and the events' raw values."""
    events = await read_topic(bootstrap, MONITOR_EVENTS.full_name(prefix), serde)
    lifecycle = await read_topic(bootstrap, CONVERSATIONS.full_name(prefix), serde)
    rows = expected_rows([r.value for r in events], [r.value for r in lifecycle])
    return rows, [r.raw for r in events]


async def wait_for_rows(
    db: Path, expected: dict[str, dict[str, Any]], processor: CliProcess, timeout: float = 120
) -> dict[str, dict[str, Any]]:
    """The SQL rows, once they equal ``expected`` (or as they are after ``timeout``)."""
    deadline = time.monotonic() + timeout
    actual = sqlite_rows(db)
    while actual != expected and time.monotonic() < deadline:
        assert processor.alive(), processor.failure_text()
        await asyncio.sleep(1.0)
        actual = sqlite_rows(db)
    return actual


def _iso_to_micros(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def sqlite_rows(path: Path) -> dict[str, dict[str, Any]]:
    """``conversation_metrics`` rows from SQLite, normalised like :func:`expected_rows`."""
    if not path.exists():
        return {}
    conn = sqlite3.connect(path)
    try:
        cur = conn.execute(f"SELECT {', '.join(SQL_COLUMNS)} FROM conversation_metrics")  # noqa: S608
        out = {}
        for values in cur.fetchall():
            row = dict(zip(SQL_COLUMNS, values, strict=True))
            row["events_by_type"] = json.loads(row["events_by_type"])
            row["first_received_at"] = _iso_to_micros(row["first_received_at"])
            row["last_received_at"] = _iso_to_micros(row["last_received_at"])
            out[row["conversation_id"]] = row
        return out
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        conn.close()


def sqlite_windows(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """``agent_window_metrics`` rows from SQLite by (agent, window start), as stored."""
    if not path.exists():
        return {}
    conn = sqlite3.connect(path)
    try:
        cur = conn.execute(f"SELECT {', '.join(WINDOW_COLUMNS)} FROM agent_window_metrics")  # noqa: S608
        rows = [dict(zip(WINDOW_COLUMNS, values, strict=True)) for values in cur.fetchall()]
        return {(r["agent_id"], r["window_start"]): r for r in rows}
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        conn.close()


async def forwarded_events(bootstrap: str, topic: str) -> dict[tuple[int, int], tuple[str, str]]:
    """What a processor's conversation stage handed to its window stage (its internal
    ``<app id>-agent-events`` topic): (source partition, offset) -> (agent, event type), to say
    where a window lost events."""
    out: dict[tuple[int, int], tuple[str, str]] = {}
    for message in await raw_records(bootstrap, topic):
        if message.key is None:  # a progress tick
            continue
        agent, _, events = forward.decode(message.value)
        for event, _ in events:
            out.setdefault((event.source_partition, event.offset), (agent, event.type))
    return out
