"""Processor throughput and aggregate-visible latency, beside two baselines, in one run.

One embedded broker, one pre-filled ``convai.monitor.events`` topic (synthetic MonitorEvents:
many conversations, a few agents, realistic type mix). Measured on that same topic:

* raw: an aiokafka consumer doing Avro decode and a dict count (the ceiling);
* naive Faust: one Faust agent, one table update per event (the usual way to write it);
* processor: ``convostream process`` with everything on (RocksDB tables with changelogs, both
  agents, SQLite sink, metrics topic, Prometheus endpoint); done when SQL shows every event.

Throughput is timed from the first event visible in SQL to the last (the worker's start-up,
group join and table recovery are left out), for the processor as for naive Faust (first event
handled to the n-th), and over the whole topic for the raw consumer; all three read the same
pre-filled topic in the same run, one after the other.

Then aggregate-visible latency, on a fresh topic (a live stream cannot be pre-filled): a running
processor is warmed up with one event per conversation (200 conversations, 5 agents) until SQL
shows them all; then events are produced at ``--rate`` for ``--seconds``. Each event's
``received_at`` is the wall clock when it is handed to the producer (linger 5 ms), which is
also when its latency starts. A poller reads ``conversation_id, events_total`` from the
SQLite file every 20 ms; an event's latency ends at the start of the first poll whose
``events_total`` for its conversation covers it (events of one conversation are matched in
production order). So a figure includes producing, the broker, the worker's fetch, decode,
state, forwarding, the SQL commit and up to 20 ms of polling. Events still not visible 60 s
after the last one was produced are reported as ``latency_unseen_events``, not dropped.

    .venv/bin/python bench/process.py [--events 200000] [--rate 5000] [--json]
"""

# ruff: noqa: ASYNC110, ASYNC220, ASYNC240  (the harness polls SQLite and files by design)

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from convostream import logs
from convostream.broker import EmbeddedBroker, create_topics, free_port, partitions_of
from schemas.payloads import monitor_payload
from schemas.serde import Serde
from schemas.topics import MONITOR_EVENTS

SERDE = Serde()
EMPTY: Mapping[str, str] = MappingProxyType({})
TYPES = [
    ("user_transcript", 3),
    ("agent_response", 3),
    ("agent_chat_response_part", 6),
    ("agent_response_metadata", 2),
    ("interruption", 1),
    ("agent_tool_response", 1),
    ("ping", 2),
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, -(-round(q * len(ordered)) // 100)) - 1]


def make_event(cid: str, agent: str, seq: int, received_at: int) -> tuple[bytes, bytes]:
    etype = random.choices([t for t, _ in TYPES], [w for _, w in TYPES])[0]
    eid = seq // 3
    if etype == "user_transcript":
        frame = {
            "type": etype,
            "user_transcription_event": {"user_transcript": f"u{seq}", "event_id": eid},
        }
    elif etype == "agent_response":
        frame = {
            "type": etype,
            "agent_response_event": {"agent_response": f"a{seq}", "event_id": eid},
        }
    elif etype == "agent_tool_response":
        frame = {
            "type": etype,
            "agent_tool_response": {
                "tool_name": "lookup",
                "tool_call_id": f"t{seq}",
                "tool_type": "webhook",
                "is_error": seq % 5 == 0,
                "is_called": True,
                "event_id": eid,
            },
        }
    else:
        frame = {"type": etype, "event_id": eid, "n": seq}
    raw = json.dumps(frame)
    payload = monitor_payload(etype, frame)
    record = {
        "event_key": f"{cid}:{seq}",
        "conversation_id": cid,
        "agent_id": agent,
        "type": etype,
        "upstream_event_id": eid,
        "received_at": received_at,
        "collector_id": "bench",
        "connection_id": f"{cid}-0",
        "connection_seq": seq,
        "replay": False,
        "raw": raw,
        "payload": payload,
    }
    return cid.encode(), SERDE.encode("MonitorEvent", record)


async def prefill(bootstrap: str, topic: str, n: int, conversations: int, agents: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        now = time.time_ns() // 1000
        pending = []
        for i in range(n):
            c = i % conversations
            key, value = make_event(f"conv-{c}", f"agent-{c % agents}", i // conversations, now + i)
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def raw_consumer(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, max_partition_fetch_bytes=8 << 20
    )
    await consumer.start()
    try:
        parts = await partitions_of(consumer, topic)  # waits until Kafka lists a new topic
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        counts: Counter[str] = Counter()
        seen = 0
        started = time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10000)
            for messages in batch.values():
                for m in messages:
                    counts[SERDE.decode(m.value).record["type"]] += 1
                seen += len(messages)
        return seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()


NAIVE_APP = """
import json, os, sys, time, faust
sys.path.insert(0, {root!r})
from convostream.measure import cpu_seconds
from schemas.serde import Serde
serde = Serde()
key_of = {key}
app = faust.App({app_id!r}, broker={broker!r}, store="memory://", web_enabled=False,
                consumer_auto_offset_reset="earliest", broker_session_timeout=6,
                broker_heartbeat_interval=1, table_standby_replicas=0)
topic = app.topic({topic!r}, key_type=bytes, value_type=bytes, key_serializer="raw",
                  value_serializer="raw")
counts = app.Table("counts", default=int, partitions=12)
state = {{"n": 0, "t0": None, "cpu0": None}}

@app.agent(topic)
async def count(stream):
    async for event in stream.events():
        if state["t0"] is None:
            state["t0"], state["cpu0"] = time.perf_counter(), cpu_seconds()
        record = serde.decode(event.value).record
        counts[key_of(record)] += 1
        state["n"] += 1
        if state["n"] == {n}:
            elapsed = time.perf_counter() - state["t0"]
            cpu = cpu_seconds() - state["cpu0"]
            result = {{
                "events_per_s": state["n"] / elapsed,
                "cpu_us_per_event": cpu / state["n"] * 1e6,
                "counts": dict(counts.items()),
            }}
            with open({result!r} + ".tmp", "w") as out:
                out.write(json.dumps(result))
            os.replace({result!r} + ".tmp", {result!r})  # the bench never reads half a file

if __name__ == "__main__":
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
"""
BY_CONVERSATION = 'lambda r: r["conversation_id"]'


async def naive_faust(
    bootstrap: str, topic: str, n: int, workdir: Path, key: str = BY_CONVERSATION
) -> dict[str, Any]:
    """One Faust worker (its own process) counting the first ``n`` events of ``topic`` in a
    table keyed by ``key`` (a lambda's source, of the decoded record): its events/s and CPU
    µs per event (from its first event to the n-th) and the table."""
    script = workdir / "naive_app.py"
    result = workdir / f"naive-{uuid.uuid4().hex[:6]}.json"
    script.write_text(
        NAIVE_APP.format(
            root=str(Path(__file__).resolve().parents[1]),
            key=key,
            app_id=f"naive-{uuid.uuid4().hex[:6]}",
            broker=f"kafka://{bootstrap}",
            topic=topic,
            n=n,
            result=str(result),
        )
    )
    log = (workdir / "naive.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(script), "worker"], cwd=workdir, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 900
        while not result.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("naive Faust worker exited early or never finished")
            await asyncio.sleep(0.2)
        figures: dict[str, Any] = json.loads(result.read_text())
        return figures
    finally:
        proc.terminate()
        proc.wait()


def _sql(db: Path, query: str) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return conn.execute(query).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


# Consumer-group session of the processor under test: short on the embedded broker (see the
# README's Tansu settings), Apache Kafka's smallest by default (group.min.session.timeout.ms)
# on Kafka, which refuses a shorter one.
SESSION_TIMEOUT_MS = {"tansu": "2000", "kafka": "6000"}


def start_processor(
    bootstrap: str,
    prefix: str,
    workdir: Path,
    db: Path,
    settings: Mapping[str, str] = EMPTY,
    engine: str = "tansu",
) -> subprocess.Popen[bytes]:
    """``convostream process`` on the topics of ``prefix``, SQLite sink ``db``, on the broker
    ``engine`` (``tansu`` or ``kafka``); ``settings`` are more ``CONVOSTREAM_*`` variables."""
    env = {
        **os.environ,
        "CONVOSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "CONVOSTREAM_TOPIC_PREFIX": prefix,
        "CONVOSTREAM_DATABASE_URL": f"sqlite:///{db}",
        "CONVOSTREAM_PROCESSOR_DATA_DIR": str(workdir / f"state-{prefix}"),
        "CONVOSTREAM_PROCESSOR_WEB_PORT": str(free_port()),
        "CONVOSTREAM_METRICS_PORT": str(free_port()),
        "CONVOSTREAM_LOG_LEVEL": "WARNING",
        "CONVOSTREAM_LOG_FORMAT": "json",
        "CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS": SESSION_TIMEOUT_MS[engine],
        **settings,
    }
    log = (workdir / f"processor-{prefix}log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "convostream", "process"], env=env, stdout=log, stderr=log
    )


async def processor_throughput(bootstrap: str, prefix: str, n: int, workdir: Path) -> float:
    db = workdir / f"{prefix}db"
    proc = start_processor(bootstrap, prefix, workdir, db)
    try:
        started = None
        while True:
            await asyncio.sleep(0.05)
            (total,) = (
                _sql(db, "SELECT SUM(events_total) FROM conversation_metrics") or [(None,)]
            )[0:1][0]
            if total and started is None:
                started = (time.perf_counter(), total)
            if total and total >= n and started is not None:
                return (n - started[1]) / (time.perf_counter() - started[0])
            if proc.poll() is not None:
                raise RuntimeError("processor exited")
    finally:
        proc.terminate()
        proc.wait()


async def visible_latency(
    bootstrap: str, prefix: str, rate: int, seconds: float, workdir: Path
) -> dict[str, float]:
    db = workdir / f"{prefix}db"
    topic = MONITOR_EVENTS.full_name(prefix)
    proc = start_processor(bootstrap, prefix, workdir, db)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    conversations = 200
    produced: dict[str, list[float]] = {f"conv-{c}": [] for c in range(conversations)}
    try:
        # warm up: one event per conversation, wait until SQL has them all (worker joined)
        for c in range(conversations):
            key, value = make_event(f"conv-{c}", f"agent-{c % 5}", 0, time.time_ns() // 1000)
            await producer.send(topic, value, key=key)
        await producer.flush()
        while (_sql(db, "SELECT COUNT(*) FROM conversation_metrics") or [(0,)])[0][
            0
        ] < conversations:
            await asyncio.sleep(0.1)
        seen = {c: 1 for c in produced}
        latencies: list[float] = []
        pending: dict[str, list[float]] = {c: [] for c in produced}

        async def poll() -> None:
            while True:
                now = time.time()
                for cid, total in _sql(
                    db, "SELECT conversation_id, events_total FROM conversation_metrics"
                ):
                    while seen[cid] < total and pending[cid]:
                        latencies.append(now - pending[cid].pop(0))
                        seen[cid] += 1
                await asyncio.sleep(0.02)

        poller = asyncio.create_task(poll())
        started = time.perf_counter()
        i = 0
        while time.perf_counter() - started < seconds:
            target = int((time.perf_counter() - started) * rate)
            while i < target:
                c = i % conversations
                cid = f"conv-{c}"
                t = time.time()
                key, value = make_event(cid, f"agent-{c % 5}", 1 + i // conversations, int(t * 1e6))
                pending[cid].append(t)
                await producer.send(topic, value, key=key)
                i += 1
            await asyncio.sleep(0.005)
        await producer.flush()
        deadline = time.perf_counter() + 60
        while any(pending.values()) and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        poller.cancel()
        return {
            "visible_latency_p50_s": percentile(latencies, 50),
            "visible_latency_p99_s": percentile(latencies, 99),
            "latency_events": len(latencies),
            "latency_unseen_events": sum(len(p) for p in pending.values()),
            "latency_rate_events_per_s": i / seconds,
        }
    finally:
        await producer.stop()
        proc.terminate()
        proc.wait()


async def main(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prefix = f"b{uuid.uuid4().hex[:6]}."
        await create_topics(bootstrap, prefix=prefix)
        topic = MONITOR_EVENTS.full_name(prefix)
        await prefill(bootstrap, topic, args.events, args.conversations, args.agents)
        result: dict[str, Any] = {"events": args.events}
        result["raw_events_per_s"] = await raw_consumer(bootstrap, topic, args.events)
        naive_n = min(args.events, args.naive_events)
        naive = await naive_faust(bootstrap, topic, naive_n, workdir)
        result["naive_faust_events_per_s"] = naive["events_per_s"]
        result["processor_events_per_s"] = await processor_throughput(
            bootstrap, prefix, args.events, workdir
        )
        if args.rate:
            lat_prefix = f"l{uuid.uuid4().hex[:6]}."
            await create_topics(bootstrap, prefix=lat_prefix)
            result.update(
                await visible_latency(bootstrap, lat_prefix, args.rate, args.seconds, workdir)
            )
        return result


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--naive-events", type=int, default=40_000)
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rate", type=int, default=5000, help="latency phase events/s (0: skip)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs.configure("WARNING")  # logs on stderr: --json output stays one object on stdout
    with EmbeddedBroker() as broker:
        result = asyncio.run(main(args, broker.bootstrap))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'measure':<34}{'value':>14}")
    for key, value in result.items():
        print(f"{key:<34}{value:>14.1f}" if isinstance(value, float) else f"{key:<34}{value:>14}")
    ratio = result["processor_events_per_s"] / result["naive_faust_events_per_s"]
    print(f"{'processor / naive Faust':<34}{ratio:>14.1f}")


if __name__ == "__main__":
    os.environ.setdefault("CONVOSTREAM_BROKER_COMPAT", "tansu")  # the embedded broker
    cli()
