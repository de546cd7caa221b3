"""Faust group-join latency on the embedded Tansu broker: defaults vs a short session timeout.

Tansu 0.6 holds each JoinGroup from an unassigned member for session_timeout/2, even for the lone
leader of a new group, and keeps a dead member (as leader) until it misses a full session. With
Faust's 60 s session a fresh worker waits ~30 s for partitions, and a restart after SIGKILL ~110 s
(s/2 join as follower, 0.8*s SyncGroup hold, s/2 again). broker_session_timeout=2.0 with
broker_heartbeat_interval=0.5 brings both to ~2.5 s (embedded only: Kafka rejects sessions < 6 s).
Numbers: median seconds from spawning the worker process to its first non-empty partition
assignment / first processed message; every run uses a new broker and group.

    .venv/bin/python bench/group_join.py [--runs 3] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convostream.broker import EmbeddedBroker
from convostream.logs import configure as configure_logging

TUNED = {"broker_session_timeout": 2.0, "broker_heartbeat_interval": 0.5}
SETTLE_S = 2.0  # how long the first worker runs before SIGKILL in the restart case

APP = """
import json, os, time
import faust

def mark(event):
    print("@@EVENT " + json.dumps({"event": event, "t": time.time()}), flush=True)

app_id = os.environ["GJ_APP_ID"]
app = faust.App(app_id, broker="kafka://" + os.environ["GJ_BOOTSTRAP"],
                datadir=os.environ["GJ_DATADIR"], web_enabled=False, topic_partitions=4,
                **json.loads(os.environ["GJ_FAUST_KW"]))
topic = app.topic(app_id + "-events", partitions=4, value_serializer="raw")
seen = False

@app.agent(topic)
async def consume(stream):
    global seen
    async for _ in stream:
        if not seen:
            seen = True
            mark("first_message")

@app.timer(0.2)
async def produce():
    await topic.send(value=b"x")

@app.on_partitions_assigned.connect
async def on_assigned(app, assigned, **kwargs):
    if assigned:
        mark("assigned")

if __name__ == "__main__":
    app.main()
"""


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path
    spawned: float

    def event(self, name: str, timeout: float) -> float | None:
        """Seconds from spawn to the first ``name`` event, or None on timeout or exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if (i := line.find("@@EVENT ")) >= 0:
                    with contextlib.suppress(json.JSONDecodeError):
                        ev = json.loads(line[i + 8 :])
                        if ev["event"] == name:
                            return round(float(ev["t"]) - self.spawned, 2)
            if self.proc.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def spawn(tmp: Path, bootstrap: str, app_id: str, kw: dict[str, float], tag: str) -> Worker:
    # Faust's BROKER_* env vars override App kwargs: drop them so "defaults" means defaults.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env |= {
        "GJ_APP_ID": app_id,
        "GJ_BOOTSTRAP": bootstrap,
        "GJ_DATADIR": str(tmp / app_id),
        "GJ_FAUST_KW": json.dumps(kw),
    }
    log = tmp / f"{app_id}-{tag}.log"
    with log.open("wb") as out:
        spawned = time.time()
        proc = subprocess.Popen(
            [sys.executable, str(tmp / "gj_app.py"), "worker", "-l", "warn"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            start_new_session=True,  # its own process group, killed as a whole
        )
    return Worker(proc, log, spawned)


def run_once(
    tmp: Path, kw: dict[str, float], restart: bool, timeout: float
) -> tuple[float | None, float | None]:
    """One measurement on a new broker and group: (seconds to assigned, to first message)."""
    workers: list[Worker] = []
    broker = EmbeddedBroker(create=False)
    try:
        broker.start()
        app_id = f"gj{uuid.uuid4().hex[:8]}"
        if restart:
            workers.append(first := spawn(tmp, broker.bootstrap, app_id, kw, "first"))
            if first.event("first_message", timeout) is None:
                raise RuntimeError(f"first worker never got a message:\n{first.tail()}")
            time.sleep(SETTLE_S)
            first.kill()  # SIGKILL: no LeaveGroup, the dead member stays in the group
        workers.append(w := spawn(tmp, broker.bootstrap, app_id, kw, "measured"))
        assigned = w.event("assigned", timeout)
        first_msg = w.event("first_message", timeout) if assigned is not None else None
        if first_msg is None:
            print(f"run timed out or worker died:\n{w.tail()}", file=sys.stderr)
        return assigned, first_msg
    finally:
        for worker in workers:
            worker.kill()
        broker.stop()


def median(values: list[float | None]) -> float | None:
    ok = [v for v in values if v is not None]
    return round(statistics.median(ok), 2) if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per tuned case")
    parser.add_argument("--default-runs", type=int, default=1, help="runs of the slow case")
    parser.add_argument("--quick", action="store_true", help="skip the 60 s-session case")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    configure_logging("WARNING")  # no broker ready/stopped lines
    # SIGTERM -> SystemExit, so the finally blocks still kill every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    cases: list[tuple[str, str, dict[str, float], bool, int, float]] = [
        ("default_fresh", "(a) defaults (60 s session), fresh", {}, False, args.default_runs, 150),
        ("tuned_fresh", "(b) session 2 s, heartbeat 0.5 s, fresh", TUNED, False, args.runs, 60),
        ("tuned_restart_after_kill", "(c) same, restart after SIGKILL", TUNED, True, args.runs, 60),
    ]
    if args.quick:
        cases = cases[1:]
    out: dict[str, float | int | None] = {"default_fresh_s": None}
    rows: list[tuple[str, int, float | None, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="group_join-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "gj_app.py").write_text(APP)
        for key, label, kw, restart, runs, timeout in cases:
            results = []
            for i in range(runs):
                results.append(run_once(tmp, kw, restart, timeout))
                print(f"{key} run {i + 1}/{runs}: {results[-1]}", file=sys.stderr)
            assigned = median([r[0] for r in results])
            first = median([r[1] for r in results])
            out |= {f"{key}_s": assigned, f"{key}_first_msg_s": first, f"{key}_runs": runs}
            rows.append((label, runs, assigned, first))
    if args.json:
        print(json.dumps(out))
        return

    def fmt(v: float | None) -> str:
        return "timeout" if v is None else f"{v:.2f}"

    print(f"{'case':<42} {'runs':>4} {'assigned s':>11} {'first msg s':>12}")
    for label, runs, assigned, first in rows:
        print(f"{label:<42} {runs:>4} {fmt(assigned):>11} {fmt(first):>12}")


if __name__ == "__main__":
    main()
