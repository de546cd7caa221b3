"""The monitor socket's client library: CPU per received frame, picows.websockets beside websockets.

Why it matters: a collector holds one socket per live conversation, and at 0.5-5 frames/s per
conversation nearly every frame arrives alone, so each pays the client library's whole read
path (socket wake-up, frame parse, message queue, the ``recv`` future). This bench measures that
path alone, as the collector uses it:

* ``picows``: :func:`upstream.websocket.opened` / :func:`~upstream.websocket.open_monitor`, the
  collector's own connect (picows.websockets) and ``recv(decode=False)`` loop;
* ``websockets`` (the baseline, the library the collector used before): websockets' asyncio
  client with the same options (no compression, keepalive pings, ``max_queue`` 8).

A source process (a picows server, so that it stays far from a core at these rates) sends a
typical 300-byte ``agent_response`` frame to random sockets at ``--rate`` frames/s each; each
client runs in its own process, one library at a time, alternately for ``--rounds``, and counts
frames and its own CPU (``getrusage``) over ``--seconds`` once every socket is open. Reported
per library: frames/s, CPU µs per frame, resident memory (MiB, whole process), median of the
rounds; and the source's CPU in cores, to show it was not the limit. Every client process imports
both libraries, so the memory figures differ by the sockets alone, and tunes the garbage
collector as ``convostream collect`` does (:func:`convostream.runtime.tune_gc`).

    .venv/bin/python bench/wsclient.py [--sockets 1000] [--rate 5] [--seconds 15] [--rounds 2]
        [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convostream.broker import free_port
from convostream.measure import cpu_seconds, rss_kib

FRAME = json.dumps(
    {
        "type": "agent_response",
        "agent_response_event": {"agent_response": "Sure, let me check that for you. " * 7},
        "event_id": 42,
    }
).encode()
LIBRARIES = ("websockets", "picows")


async def serve(port: int, rate: float) -> None:
    """Send FRAME to random open sockets, ``rate`` per socket per second, every 10 ms."""
    from picows import WSListener, WSMsgType, WSTransport, ws_create_server

    open_: list[WSTransport] = []

    class Source(WSListener):
        def on_ws_connected(self, transport: WSTransport) -> None:
            open_.append(transport)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if transport in open_:
                open_.remove(transport)

    await ws_create_server(lambda _request: Source(), "127.0.0.1", port)
    owed = 0.0
    while True:
        await asyncio.sleep(0.01)
        owed += len(open_) * rate * 0.01
        for _ in range(int(owed)):
            random.choice(open_).send(WSMsgType.TEXT, FRAME)
        owed -= int(owed)


async def client(library: str, port: int, sockets: int, seconds: float) -> dict[str, float]:
    """Open ``sockets`` sockets with ``library``, read them all, measure a window."""
    # Both libraries in every client process, so resident memory differs by the sockets alone.
    from websockets.asyncio.client import connect

    from convostream.runtime import tune_gc
    from upstream.websocket import open_monitor, opened

    tune_gc()  # the collector's garbage-collector settings
    base = f"http://127.0.0.1:{port}"
    received = 0

    async def read(conversation_id: str) -> None:
        nonlocal received
        if library == "picows":
            connecting = open_monitor(
                base, conversation_id, None, open_timeout=30, ping_interval=20, max_queue=8
            )
            async with opened(connecting) as ws:
                while True:
                    await ws.recv(decode=False)
                    received += 1
        url = f"ws://127.0.0.1:{port}/v1/convai/conversations/{conversation_id}/monitor"
        async with connect(
            url, open_timeout=30, ping_interval=20, ping_timeout=20, max_queue=8, compression=None
        ) as ws:
            while True:
                await ws.recv(decode=False)
                received += 1

    tasks = []
    for i in range(sockets):
        tasks.append(asyncio.create_task(read(f"conv_{i}")))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # a handshake burst the source answers without timeouts
    await asyncio.sleep(3)
    usage0, count0, t0 = resource.getrusage(resource.RUSAGE_SELF), received, time.monotonic()
    await asyncio.sleep(seconds)
    usage1, count1, t1 = resource.getrusage(resource.RUSAGE_SELF), received, time.monotonic()
    broken = [t for t in tasks if t.done()]
    if broken:
        raise RuntimeError(f"{len(broken)} sockets failed: {broken[0].exception()!r}")
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    frames = count1 - count0
    return {
        "frames_per_s": frames / (t1 - t0),
        "cpu_us_per_frame": 1e6 * cpu / frames,
        "rss_mib": rss_kib(os.getpid()) / 1024,
    }


def measure(library: str, port: int, source_pid: int, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--client", library, "--port", str(port)]
    command += ["--sockets", str(args.sockets), "--seconds", str(args.seconds)]
    source0 = cpu_seconds(source_pid)
    t0 = time.monotonic()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out)
    result["source_cpu"] = (cpu_seconds(source_pid) - source0) / (time.monotonic() - t0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=5.0, help="frames/s per socket")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--client", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.port, args.rate))
        return
    if args.client:
        print(json.dumps(asyncio.run(client(args.client, args.port, args.sockets, args.seconds))))
        return
    load_before = os.getloadavg()[0]
    port = free_port()
    source = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--port", str(port), "--rate", str(args.rate)]
    )
    try:
        time.sleep(1)
        runs: dict[str, list[dict[str, float]]] = {library: [] for library in LIBRARIES}
        for _ in range(args.rounds):
            for library in LIBRARIES:
                runs[library].append(measure(library, port, source.pid, args))
    finally:
        source.terminate()
        source.wait()
    report: dict[str, Any] = {
        "sockets": args.sockets,
        "offered_frames_per_s": args.sockets * args.rate,
    }
    for library, windows in runs.items():
        for key in windows[0]:
            report[f"{library}_{key}"] = round(statistics.median(w[key] for w in windows), 2)
    report["cpu_ratio"] = round(
        report["websockets_cpu_us_per_frame"] / report["picows_cpu_us_per_frame"], 2
    )
    report["load_before"] = load_before
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key:<32}{value:>12}")


if __name__ == "__main__":
    main()
