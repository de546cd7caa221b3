"""Command latency: command produced → frame received by the simulator, warm and cold socket.

Real embedded broker, in-process simulator (its commands log gives the receive time) and an
in-process command worker. Warm: sequential commands for one conversation whose socket the pool
already holds. Cold: each command for a conversation the worker has no socket for (REST lookup,
connect, first replay frame). Baselines measured in the same run: a bare websocket send on an
open socket, and a bare connect + send, from the same process to the same simulator.

    .venv/bin/python bench/commands.py [--warm 200] [--cold 40] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convostream import kafka_compat
from convostream.broker import EmbeddedBroker
from schemas.commands import build_command
from simulator.testing import monitor
from tests.commands_rig import KEYS, Rig, commands_log, running_rig


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def timed_command(rig: Rig, conversation_id: str) -> float:
    """Milliseconds from just before the produce to the simulator's receive time."""
    text = f"bench-{uuid.uuid4().hex}"
    command = build_command(
        "contextual_update", conversation_id, issuer="svc", key=KEYS["svc"], text=text
    )
    started = time.time()
    result = await rig.client.send_record(command, timeout=60)
    if result["status"] != "delivered":
        raise RuntimeError(f"command not delivered: {result}")
    for entry in reversed(commands_log(rig.log)):
        if text in entry["frame"]:
            return (float(entry["received_at_unix"]) - started) * 1000
    raise RuntimeError("frame not in the simulator's commands log")


async def baseline(rig: Rig, conversation_id: str, n: int, cold: bool) -> list[float]:
    """Bare websockets: send on an open socket (warm) or connect and send (cold)."""
    out: list[float] = []
    frame = json.dumps({"command_type": "contextual_update", "parameters": {}})
    if cold:
        for _ in range(n):
            started = time.time()
            async with monitor(rig.sim, conversation_id) as ws:
                await ws.send(frame)
                before = rig.sim.commands_received
                while rig.sim.commands_received == before:  # noqa: ASYNC110
                    await asyncio.sleep(0)
                out.append((time.time() - started) * 1000)
        return out
    async with monitor(rig.sim, conversation_id) as ws:
        for _ in range(n):
            before = rig.sim.commands_received
            started = time.time()
            await ws.send(frame)
            while rig.sim.commands_received == before:  # noqa: ASYNC110
                await asyncio.sleep(0)
            out.append((time.time() - started) * 1000)
    return out


async def run(bootstrap: str, warm_n: int, cold_n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_rig(
            bootstrap,
            Path(tmp),
            commands_rate_per_second=10_000.0,
            commands_rate_burst=10_000,
            commands_idle_timeout=600.0,
            sim_knobs={"conversations": cold_n + 2},
        ) as rig:
            live = [c.conversation_id for c in rig.sim.conversations if c.live]
            warm_conv, cold_convs = live[0], live[2 : 2 + cold_n]
            await timed_command(rig, warm_conv)  # opens the socket; also waits for the group
            warm = [await timed_command(rig, warm_conv) for _ in range(warm_n)]
            cold = [await timed_command(rig, conv) for conv in cold_convs]
            base_warm = await baseline(rig, live[1], warm_n, cold=False)
            base_cold = await baseline(rig, live[1], min(cold_n, 20), cold=True)
    return {
        "p50_ms_warm": round(percentile(warm, 50), 2),
        "p99_ms_warm": round(percentile(warm, 99), 2),
        "p50_ms_cold": round(percentile(cold, 50), 2),
        "p99_ms_cold": round(percentile(cold, 99), 2),
        "baseline_p50_ms_ws_send": round(percentile(base_warm, 50), 3),
        "baseline_p50_ms_ws_connect_send": round(percentile(base_cold, 50), 3),
        "warm_commands": len(warm),
        "cold_commands": len(cold),
        "target_p99_ms_warm": 50,
        "target_p99_ms_cold": 500,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=200, help="warm-socket commands")
    parser.add_argument("--cold", type=int, default=40, help="cold-socket commands")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    kafka_compat.install()  # the worker runs in-process, without ``convostream``'s start-up
    with EmbeddedBroker() as broker:
        # The worker's in-process logging would time itself; keep it quiet.
        import logging

        logging.getLogger().setLevel(logging.WARNING)
        out = asyncio.run(run(broker.bootstrap, args.warm, args.cold))
    if args.json:
        print(json.dumps(out))
        return
    rows = [
        ("warm socket", out["p50_ms_warm"], out["p99_ms_warm"], out["baseline_p50_ms_ws_send"], 50),
        (
            "cold socket",
            out["p50_ms_cold"],
            out["p99_ms_cold"],
            out["baseline_p50_ms_ws_connect_send"],
            500,
        ),
    ]
    print(f"{'path':<12} {'p50 ms':>8} {'p99 ms':>8} {'baseline p50 ms':>16} {'target p99':>11}")
    for name, p50, p99, base, target in rows:
        print(f"{name:<12} {p50:>8} {p99:>8} {base:>16} {target:>11}")


if __name__ == "__main__":
    os.environ.setdefault("CONVOSTREAM_BROKER_COMPAT", "tansu")  # the embedded broker
    main()
