"""Peers, side by side: per-agent tumbling-window counts by convostream, Quix Streams and a naive
Faust agent, over one pre-filled events topic on Apache Kafka, in one run.

The topic is ``convai.monitor.events`` as the collectors write it (Avro ``MonitorEvent``, keyed
by conversation, 12 partitions), filled with ``bench/process.py``'s synthetic events whose
``received_at`` spread over ``--span`` seconds of event time (ending 5 minutes ago), then one
fence event per agent 71 s after the last event, so that every window before the fences is
past end + grace for every engine. Each agent's conversations share a partition, so every
engine sees each agent's events in time order: none is late, and the three counts must agree
exactly (lateness handling is not what is compared). The result compared is, per agent and
60 s window start, the count of events, of the windows before the fences:

* processor: ``convostream process`` with everything on (its windows by ``received_at``,
  grace 10 s; the idle timeout raised to an hour, because the topic holds past events: its
  wall-clock closing is for quiet agents of a live stream); the final windows in SQL;
* quix: ``bench/workers/quix_peer.py``, ``group_by`` agent then ``.tumbling_window(60 s,
  grace_ms=10_000).count().final()``, event time from ``received_at``; in the bench venv;
* naive Faust: ``bench/process.py``'s naive agent, one table update per event, keyed by agent
  and window start (no grace, no closing: it counts every event it reads).

Each runs as its own process, one after the other, from the beginning of the topic.
``events_per_s`` and ``cpu_us_per_event`` (utime + stime of that worker process only, from
/proc) run from its first event to the moment its result holds every event: for the processor
as the bench sees them in SQL (polled every 50 ms: both ends late by about one sink flush), for
the peers as they see them themselves. Start-up, group joins and table recovery are left out.

    .venv/bin/python bench/peers.py [--events 100000] [--bootstrap HOST:PORT] [--json]

Without ``--bootstrap`` it starts (and stops) an Apache Kafka of its own. Needs the bench venv
(``make bench-install``) for Quix, or ``CONVOSTREAM_BENCH_PYTHON`` naming an interpreter that
has quixstreams and this project.
"""

# ruff: noqa: ASYNC220, ASYNC240  (the harness polls SQLite and files by design)

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaProducer

from bench.ingest import _stop
from bench.process import _sql, make_event, naive_faust, start_processor
from convostream import logs
from convostream.broker import create_topics
from convostream.kafka_engine import KafkaBroker
from convostream.measure import cpu_seconds
from schemas.topics import MONITOR_EVENTS

ROOT = Path(__file__).resolve().parents[1]
BENCH_PYTHON = Path(os.environ.get("CONVOSTREAM_BENCH_PYTHON", ROOT / ".venv-bench/bin/python"))
WINDOW_US = 60_000_000
FENCE_AFTER_US = 71_000_000  # past the last event's window end (≤ 60 s) + grace (10 s)
DEADLINE_S = 900.0
BY_AGENT_WINDOW = "lambda r: f\"{r['agent_id']}@{r['received_at'] // 60_000_000 * 60_000}\""

Counts = dict[str, int]  # "agent@window start (ms)": events


@dataclass(frozen=True)
class Plan:
    """What was produced: ``events`` counted events, then one fence per agent."""

    events: int
    fences: int
    fence_window_ms: int  # windows from here on hold fences and are not compared

    @property
    def total(self) -> int:
        return self.events + self.fences


async def prefill(
    bootstrap: str, topic: str, events: int, conversations: int, per_partition: int, span_s: float
) -> Plan:
    """Fill ``topic``: conversation c in partition c mod 12 with agent
    ``agent-<partition>-<j>``; received_at spread evenly over ``span_s`` seconds."""
    partitions = MONITOR_EVENTS.partitions
    span = int(span_s * 1e6)
    t0 = time.time_ns() // 1000 - span - 300_000_000
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()

    async def send(cid: str, agent: str, seq: int, at: int, partition: int) -> Any:
        key, value = make_event(cid, agent, seq, at)
        return await producer.send(
            topic, value, key=key, partition=partition, timestamp_ms=at // 1000
        )

    try:
        pending = []
        agents: set[tuple[int, str]] = set()
        for i in range(events):
            c = i % conversations
            p = c % partitions
            agent = f"agent-{p}-{(c // partitions) % per_partition}"
            agents.add((p, agent))
            at = t0 + i * span // events
            pending.append(await send(f"conv-{c}", agent, i // conversations, at, p))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        fence_at = t0 + span + FENCE_AFTER_US
        for p, agent in sorted(agents):
            pending.append(await send(f"fence-{agent}", agent, 0, fence_at, p))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return Plan(events, len(agents), fence_at // WINDOW_US * WINDOW_US // 1000)


def _iso_ms(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def _final_windows(db: Path) -> tuple[Counts, int]:
    """The processor's final windows in SQL, and their late events."""
    rows = _sql(
        db,
        "SELECT agent_id, window_start, events_total, late_events FROM agent_window_metrics"
        " WHERE final",
    )
    return {f"{a}@{_iso_ms(s)}": int(n) for a, s, n, _ in rows}, sum(int(r[3]) for r in rows)


@contextmanager
def _running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        _stop(proc)


async def processor(bootstrap: str, prefix: str, plan: Plan, workdir: Path) -> dict[str, Any]:
    db = workdir / "processor.db"
    settings = {"CONVOSTREAM_PROCESSOR_IDLE_SECONDS": "3600"}
    with _running(start_processor(bootstrap, prefix, workdir, db, settings, "kafka")) as proc:
        started: tuple[float, float] | None = None
        deadline = time.monotonic() + DEADLINE_S
        while True:
            await asyncio.sleep(0.05)
            if started is None and _sql(db, "SELECT 1 FROM conversation_metrics LIMIT 1"):
                started = (time.perf_counter(), cpu_seconds(proc.pid))
            counts, late = _final_windows(db)
            if started is not None and sum(counts.values()) + late >= plan.events:
                elapsed = time.perf_counter() - started[0]
                cpu = cpu_seconds(proc.pid) - started[1]
                return {
                    "events_per_s": plan.events / elapsed,
                    "cpu_us_per_event": cpu / plan.events * 1e6,
                    "counts": counts,
                    "late_events": late,
                }
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (workdir / f"processor-{prefix}log").read_text(errors="replace")
                raise RuntimeError(f"processor exited or never finished:\n{log[-3000:]}")


async def quix(bootstrap: str, topic: str, plan: Plan, workdir: Path) -> dict[str, Any]:
    if not BENCH_PYTHON.exists():
        raise RuntimeError(f"no bench venv at {BENCH_PYTHON}: run `make bench-install`")
    result = workdir / "quix.json"
    log = workdir / "quix.log"
    args = [str(BENCH_PYTHON), str(ROOT / "bench/workers/quix_peer.py"), "--bootstrap", bootstrap]
    args += ["--topic", topic, "--events", str(plan.events), "--result", str(result)]
    args += ["--state-dir", str(workdir / "quix-state")]
    with log.open("wb") as out, _running(subprocess.Popen(args, stdout=out, stderr=out)) as proc:
        deadline = time.monotonic() + DEADLINE_S
        while not result.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"quix exited or never finished:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.05)
    figures: dict[str, Any] = json.loads(result.read_text())
    return figures


async def naive(bootstrap: str, topic: str, plan: Plan, workdir: Path) -> dict[str, Any]:
    return await naive_faust(bootstrap, topic, plan.total, workdir, key=BY_AGENT_WINDOW)


ENGINES = {"processor": processor, "quix": quix, "naive_faust": naive}


def _compared(counts: Counts, plan: Plan) -> Counts:
    """The windows before the fences' (which no engine closes)."""
    return {k: v for k, v in counts.items() if int(k.rpartition("@")[2]) < plan.fence_window_ms}


async def measure(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    load = os.getloadavg()
    prefix = f"p{uuid.uuid4().hex[:6]}."
    await create_topics(bootstrap, prefix=prefix)
    topic = MONITOR_EVENTS.full_name(prefix)
    plan = await prefill(
        bootstrap, topic, args.events, args.conversations, args.agents_per_partition, args.span
    )
    figures: dict[str, Any] = {}
    results: dict[str, Counts] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in ENGINES.items():
            print(f"== {name}", file=sys.stderr)
            out = await run(bootstrap, prefix if name == "processor" else topic, plan, Path(tmp))
            results[name] = _compared(out.pop("counts"), plan)
            figures[name] = {k: round(v, 1) for k, v in out.items()}
    reference = results["processor"]
    return {
        "events": plan.events,
        "agents": plan.fences,
        "windows": len(reference),
        "windowed_events": sum(reference.values()),
        "results_equal": all(r == reference for r in results.values())
        and sum(reference.values()) == plan.events,
        "differing_windows": {
            name: len(set(r.items()) ^ set(reference.items())) for name, r in results.items()
        },
        **figures,
        "engine": "kafka",
        "load_avg_before": [round(x, 2) for x in load],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _table(result: dict[str, Any]) -> None:
    base = result["processor"]
    print(f"{'engine':<14}{'events/s':>12}{'CPU µs/event':>15}{'events/s vs processor':>24}")
    for name in ENGINES:
        r = result[name]
        ratio = r["events_per_s"] / base["events_per_s"]
        print(f"{name:<14}{r['events_per_s']:>12.0f}{r['cpu_us_per_event']:>15.1f}{ratio:>24.2f}")
    print(
        f"windows {result['windows']}, events {result['windowed_events']}, equal: "
        f"{result['results_equal']}, load average before {result['load_avg_before']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--conversations", type=int, default=1200)
    parser.add_argument("--agents-per-partition", type=int, default=2, help="12 partitions")
    parser.add_argument("--span", type=float, default=300.0, help="seconds of event time")
    parser.add_argument("--bootstrap", help="an Apache Kafka to use (default: start one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs.configure("WARNING")  # logs on stderr: --json output stays one object on stdout
    # stopped by a signal: unwind, so every worker and the Kafka JVM are stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.bootstrap:
        result = asyncio.run(measure(args, args.bootstrap))
    else:
        properties = {"group.initial.rebalance.delay.ms": "0"}
        with KafkaBroker(properties=properties) as broker:
            result = asyncio.run(measure(args, broker.bootstrap))
    if args.json:
        print(json.dumps(result))
    else:
        _table(result)
    if not result["results_equal"]:
        sys.exit(f"the engines' windows differ: {result['differing_windows']}")


if __name__ == "__main__":
    main()
