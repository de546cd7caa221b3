"""Rules engine throughput and event → command latency, beside a raw consumer, in one run.

One embedded broker, one pre-filled ``convai.monitor.events`` topic (the synthetic events of
``bench/process.py``). Measured on that same topic, one after the other:

* raw: an aiokafka consumer doing Avro decode and a dict count (the ceiling);
* rules: ``convostream rules`` as a subprocess (one process, one core) with 20 rules (regexes,
  counts, windows, alerts and a command), timed from its first evaluated event to the last,
  read from its ``convostream_rules_events_total`` every 500 ms (start-up, group join and state
  restore left out), and per CPU-second of that process (/proc), which is what "one core"
  means on a shared machine. Every fire is produced and every state change written to the
  changelog.

Then latency, on a fresh topic: events are produced at ``--rate`` for ``--seconds`` over
``--latency-conversations`` conversations; a rule sends a signed ``contextual_update``
for one ``user_transcript`` in 20 (about 17 commands/s at 2,000 events/s: commands are
rare next to events, and the embedded broker needs each in its own batch: ``rules/engine.py``).
A reader of ``convai.commands`` takes the time it
sees each command; latency = that time minus the wall clock when the triggering event was handed
to the producer (its ``received_at``). The engine's own histogram (event ``received_at`` →
command acknowledged) is reported beside it, and so is the same latency through a raw relay
(consume, decode, regex, produce; no group, state or signing) measured just before on its own
topics: the floor this broker and machine allow. Load average is printed: the machine is shared.

    .venv/bin/python bench/rules.py [--events 200000] [--rate 2000] [--json]
"""

# ruff: noqa: ASYNC110  (the harness polls a subprocess and a reader by design)

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.process import make_event, percentile, prefill, raw_consumer
from convostream import logs
from convostream.broker import EmbeddedBroker, create_topics, free_port
from convostream.kafka_engine import KafkaBroker
from convostream.measure import wait_http
from schemas.serde import Serde
from schemas.topics import COMMANDS, MONITOR_EVENTS

SERDE = Serde()
KEY = "bench-signing-key"
PLAIN = {"Accept-Encoding": "identity"}  # a gzipped scrape costs the engine CPU
# Seconds between scrapes while timing throughput. Each scrape renders every metric family in
# the engine's process (its CPU, counted in the per-CPU-second figure): at 10 a second that cost
# about 7% of it, where Prometheus scrapes every 15 s.
POLL = 0.5
TRIGGER = "escalate"
# One user_transcript in 20 ("u<seq>" with seq ending in 00, 20, 40, 60 or 80) sends a command:
# commands are rare next to events, as in production.
TRIGGER_MATCH = r"u\d*[02468]0\b"


def twenty_rules() -> list[dict[str, Any]]:
    """20 rules over the synthetic type mix: regexes, counts, windows, alerts, one command."""
    rules: list[dict[str, Any]] = [
        {
            "name": f"user-{i}",
            "when": {"type": "user_transcript", "match": f'"u\\d*{i}"', "count": 2},
            "then": {"alert": "info"},
        }
        for i in range(8)
    ]
    rules += [
        {
            "name": f"agent-{i}",
            "when": {"type": "agent_response", "match": f"a\\d*{i}\\b", "count": 3, "within": 30},
            "then": {"alert": "warning"},
        }
        for i in range(4)
    ]
    rules += [
        {
            "name": f"tool-errors-{n}",
            "when": {"type": "agent_tool_response", "match": '"is_error": true', "count": n},
            "then": {"alert": "warning"},
        }
        for n in (1, 3)
    ]
    rules += [
        {
            "name": f"interruptions-{n}",
            "when": {"type": "interruption", "count": n, "within": 10},
            "then": {"alert": "info"},
        }
        for n in (2, 4)
    ]
    rules += [
        {
            "name": f"chat-parts-{d}",
            "when": {"type": "agent_chat_response_part", "match": f'"n": \\d*{d}\\b', "count": 5},
            "then": {"alert": "info"},
        }
        for d in (3, 7)
    ]
    rules.append(
        {"name": "pings", "when": {"type": "ping", "count": 10}, "then": {"alert": "info"}}
    )
    rules.append(
        {
            "name": TRIGGER,
            "when": {"type": "user_transcript", "match": TRIGGER_MATCH},
            "then": {"command": "contextual_update", "contextual_update": "bench"},
        }
    )
    assert len(rules) == 20
    return rules


class Engine:
    """``convostream rules`` in a subprocess, its metrics on a free port."""

    def __init__(self, bootstrap: str, prefix: str, workdir: Path) -> None:
        rules_file = workdir / "rules.yaml"
        rules_file.write_text(yaml.safe_dump({"rules": twenty_rules()}))
        self.port = free_port()
        env = {
            **os.environ,
            "CONVOSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "CONVOSTREAM_TOPIC_PREFIX": prefix,
            "CONVOSTREAM_RULES_FILE": str(rules_file),
            "CONVOSTREAM_RULES_GROUP_ID": f"{prefix}rules",
            "CONVOSTREAM_COMMANDS_ISSUER": "bench",
            "CONVOSTREAM_COMMANDS_KEY": KEY,
            "CONVOSTREAM_METRICS_PORT": str(self.port),
            "CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS": "2000",
            "CONVOSTREAM_LOG_LEVEL": "WARNING",
        }
        self.log = (workdir / f"rules-{prefix}log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convostream", "rules"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def metric(self, session: aiohttp.ClientSession, name: str) -> float | None:
        try:
            async with session.get(f"http://127.0.0.1:{self.port}/metrics", headers=PLAIN) as resp:
                text = await resp.text()
        except aiohttp.ClientError:
            return None
        values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
        return sum(values) if values else 0.0

    async def wait_ready(self) -> None:
        """Until ``/readyz`` answers 200: the engine holds its partitions, state restored (a
        fixed pause measured the group join on Apache Kafka, which can take longer)."""
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{self.port}/readyz", 120)

    async def histogram(
        self, session: aiohttp.ClientSession, name: str
    ) -> list[tuple[float, float]]:
        async with session.get(f"http://127.0.0.1:{self.port}/metrics") as resp:
            text = await resp.text()
        out = []
        for line in text.splitlines():
            if line.startswith(f"{name}_bucket"):
                le = line.split('le="')[1].split('"')[0]
                out.append((float(le), float(line.split()[-1])))
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of the engine process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Upper bound of the bucket holding quantile ``q`` (a histogram cannot say more)."""
    total = buckets[-1][1] if buckets else 0.0
    for le, count in buckets:
        if total and count >= q * total:
            return le
    return float("nan")


async def rules_throughput(
    bootstrap: str, prefix: str, n: int, workdir: Path
) -> tuple[float, float]:
    """Events per wall-clock second and per CPU-second of the engine process."""
    engine = Engine(bootstrap, prefix, workdir)
    try:
        async with aiohttp.ClientSession() as session:
            t0 = t1 = None
            last = (0.0, 0.0)  # (time, events) of the previous poll
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                seen = await engine.metric(session, "convostream_rules_events_total")
                now = time.perf_counter()
                if seen and t0 is None:
                    t0, first, cpu0 = now, seen, engine.cpu_seconds()
                if t0 is not None and seen is not None and seen >= n:
                    cpu1 = engine.cpu_seconds()
                    # the last events were evaluated between two polls: place the end by the
                    # rate so far rather than at this poll (up to POLL late)
                    t_prev, seen_prev = last
                    if t_prev > t0 and seen_prev > first:
                        rate = (seen_prev - first) / (t_prev - t0)
                        now = min(now, t_prev + (n - seen_prev) / rate)
                    t1 = now
                    break
                if t0 is not None and seen is not None:
                    last = (now, seen)
                await asyncio.sleep(POLL)
            if t0 is None or t1 is None:
                raise RuntimeError("the rules engine did not evaluate every event")
            if t1 <= t0 or cpu1 <= cpu0:
                raise RuntimeError(
                    f"the engine evaluated {n} events within one poll ({POLL} s): too few to "
                    "time, raise --events"
                )
            return (n - first) / (t1 - t0), (n - first) / max(1e-9, cpu1 - cpu0)
    finally:
        engine.stop()


async def raw_relay(bootstrap: str, prefix: str) -> None:
    """The latency baseline: decode each event, test the trigger regex, produce a record keyed
    by the conversation for each match (no group, no state, no signing)."""
    trigger = re.compile(TRIGGER_MATCH)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await consumer.start()
    await producer.start()
    events, commands = MONITOR_EVENTS.full_name(prefix), COMMANDS.full_name(prefix)
    tps = [TopicPartition(events, p) for p in sorted(await producer.partitions_for(events))]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    print("ready", flush=True)
    while True:
        batch = await consumer.getmany(timeout_ms=100)
        for records in batch.values():
            for r in records:
                record = SERDE.decode(r.value).record
                if record["type"] == "user_transcript" and trigger.search(record["raw"]):
                    await producer.send(commands, b"relayed", key=r.key)


class Relay:
    """``raw_relay`` in a subprocess, like the engine."""

    def __init__(self, bootstrap: str, prefix: str, workdir: Path) -> None:
        self.log = (workdir / f"relay-{prefix}log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--raw-relay", prefix, "--bootstrap", bootstrap],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.path = workdir / f"relay-{prefix}log"

    async def wait_ready(self) -> None:
        while b"ready" not in self.path.read_bytes():
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


async def latency(
    bootstrap: str,
    prefix: str,
    rate: int,
    seconds: float,
    conversations: int,
    workdir: Path,
    relay: bool = False,
) -> dict[str, float]:
    """Event → command latency through the rules engine, or through the raw relay."""
    engine: Engine | Relay = (Relay if relay else Engine)(bootstrap, prefix, workdir)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await reader.start()
    await producer.start()
    triggers: dict[str, int] = {}
    seen_at: dict[str, int] = {}
    try:
        topic = COMMANDS.full_name(prefix)
        tps = [TopicPartition(topic, p) for p in sorted(await producer.partitions_for(topic))]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)

        async def read() -> None:
            while True:
                batch = await reader.getmany(timeout_ms=100)
                now = time.time_ns() // 1000
                for records in batch.values():
                    for r in records:
                        if r.key is not None:
                            seen_at.setdefault(r.key.decode(), now)

        reading = asyncio.create_task(read())
        async with aiohttp.ClientSession() as session:
            await engine.wait_ready()  # the engine: group joined, every partition restored
            events = MONITOR_EVENTS.full_name(prefix)
            total = int(rate * seconds)
            trigger = re.compile(TRIGGER_MATCH)
            started = time.perf_counter()
            for i in range(total):
                due = started + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                cid = f"conv-{random.randrange(conversations)}"
                at = time.time_ns() // 1000
                key, value = make_event(cid, "agent-0", i, at)
                record = SERDE.decode(value).record
                if (
                    cid not in triggers
                    and record["type"] == "user_transcript"
                    and trigger.search(record["raw"])
                ):
                    triggers[cid] = at
                await producer.send(events, value, key=key)
            await producer.flush()
            achieved = total / (time.perf_counter() - started)
            deadline = time.monotonic() + 30
            while set(triggers) - set(seen_at) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            buckets = (
                []
                if isinstance(engine, Relay)
                else await engine.histogram(session, "convostream_rules_fire_latency_seconds")
            )
        reading.cancel()
    finally:
        await producer.stop()
        await reader.stop()
        engine.stop()
    lat = [(seen_at[c] - t) / 1000 for c, t in triggers.items() if c in seen_at]
    if relay:
        return {
            "raw_relay_p50_ms": percentile(lat, 50),
            "raw_relay_p99_ms": percentile(lat, 99),
        }
    return {
        "latency_rate_events_per_s": achieved,
        "latency_commands": float(len(lat)),
        "latency_commands_per_s": len(lat) / seconds,
        "latency_unseen_commands": float(len(triggers) - len(lat)),
        "event_to_command_p50_ms": percentile(lat, 50),
        "event_to_command_p99_ms": percentile(lat, 99),
        "engine_histogram_p99_le_ms": bucket_quantile(buckets, 0.99) * 1000,
    }


async def main(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prefix = f"r{uuid.uuid4().hex[:6]}."
        await create_topics(bootstrap, prefix=prefix)
        topic = MONITOR_EVENTS.full_name(prefix)
        await prefill(bootstrap, topic, args.events, args.conversations, 10)
        result: dict[str, Any] = {"events": args.events, "rules": 20}
        result["raw_events_per_s"] = await raw_consumer(bootstrap, topic, args.events)
        (
            result["rules_events_per_s"],
            result["rules_events_per_cpu_s"],
        ) = await rules_throughput(bootstrap, prefix, args.events, workdir)
        if args.rate:
            for relay in (True, False):  # the raw relay first: the baseline of the same run
                lat_prefix = f"l{uuid.uuid4().hex[:6]}."
                await create_topics(bootstrap, prefix=lat_prefix)
                result.update(
                    await latency(
                        bootstrap,
                        lat_prefix,
                        args.rate,
                        args.seconds,
                        args.latency_conversations,
                        workdir,
                        relay=relay,
                    )
                )
        result["load_average_1m_before"] = args.load_before
        result["load_average_1m_after"] = os.getloadavg()[0]
        return result


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=2000, help="latency phase events/s (0: skip)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--latency-conversations", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--broker",
        choices=("tansu", "kafka"),
        default="tansu",
        help="the embedded Tansu broker, or Apache Kafka (needs Java; fetched from Maven Central)",
    )
    parser.add_argument("--raw-relay", metavar="PREFIX", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_relay:
        asyncio.run(raw_relay(args.bootstrap, args.raw_relay))
        return
    args.load_before = os.getloadavg()[0]
    logs.configure("WARNING")  # logs on stderr: --json output stays one object on stdout
    broker: EmbeddedBroker | KafkaBroker
    if args.broker == "kafka":
        os.environ.pop("CONVOSTREAM_BROKER_COMPAT", None)
        broker = KafkaBroker(properties={"group.min.session.timeout.ms": "1000"})
    else:
        os.environ.setdefault("CONVOSTREAM_BROKER_COMPAT", "tansu")
        broker = EmbeddedBroker()
    with broker:
        result = asyncio.run(main(args, broker.bootstrap))
    result["broker"] = args.broker
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'measure':<34}{'value':>14}")
    for key, value in result.items():
        print(f"{key:<34}{value:>14.1f}" if isinstance(value, float) else f"{key:<34}{value:>14}")
    print(f"{'rules / raw':<34}{result['rules_events_per_s'] / result['raw_events_per_s']:>14.2f}")


if __name__ == "__main__":
    cli()
