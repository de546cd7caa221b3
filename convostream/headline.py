"""The headline measurement: N live conversations end to end (one collector, one processor).

``bench/e2e.py`` and ``convostream demo --scale`` both measure through here, so the demo shows
the README's figures measured the README's way: wait until the collector holds every socket
and the replay bursts of those openings have reached SQL, then a steady-state window of the
collector's acknowledged records and the processor's SQL rows, with both processes' CPU time
and resident memory from /proc (simulator and broker excluded: elsewhere in production).
"""

from __future__ import annotations

import resource
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convostream.measure import cpu_seconds, published_events, rss_kib, scrape

SETTLE_S = 90.0  # longest wait for the socket openings' replay bursts to pass through
LIVE = "convostream_collector_live_sockets"


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to its hard limit (children inherit it); the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def ramp_seconds(conversations: int) -> float:
    """How long the simulator spreads the conversations' starts over (1,000 a second)."""
    return max(1.0, conversations / 1000)


def rows_total(db: Path) -> int:
    """Events the processor has made visible in SQL (distinct, summed over conversations)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(
            "SELECT COALESCE(SUM(events_total), 0) FROM conversation_metrics"
        ).fetchone()
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        conn.close()
    return int(row[0])


def watch(port: int, seconds: float, until_sockets: float = float("inf")) -> float:
    """Sleep ``seconds`` (less once the collector holds ``until_sockets``), printing its
    progress on stderr; the sockets it holds. Scrapes every 2 s in steady state (a scrape
    costs the collector CPU: Prometheus would scrape every 15 s)."""
    deadline = time.monotonic() + seconds
    step = 0.5 if until_sockets < float("inf") else 2.0
    live = 0.0
    while time.monotonic() < deadline:
        m = scrape(port)
        live = m.get(LIVE, 0.0)
        buffered = m.get("convostream_collector_buffer_records", 0)
        print(
            f"live={live:.0f} published={published_events(m):.0f} buffered={buffered:.0f}",
            file=sys.stderr,
        )
        if live >= until_sockets:
            break
        time.sleep(min(step, max(0.0, deadline - time.monotonic())))
    return live


def settle(port: int, db: Path) -> float:
    """Wait (at least 5 s) until the replay bursts of the socket openings are published and
    the processor's rows hold them; seconds waited."""
    t0 = time.monotonic()
    time.sleep(5)
    while time.monotonic() - t0 < SETTLE_S:
        if rows_total(db) >= 0.99 * published_events(scrape(port)):
            break
        time.sleep(1)
    return round(time.monotonic() - t0, 1)


@dataclass(frozen=True)
class Pipeline:
    """The processes under test: a collector (its metrics port) and a processor (its SQLite)."""

    collector_pid: int
    metrics_port: int
    processor_pid: int
    db: Path


def steady_state(
    p: Pipeline, seconds: float, live: float, check: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """Figures of a ``seconds`` window; ``live`` the sockets held before it, ``check`` raises
    when a process under test has exited (called before the figures are read)."""
    before, rows0, t0 = scrape(p.metrics_port), rows_total(p.db), time.monotonic()
    c0, p0 = cpu_seconds(p.collector_pid), cpu_seconds(p.processor_pid)
    watch(p.metrics_port, seconds)
    check()
    after, rows1, elapsed = scrape(p.metrics_port), rows_total(p.db), time.monotonic() - t0
    c_cpu, p_cpu = cpu_seconds(p.collector_pid) - c0, cpu_seconds(p.processor_pid) - p0
    events = published_events(after) - published_events(before)
    processed = rows1 - rows0
    # each process's CPU over its own count: a processor catching up is not billed to the
    # collector's events
    c_us = c_cpu / events * 1e6 if events else 0.0
    p_us = p_cpu / processed * 1e6 if processed else 0.0
    return {
        "conversations": int(min(live, after.get(LIVE, 0))),
        "events_per_s": round(events / elapsed),
        "processed_events_per_s": round(processed / elapsed),
        "cpu_us_per_event": round(c_us + p_us, 1),
        "collector_cpu_us_per_event": round(c_us, 1),
        "processor_cpu_us_per_event": round(p_us, 1),
        "kib_per_conversation": round(rss_kib(p.collector_pid) / max(live, 1), 1),
        "processor_rss_mib": round(rss_kib(p.processor_pid) / 1024, 1),
        "pipeline_cpu_cores": round((c_cpu + p_cpu) / elapsed, 2),
    }
