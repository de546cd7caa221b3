"""The headline: N live conversations end to end (collector + processor) on one machine.

Broker (``--engine tansu``, the embedded one, or ``kafka``), simulator, ONE ``convostream
collect`` and ONE ``convostream process`` (SQLite sink in a temporary directory) each run as
their own process, as in production. The simulator holds ``--conversations`` concurrent
conversations (starts spread over a ramp, conversations long enough to outlast the run, ended
slots refilled) at ``--rate`` frames/s each. Once the collector has opened every socket and the
replay bursts of those openings have reached SQL (``settle_s``), ``--seconds`` of steady
state are measured:

* ``conversations``: the collector's ``live_sockets`` gauge (concurrently monitored);
* ``events_per_s``: records the broker acknowledged to the collector, per second;
* ``processed_events_per_s``: events the processor made visible in SQL (the rows'
  ``events_total`` summed), per second;
* ``cpu_us_per_event``: utime + stime (``/proc/<pid>/stat``) over the window of the collector
  per event it published plus of the processor per event it made visible (each process's own
  count, so a processor catching up is not billed to the collector's events); simulator and
  broker excluded (elsewhere in production). Below the offered rate the collector fell behind:
  ``drain_s`` says how long its buffer then took to empty;
* ``p99_event_to_row_ms``: ``received_at`` → the SQL row showing it. A poller reads the rows
  written since its last read (``updated_at``) every 50 ms; each change is one sample, poll start
  minus ``last_received_at`` (so it includes up to 50 ms of polling; at 0.5 events/s per
  conversation nearly every event is its row's newest when seen);
* ``kib_per_conversation``: collector RSS / conversations; ``processor_rss_mib``;
* ``lost_events``: frames of the simulator's ground truth generated before the end of the
  window (the file's size then; the run goes on 5 s more, and until the collector's buffer is
  empty, before the collector stops) that the events topic lacks, by
  (conversation, frame) as the collector tests match them (``tests/collector_harness.py``).

Baseline, same run: the raw loops of ``bench/ingest.py`` (socket → json → fastavro →
aiokafka, against the same simulator at the same rate, on topics of its own) and
``bench/process.py`` (aiokafka consumer + Avro decode over the topic the collector filled):
their CPU per event, summed, is what the pipeline costs with no correctness work at all.

The open-file limit is raised to its hard limit (sockets: collector, simulator, raw loop).

    .venv/bin/python bench/e2e.py [--conversations 10000] [--rate 0.5] [--seconds 30]
        [--engine tansu|kafka] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer

from bench.ingest import Run, _stop, raw_throughput
from bench.process import percentile, raw_consumer, start_processor
from convostream import logs
from convostream.broker import (
    BrokerProcess,
    EmbeddedBroker,
    free_port,
    partitions_of,
)
from convostream.headline import (
    Pipeline,
    raise_nofile,
    ramp_seconds,
    settle,
    steady_state,
    watch,
)
from convostream.kafka_engine import KafkaBroker
from convostream.measure import scrape, wait_http
from schemas.topics import MONITOR_EVENTS
from tests.collector_harness import check_events, ground_truth, read_topic

POLL_S = 0.05
TAIL_S = 5.0  # the run goes on at least this long after the ground-truth cut
DRAIN_S = 180.0  # longest wait, after the window, for a collector that fell behind to catch up


class E2ERun(Run):
    """bench/ingest.py's run (its env, collector, raw loop); the simulator ramps and records."""

    def __init__(self, bootstrap: str, tmp: Path, conversations: int, rate: float) -> None:
        self.truth = tmp / "truth.jsonl"
        ramp = str(ramp_seconds(conversations))
        super().__init__(
            bootstrap,
            tmp,
            conversations,
            rate,
            # markers as upstream sends them: the raw loop's window waits for history_complete
            ("--ramp-seconds", ramp, "--replay-markers", "--ground-truth", str(self.truth)),
        )


def _iso_micros(value: str) -> int:
    stamp = datetime.fromisoformat(value)
    return int(stamp.timestamp() * 1_000_000)


class RowPoller(threading.Thread):
    """Samples received_at → SQL row visible for every row whose ``last_received_at`` moved."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.samples: list[float] = []
        self.counting = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        last: dict[str, str] = {}
        mark = ""  # the newest updated_at seen, as the sink wrote it (rows are written in order)
        while not self._stop_event.wait(POLL_S):
            if not self.db.exists():
                continue
            now = time.time()
            try:
                conn = sqlite3.connect(self.db)
                rows = conn.execute(
                    "SELECT conversation_id, last_received_at, updated_at"
                    " FROM conversation_metrics WHERE updated_at >= ?",
                    (mark,),
                ).fetchall()
                conn.close()
            except sqlite3.OperationalError:  # schema not created yet
                continue
            for cid, received, updated in rows:
                mark = max(mark, updated)
                if last.get(cid) == received:
                    continue
                last[cid] = received
                if self.counting:
                    self.samples.append(now * 1000 - _iso_micros(received) / 1000)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@contextmanager
def _broker(engine: str) -> Iterator[BrokerProcess]:
    broker: BrokerProcess = EmbeddedBroker() if engine == "tansu" else KafkaBroker()
    with broker:
        yield broker


def _drain(port: int) -> float:
    """Seconds until the collector's buffer is empty (it fell behind: a figure of its own)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < DRAIN_S:
        if not scrape(port).get("convostream_collector_buffer_records", 0):
            break
        time.sleep(1)
    return round(time.monotonic() - t0, 1)


async def _topic_records(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await partitions_of(consumer, topic))
        return int(sum(ends.values()))
    finally:
        await consumer.stop()


def _truth_cut(path: Path) -> int:
    """Bytes of whole lines the simulator has written so far."""
    data = path.read_bytes()
    return data.rfind(b"\n") + 1


def _check_alive(components: dict[str, tuple[subprocess.Popen[bytes], Path]]) -> None:
    """Raise, with the tail of its log, when a component under test has exited."""
    for name, (proc, log) in components.items():
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the {name} exited with {proc.returncode}:\n{tail}")


def pipeline(run: E2ERun, conversations: int, seconds: float, engine: str) -> dict[str, Any]:
    """Collector + processor: the steady-state window's figures and the ground-truth cut."""
    db = run.tmp / "e2e.db"
    processor = start_processor(run.bootstrap, run.prefix, run.tmp, db, engine=engine)
    port = free_port()
    collector = run.collector(port)
    components = {
        "collector": (collector, run.tmp / f"c-{port}.log"),
        "processor": (processor, run.tmp / f"processor-{run.prefix}log"),
    }
    poller = RowPoller(db)
    poller.start()
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        live = watch(port, 60 + conversations / 100, until_sockets=conversations)
        settled = settle(port, db)
        _check_alive(components)
        poller.counting = True
        result = steady_state(
            Pipeline(collector.pid, port, processor.pid, db),
            seconds,
            live,
            lambda: _check_alive(components),
        )
        poller.counting = False
        cut = _truth_cut(run.truth)
        samples = poller.samples
        result |= {
            "p99_event_to_row_ms": round(percentile(samples, 99)) if samples else None,
            "p50_event_to_row_ms": round(percentile(samples, 50)) if samples else None,
            "latency_samples": len(samples),
            "settle_s": settled,
        }
        time.sleep(TAIL_S)  # frames generated before the cut have been read by now
        result["drain_s"] = _drain(port)
        return {**result, "_cut": cut}
    finally:
        poller.stop()
        _stop(collector)
        _stop(processor)


def lost_events(run: E2ERun, cut: int) -> tuple[int, int, int]:
    """(frames checked, frames lost, duplicates) of the ground truth before ``cut``."""
    with run.truth.open("rb") as f:
        head = f.read(cut)
    path = run.tmp / "truth-cut.jsonl"
    path.write_bytes(head)
    truth = ground_truth(path)
    topic = MONITOR_EVENTS.full_name(run.prefix)
    events = asyncio.run(read_topic(run.bootstrap, topic))
    check = check_events(truth, events)
    return len(truth), len(check.missing), check.duplicates


def raw_consume_us(run: E2ERun) -> tuple[float, float]:
    """bench/process.py's raw consumer over the topic the collector filled: (µs CPU per event,
    events/s). Before :func:`lost_events`, whose fence adds records it cannot decode."""
    topic = MONITOR_EVENTS.full_name(run.prefix)
    n = asyncio.run(_topic_records(run.bootstrap, topic))
    cpu0 = time.process_time()
    rate = asyncio.run(raw_consumer(run.bootstrap, topic, n))
    return (time.process_time() - cpu0) / n * 1e6, rate


def raw_collect_us(run: E2ERun, seconds: float) -> tuple[float, float]:
    """bench/ingest.py's raw loop against the same simulator, on topics of its own: (µs CPU
    per frame, frames/s)."""
    raw = raw_throughput(run, seconds)
    rate = raw["frames_per_s"]
    return (raw["cpu"] / rate * 1e6 if rate else 0.0), rate


def measure(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    load = os.getloadavg()
    if args.engine == "tansu":
        os.environ.setdefault("CONVOSTREAM_BROKER_COMPAT", "tansu")
    with _broker(args.engine) as broker, tempfile.TemporaryDirectory() as tmp:
        bootstrap = broker.bootstrap  # type: ignore[attr-defined]
        run = E2ERun(bootstrap, Path(tmp), args.conversations, args.rate)
        try:
            figures = pipeline(run, args.conversations, args.seconds, args.engine)
            cut = figures.pop("_cut")
            consume_us, consume_rate = raw_consume_us(run)
            checked, lost, duplicates = lost_events(run, cut)
            collect_us, collect_rate = raw_collect_us(run, args.seconds)
        finally:
            run.close()
    return {
        **figures,
        "lost_events": lost,
        "checked_events": checked,
        "duplicate_events": duplicates,
        "baseline": {
            "events_per_s": round(collect_rate),
            "cpu_us_per_event": round(collect_us + consume_us, 1),
            "raw_collect_cpu_us_per_event": round(collect_us, 1),
            "raw_consume_cpu_us_per_event": round(consume_us, 1),
            "raw_consume_events_per_s": round(consume_rate),
        },
        "offered_events_per_s": args.conversations * args.rate,
        "engine": args.engine,
        "seconds": args.seconds,
        "load_avg_before": [round(x, 2) for x in load],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "rlimit_nofile_raised_to": nofile,
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


TARGETS = {
    "cpu_us_per_event": "<= 100",
    "p99_event_to_row_ms": "<= 1000",
    "kib_per_conversation": "<= 64",
    "lost_events": "0",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=0.5, help="events/s per conversation")
    parser.add_argument("--seconds", type=float, default=30.0, help="steady-state window")
    parser.add_argument("--engine", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs.configure("WARNING")  # logs on stderr: --json output stays one object on stdout
    result = measure(args)
    if args.json:
        print(json.dumps(result))
        return
    base = result.pop("baseline")
    print(f"{'measure':<28}{'pipeline':>12}{'raw loops':>12}  target")
    for key, value in result.items():
        print(f"{key:<28}{value!s:>12}{base.get(key, '')!s:>12}  {TARGETS.get(key, '')}")


if __name__ == "__main__":
    main()
