"""Collector throughput, latency and memory, each beside a baseline measured in the same run.

Broker (embedded Tansu), simulator and the process under test each run as their own process, as
in production. Throughput: 1,000 conversations offered far more frames than one core can carry;
frames/s acknowledged by the broker, for ``convostream collect`` and for a minimal raw loop
(socket receive → json → fastavro → aiokafka send, with the collector's websocket client,
picows.websockets) against the same simulator and broker,
alternately, ``--rounds`` times each (medians reported; the ratio is the median of the ratios of
adjacent raw/collector windows, so load from other processes hits both alike).

On a 2-core machine the simulator (one Python process) is the limit: it needs a whole core for
about 20k frames/s, so the wall-clock rates say as much about the CPU left to the simulator as
about the process under test. Hence, beside them, each window's CPU time (utime + stime from
/proc) of the process under test and of the simulator: ``*_frames_per_cpu_s`` (frames per
CPU-second of the process under test) compare the cost of a frame independently of the source,
and ``sim_cpu`` near 1.0 means the source, not the consumer, was saturated.

Every window starts once every socket is open, every replay has ended (``history_complete``;
the simulator runs with repeats and markers on) and the replayed frames are acknowledged.

Latency: frame read → broker acknowledgement at a fixed 5,000 frames/s, from the collector's
``publish_latency_seconds`` histogram (loop time at the read, loop time when the acknowledgement
is processed; buckets every 1-10 ms up to 100 ms), over a 10 s steady-state window (bucket
counts differenced), quantiles interpolated linearly inside the bucket as Prometheus'
``histogram_quantile`` does: exact to within a bucket's width (1-5 ms below 50 ms).
Memory: resident set of a collector monitoring 1,000 conversations minus one (on topics of its
own, so it owns nothing) monitoring none, per conversation.

    .venv/bin/python bench/ingest.py [--conversations 1000] [--seconds 10] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convostream.broker import EmbeddedBroker, create_topics, free_port
from convostream.measure import (
    cpu_seconds,
    published_events,
    rss_kib,
    scrape,
    wait_http,
)

KEY = "bench-key"
ROOT = Path(__file__).resolve().parents[1]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], env={**os.environ, **env}, stdout=out, stderr=out, cwd=ROOT
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _percentile(m: dict[str, float], q: float) -> float:
    """q-th percentile (ms) of the latency histogram, interpolated inside its bucket."""
    prefix = "convostream_collector_publish_latency_seconds_bucket{le="
    buckets = sorted(
        (float(k[len(prefix) + 1 : -2]), v)
        for k, v in m.items()
        if k.startswith(prefix) and "+Inf" not in k
    )
    total = m.get("convostream_collector_publish_latency_seconds_count", 0.0)
    rank = q / 100 * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > below:
            return round(1000 * (lower + (bound - lower) * (rank - below) / (count - below)), 1)
        lower, below = bound, count
    return float("inf")


def caught_up(rate: float, backlog: float, offered: float) -> bool:
    """Whether a consumer has drained what queued up while it started: it publishes no faster
    than the source offers (no backlog left to drain) and holds under 0.2 s of frames. A
    latency window opened earlier measures the catch-up (seconds of queue), not the steady
    state."""
    return rate <= 1.15 * offered and backlog <= 0.2 * offered


def _quantiles_ms(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99)}


class Run:
    """One simulator process plus the broker topics of one measurement."""

    def __init__(
        self,
        bootstrap: str,
        tmp: Path,
        conversations: int,
        rate: float,
        knobs: tuple[str, ...] = ("--repeat-ratio", "0.2", "--replay-markers"),
    ) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.port = free_port()
        self.prefix = f"b{uuid.uuid4().hex[:6]}."
        self.sim = _start(
            [
                "-m",
                "convostream",
                "simulate",
                "--port",
                str(self.port),
                "--conversations",
                str(conversations),
                "--events-per-second",
                str(rate),
                "--turns",
                "100000",
                "--seed",
                "1",
                "--duration",
                "3600",
                *knobs,  # default: repeated frames and replay markers, as upstream may send
            ],
            {"CONVOSTREAM_SIM_API_KEY": KEY, "CONVOSTREAM_LOG_LEVEL": "WARNING"},
            tmp / f"sim-{self.port}.log",
        )
        self.raw_prefix = f"{self.prefix}raw."
        asyncio.run(create_topics(bootstrap, prefix=self.prefix))
        asyncio.run(create_topics(bootstrap, prefix=self.raw_prefix))
        wait_http(f"http://127.0.0.1:{self.port}/_sim/status")

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "CONVOSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "CONVOSTREAM_UPSTREAM_URL": f"http://127.0.0.1:{self.port}",
            "CONVOSTREAM_API_KEY": KEY,
            "CONVOSTREAM_TOPIC_PREFIX": self.prefix,
            "BENCH_SIM_PID": str(self.sim.pid),
            "CONVOSTREAM_LOG_FORMAT": "json",
            "CONVOSTREAM_LOG_LEVEL": "WARNING",
            **extra,
        }

    def collector(self, metrics_port: int, **extra: str) -> subprocess.Popen[bytes]:
        env = self.env(CONVOSTREAM_METRICS_PORT=str(metrics_port), **extra)
        return _start(["-m", "convostream", "collect"], env, self.tmp / f"c-{metrics_port}.log")

    def close(self) -> None:
        _stop(self.sim)


Window = dict[str, float]  # frames_per_s, cpu (cores of the process under test), sim_cpu


STEADY_RATE = 5000.0  # frames/s offered in the latency window
SETTLE_TIMEOUT = 180.0  # seconds for every socket to open and the replay bursts to drain


def _settle(port: int, conversations: int) -> None:
    """Wait until every socket is open, every replay ended (``history_complete`` counted) and
    the records buffered by then are acknowledged: a window opened earlier measures the
    100-frame bursts of 1,000 sockets draining, not the steady state (under load that takes
    tens of seconds)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    target: float | None = None
    while True:
        m = scrape(port)
        if target is None:
            markers = sum(v for k, v in m.items() if k.startswith(_MARKERS))
            if m.get("convostream_collector_live_sockets", 0) >= conversations and (
                markers >= 2 * conversations
            ):
                target = published_events(m) + m.get("convostream_collector_buffer_records", 0.0)
        elif published_events(m) >= target:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"collector not settled after {SETTLE_TIMEOUT:.0f} s: {m}")
        time.sleep(0.5)


_MARKERS = "convostream_collector_replay_markers_total"


def collector_throughput(run: Run, seconds: float, conversations: int) -> Window:
    port = free_port()
    proc = run.collector(port)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        _settle(port, conversations)
        start, t0 = published_events(scrape(port)), time.monotonic()
        cpu0, sim0 = cpu_seconds(proc.pid), cpu_seconds(run.sim.pid)
        time.sleep(seconds)
        frames = published_events(scrape(port)) - start
        elapsed = time.monotonic() - t0
        cpu, sim = cpu_seconds(proc.pid) - cpu0, cpu_seconds(run.sim.pid) - sim0
        return {"frames_per_s": frames / elapsed, "cpu": cpu / elapsed, "sim_cpu": sim / elapsed}
    finally:
        _stop(proc)


def raw_throughput(run: Run, seconds: float, offered: float = 0.0) -> Window:
    """The raw loop's window; with ``offered`` (frames/s) it first waits to have caught up."""
    out = run.tmp / "raw.json"
    proc = _start(
        [
            str(Path(__file__)),
            "--raw-loop",
            str(out),
            "--seconds",
            str(seconds),
            "--offered",
            str(offered),
        ],
        # Topics of its own: its records (no registry header) would otherwise be read back by
        # the next collector round's crash recovery, costing it CPU inside the window.
        run.env(CONVOSTREAM_TOPIC_PREFIX=run.raw_prefix),
        run.tmp / "raw.log",
    )
    if proc.wait(seconds + SETTLE_TIMEOUT + 60) != 0:
        raise RuntimeError("raw loop failed: " + (run.tmp / "raw.log").read_text()[-2000:])
    return {k: float(v) for k, v in json.loads(out.read_text()).items()}


async def raw_loop(seconds: float, offered: float) -> Window:
    """The baseline: receive (the collector's websocket client) → json → fastavro → aiokafka
    send, nothing else.

    Latency (read → acknowledgement, exact per frame) is kept for the window; with ``offered``
    the window waits until the loop has caught up with the source (:func:`caught_up`)."""
    import aiohttp
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaTimeoutError
    from fastavro import schemaless_writer
    from picows.websockets import ConnectionClosed, InvalidHandshake, connect

    from convostream import kafka_compat
    from ingest.discovery import EXCLUDED  # as the collector: in-progress ones only
    from schemas.avro_schemas import parsed

    kafka_compat.install()  # idempotent producers on the embedded broker, as the collector

    base = os.environ["CONVOSTREAM_UPSTREAM_URL"]
    headers = {"xi-api-key": os.environ["CONVOSTREAM_API_KEY"]}
    topic = os.environ["CONVOSTREAM_TOPIC_PREFIX"] + "convai.monitor.events"
    ids: list[str] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        cursor = None
        while True:
            params = [("page_size", "100"), *(("exclude_statuses", s) for s in EXCLUDED)]
            params += [("cursor", cursor)] if cursor else []
            async with session.get(f"{base}/v1/convai/conversations", params=params) as r:
                body = await r.json()
            ids += [c["conversation_id"] for c in body["conversations"]]
            cursor = body.get("next_cursor")
            if not body.get("has_more"):
                break
    producer = AIOKafkaProducer(
        bootstrap_servers=os.environ["CONVOSTREAM_KAFKA_BOOTSTRAP"],
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    schema = parsed("MonitorEvent")
    acked = sent = 0
    replayed: set[str] = set()
    loop = asyncio.get_running_loop()
    latencies: list[float] | None = None  # set for the window

    def on_ack(born: float) -> Callable[[Any], None]:
        def acked_now(_fut: Any) -> None:
            nonlocal acked
            acked += 1
            if latencies is not None:
                latencies.append(loop.time() - born)

        return acked_now

    async def read(cid: str) -> None:
        ws_url = base.replace("http://", "ws://") + f"/v1/convai/conversations/{cid}/monitor"
        while True:  # a handshake may time out while 1,000 sockets open on a loaded machine
            try:
                async with connect(
                    ws_url, additional_headers=headers, compression=None, ping_interval=None
                ) as ws:
                    await forward(cid, ws)
                return
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed):
                await asyncio.sleep(1)

    async def forward(cid: str, ws: Any) -> None:
        nonlocal sent
        async for message in ws:
            born = loop.time()
            frame = json.loads(message)
            if frame["type"] in ("connected", "history_complete"):
                if frame["type"] == "history_complete":
                    replayed.add(cid)
                continue
            buf = __import__("io").BytesIO()
            schemaless_writer(
                buf,
                schema,
                {
                    "event_key": "k",
                    "conversation_id": cid,
                    "agent_id": None,
                    "type": frame["type"],
                    "upstream_event_id": None,
                    "received_at": 0,
                    "collector_id": "raw",
                    "connection_id": "c",
                    "connection_seq": 0,
                    "replay": False,
                    "raw": message,
                    "payload": ("convostream.RawPayload", {"type": frame["type"], "data": ""}),
                },
            )
            # aiokafka's buffer full for a whole request timeout (10,000 opening replays fill
            # it): wait and offer again, as the collector's back-pressure does
            while True:
                try:
                    fut = await producer.send(topic, buf.getvalue(), key=cid.encode())
                    break
                except KafkaTimeoutError:
                    await asyncio.sleep(0.1)
            sent += 1
            fut.add_done_callback(on_ack(born))

    tasks = [asyncio.create_task(read(cid)) for cid in ids]
    deadline = time.monotonic() + SETTLE_TIMEOUT  # as the collector: replays over and acked
    while len(replayed) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"raw loop not settled: {len(replayed)} of {len(ids)} replays")
        await asyncio.sleep(0.5)
    target = sent
    while acked < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"raw loop not settled: {target - acked} replayed frames unacked")
        await asyncio.sleep(0.5)
    if offered:
        while True:
            before, backlog = acked, sent - acked
            await asyncio.sleep(2)
            if caught_up((acked - before) / 2, backlog, offered):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("raw loop never caught up with the source")
    sim_pid = int(os.environ["BENCH_SIM_PID"])
    start, latencies = acked, []
    t0, cpu0, sim0 = time.monotonic(), time.process_time(), cpu_seconds(sim_pid)
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    window = {
        "frames_per_s": (acked - start) / elapsed,
        "cpu": (time.process_time() - cpu0) / elapsed,
        "sim_cpu": (cpu_seconds(sim_pid) - sim0) / elapsed,
        **_quantiles_ms(latencies),
    }
    for task in tasks:
        task.cancel()
    await producer.stop()
    return window


def _catch_up(port: int, offered: float) -> None:
    """Wait until the collector has :func:`caught_up` (its buffer gauge is the backlog)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        before = published_events(scrape(port))
        time.sleep(2)
        m = scrape(port)
        rate = (published_events(m) - before) / 2
        if caught_up(rate, m.get("convostream_collector_buffer_records", 0.0), offered):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"collector never caught up with {offered:.0f} frames/s: {m}")


def latency_and_memory(run: Run, conversations: int, offered: float) -> dict[str, float]:
    port, idle_port = free_port(), free_port()
    proc = run.collector(port)
    # Topics of its own: on the shared ones it would read the other collector's lifecycle
    # records and monitor every conversation too.
    idle_prefix = f"{run.prefix}idle."
    asyncio.run(create_topics(run.bootstrap, prefix=idle_prefix))
    idle = run.collector(
        idle_port,
        CONVOSTREAM_COLLECTOR_AGENT_IDS="agent_nobody",
        CONVOSTREAM_TOPIC_PREFIX=idle_prefix,
        CONVOSTREAM_COLLECTOR_GROUP_ID="idle",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        wait_http(f"http://127.0.0.1:{idle_port}/metrics")
        _settle(port, conversations)
        _catch_up(port, offered)
        before, t0, cpu0 = scrape(port), time.monotonic(), cpu_seconds(proc.pid)
        time.sleep(10)
        after, elapsed = scrape(port), time.monotonic() - t0
        cpu = (cpu_seconds(proc.pid) - cpu0) / elapsed
        m = {k: v - before.get(k, 0.0) for k, v in after.items()}  # steady state only
        if scrape(idle_port).get("convostream_collector_monitored_conversations", 0):
            raise RuntimeError("the idle collector monitors conversations")
        return {
            "p50_ms": _percentile(m, 50),
            "p99_ms": _percentile(m, 99),
            "kib": (rss_kib(proc.pid) - rss_kib(idle.pid)) / conversations,
            "frames_per_s": published_events(m) / elapsed,
            "cpu": cpu,
        }
    finally:
        _stop(proc)
        _stop(idle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--raw-loop", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--offered", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_loop:
        window = asyncio.run(raw_loop(args.seconds, args.offered))
        args.raw_loop.write_text(json.dumps(window))
        return
    import tempfile

    n = args.conversations
    load = os.getloadavg()[0]
    raws: list[Window] = []
    collectors: list[Window] = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        saturating = Run(broker.bootstrap, Path(tmp), n, 40.0)
        try:
            for _ in range(args.rounds):
                raws.append(raw_throughput(saturating, args.seconds))
                collectors.append(collector_throughput(saturating, args.seconds, n))
        finally:
            saturating.close()
        steady = Run(broker.bootstrap, Path(tmp), n, STEADY_RATE / n)
        try:
            raw_5k = raw_throughput(steady, args.seconds, STEADY_RATE)
            at_5k = latency_and_memory(steady, n, STEADY_RATE)
        finally:
            steady.close()

    def med(windows: list[Window], key: str) -> float:
        return statistics.median(w[key] for w in windows)

    def per_cpu(w: Window) -> float:
        return w["frames_per_s"] / w["cpu"] if w["cpu"] else 0.0

    collector, raw = med(collectors, "frames_per_s"), med(raws, "frames_per_s")
    pairs = list(zip(collectors, raws, strict=True))
    ratios = [c["frames_per_s"] / r["frames_per_s"] for c, r in pairs if r["frames_per_s"]]
    cpu_ratios = [per_cpu(c) / per_cpu(r) for c, r in pairs if per_cpu(r)]
    result = {
        "collector_frames_per_s": round(collector),
        "raw_frames_per_s": round(raw),
        "ratio": round(statistics.median(ratios), 3) if ratios else 0.0,
        "collector_frames_per_cpu_s": round(statistics.median(per_cpu(w) for w in collectors)),
        "raw_frames_per_cpu_s": round(statistics.median(per_cpu(w) for w in raws)),
        "cpu_ratio": round(statistics.median(cpu_ratios), 3) if cpu_ratios else 0.0,
        "sim_cpu_collector": round(med(collectors, "sim_cpu"), 2),
        "sim_cpu_raw": round(med(raws, "sim_cpu"), 2),
        "frames_per_s_at_5k": round(at_5k["frames_per_s"]),
        "p50_ms_at_5k": at_5k["p50_ms"],
        "p99_ms_at_5k": at_5k["p99_ms"],
        "cpu_at_5k": round(at_5k["cpu"], 2),
        "raw_frames_per_s_at_5k": round(raw_5k["frames_per_s"]),
        "raw_p50_ms_at_5k": raw_5k.get("p50_ms", 0.0),
        "raw_p99_ms_at_5k": raw_5k.get("p99_ms", 0.0),
        "raw_cpu_at_5k": round(raw_5k["cpu"], 2),
        "kib_per_conversation": round(at_5k["kib"], 1),
        "rounds": args.rounds,
        "load_before": round(load, 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    r = result
    print(f"{'measure':<30}{'value':>12}  baseline / target")
    print(f"{'collector frames/s':<30}{r['collector_frames_per_s']:>12}  >= 15000")
    print(f"{'raw loop frames/s':<30}{r['raw_frames_per_s']:>12}  same run")
    print(f"{'ratio':<30}{r['ratio']:>12}  >= 0.7")
    print(f"{'collector frames/CPU-s':<30}{r['collector_frames_per_cpu_s']:>12}")
    print(f"{'raw loop frames/CPU-s':<30}{r['raw_frames_per_cpu_s']:>12}  same run")
    print(f"{'CPU-cost ratio':<30}{r['cpu_ratio']:>12}  raw cost / collector cost")
    print(f"{'simulator CPU (coll / raw)':<30}{r['sim_cpu_collector']:>6} / {r['sim_cpu_raw']}")
    print(f"{'frames/s in latency window':<30}{r['frames_per_s_at_5k']:>12}  5000 offered")
    print(f"{'p50 frame->ack ms @5k/s':<30}{r['p50_ms_at_5k']:>12}  raw {r['raw_p50_ms_at_5k']}")
    raw_p99 = r["raw_p99_ms_at_5k"]
    print(f"{'p99 frame->ack ms @5k/s':<30}{r['p99_ms_at_5k']:>12}  <= 50; raw {raw_p99}")
    print(f"{'CPU (cores) @5k/s':<30}{r['cpu_at_5k']:>12}  raw {r['raw_cpu_at_5k']}")
    print(f"{'KiB per conversation':<30}{r['kib_per_conversation']:>12}  <= 64")


if __name__ == "__main__":
    os.environ.setdefault("CONVOSTREAM_BROKER_COMPAT", "tansu")  # the embedded broker
    main()
