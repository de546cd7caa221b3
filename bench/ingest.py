"""Collector throughput, latency and memory, each beside a baseline measured in the same run.

Broker (embedded Tansu), simulator and the process under test each run as their own process, as
in production. Throughput: 1,000 conversations offered far more frames than one core can carry;
frames/s acknowledged by the broker, for ``convostream collect`` and for a minimal raw loop
(websockets receive → json → fastavro → aiokafka send) against the same simulator and broker.
Latency: frame read → broker acknowledgement at a fixed 5,000 frames/s (the collector's
histogram). Memory: resident set of a collector monitoring 1,000 conversations minus one
monitoring none, per conversation.

    .venv/bin/python bench/ingest.py [--conversations 1000] [--seconds 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convostream.broker import EmbeddedBroker, create_topics, free_port

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


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback http
        return str(resp.read().decode())


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _metrics(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in _get(f"http://127.0.0.1:{port}/metrics").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _published(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if "published_records_total" in k and "monitor.events" in k)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _percentile(m: dict[str, float], q: float) -> float:
    """Upper bound (ms) of the histogram bucket holding the q-th percentile."""
    prefix = "convostream_collector_publish_latency_seconds_bucket{le="
    buckets = sorted(
        (float(k[len(prefix) + 1 : -2]), v)
        for k, v in m.items()
        if k.startswith(prefix) and "+Inf" not in k
    )
    total = m.get("convostream_collector_publish_latency_seconds_count", 0.0)
    for bound, count in buckets:
        if count >= q / 100 * total:
            return bound * 1000
    return float("inf")


class Run:
    """One simulator process plus the broker topics of one measurement."""

    def __init__(self, bootstrap: str, tmp: Path, conversations: int, rate: float) -> None:
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
            ],
            {"CONVOSTREAM_SIM_API_KEY": KEY, "CONVOSTREAM_LOG_LEVEL": "WARNING"},
            tmp / f"sim-{self.port}.log",
        )
        asyncio.run(create_topics(bootstrap, prefix=self.prefix))
        _wait_http(f"http://127.0.0.1:{self.port}/_sim/status")

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "CONVOSTREAM_KAFKA_BOOTSTRAP": self.bootstrap,
            "CONVOSTREAM_UPSTREAM_URL": f"http://127.0.0.1:{self.port}",
            "CONVOSTREAM_API_KEY": KEY,
            "CONVOSTREAM_TOPIC_PREFIX": self.prefix,
            "CONVOSTREAM_LOG_FORMAT": "json",
            "CONVOSTREAM_LOG_LEVEL": "WARNING",
            **extra,
        }

    def collector(self, metrics_port: int, **extra: str) -> subprocess.Popen[bytes]:
        env = self.env(CONVOSTREAM_METRICS_PORT=str(metrics_port), **extra)
        return _start(["-m", "convostream", "collect"], env, self.tmp / f"c-{metrics_port}.log")

    def close(self) -> None:
        _stop(self.sim)


def collector_throughput(run: Run, seconds: float, conversations: int) -> float:
    port = free_port()
    proc = run.collector(port)
    try:
        _wait_http(f"http://127.0.0.1:{port}/metrics")
        deadline = time.monotonic() + 60
        while _metrics(port).get("convostream_collector_live_sockets", 0) < conversations:
            if time.monotonic() > deadline:
                raise RuntimeError("collector did not open every socket")
            time.sleep(0.5)
        time.sleep(3)  # replay bursts over, steady state
        start, t0 = _published(_metrics(port)), time.monotonic()
        time.sleep(seconds)
        return (_published(_metrics(port)) - start) / (time.monotonic() - t0)
    finally:
        _stop(proc)


def raw_throughput(run: Run, seconds: float) -> float:
    out = run.tmp / "raw.json"
    proc = _start(
        [str(Path(__file__)), "--raw-loop", str(out), "--seconds", str(seconds)],
        run.env(),
        run.tmp / "raw.log",
    )
    proc.wait(seconds + 120)
    return float(json.loads(out.read_text())["frames_per_s"])


async def raw_loop(seconds: float) -> float:
    """The baseline: websockets receive → json → fastavro → aiokafka send, nothing else."""
    import aiohttp
    from aiokafka import AIOKafkaProducer
    from fastavro import schemaless_writer
    from websockets.asyncio.client import connect

    import convostream.kafka_compat  # noqa: F401
    from schemas.avro_schemas import parsed

    base = os.environ["CONVOSTREAM_UPSTREAM_URL"]
    headers = {"xi-api-key": os.environ["CONVOSTREAM_API_KEY"]}
    topic = os.environ["CONVOSTREAM_TOPIC_PREFIX"] + "convai.monitor.events"
    ids: list[str] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        cursor = None
        while True:
            params = {"page_size": "100", **({"cursor": cursor} if cursor else {})}
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
    acked = 0
    counting = False

    def on_ack(_fut: Any) -> None:
        nonlocal acked
        if counting:
            acked += 1

    async def read(cid: str) -> None:
        ws_url = base.replace("http://", "ws://") + f"/v1/convai/conversations/{cid}/monitor"
        async with connect(ws_url, additional_headers=headers, compression=None) as ws:
            async for message in ws:
                frame = json.loads(message)
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
                fut = await producer.send(topic, buf.getvalue(), key=cid.encode())
                fut.add_done_callback(on_ack)

    tasks = [asyncio.create_task(read(cid)) for cid in ids]
    await asyncio.sleep(8)  # connected, replays over
    counting = True
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    rate = acked / (time.monotonic() - t0)
    for task in tasks:
        task.cancel()
    await producer.stop()
    return rate


def latency_and_memory(run: Run, conversations: int) -> tuple[float, float, float]:
    port, idle_port = free_port(), free_port()
    proc = run.collector(port)
    idle = run.collector(
        idle_port,
        CONVOSTREAM_COLLECTOR_AGENT_IDS="agent_nobody",
        **{"CONVOSTREAM_COLLECTOR_GROUP_ID": "idle"},
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/metrics")
        _wait_http(f"http://127.0.0.1:{idle_port}/metrics")
        while _metrics(port).get("convostream_collector_live_sockets", 0) < conversations:
            time.sleep(0.5)
        time.sleep(5)  # replay bursts over
        before = _metrics(port)
        time.sleep(10)
        after = _metrics(port)
        m = {k: v - before.get(k, 0.0) for k, v in after.items()}  # steady state only
        per_conv = (_rss_kib(proc.pid) - _rss_kib(idle.pid)) / conversations
        return _percentile(m, 50), _percentile(m, 99), per_conv
    finally:
        _stop(proc)
        _stop(idle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--raw-loop", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_loop:
        rate = asyncio.run(raw_loop(args.seconds))
        args.raw_loop.write_text(json.dumps({"frames_per_s": rate}))
        return
    import tempfile

    n = args.conversations
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        saturating = Run(broker.bootstrap, Path(tmp), n, 40.0)
        try:
            raw = raw_throughput(saturating, args.seconds)
            collector = collector_throughput(saturating, args.seconds, n)
        finally:
            saturating.close()
        steady = Run(broker.bootstrap, Path(tmp), n, 5000.0 / n)
        try:
            p50, p99, kib = latency_and_memory(steady, n)
        finally:
            steady.close()
    result = {
        "collector_frames_per_s": round(collector),
        "raw_frames_per_s": round(raw),
        "ratio": round(collector / raw, 3) if raw else 0.0,
        "p50_ms_at_5k": p50,
        "p99_ms_at_5k": p99,
        "kib_per_conversation": round(kib, 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'measure':<28}{'value':>12}  baseline / target")
    print(f"{'collector frames/s':<28}{result['collector_frames_per_s']:>12}  >= 15000")
    print(f"{'raw loop frames/s':<28}{result['raw_frames_per_s']:>12}  same run")
    print(f"{'ratio':<28}{result['ratio']:>12}  >= 0.7")
    print(f"{'p50 frame->ack ms @5k/s':<28}{p50:>12}")
    print(f"{'p99 frame->ack ms @5k/s':<28}{p99:>12}  <= 50")
    print(f"{'KiB per conversation':<28}{result['kib_per_conversation']:>12}  <= 64")


if __name__ == "__main__":
    main()
