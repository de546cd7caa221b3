"""The conversation stage's CPU per event against conversation length, beside the bare fold.

A live pipeline touches each conversation with about one event per batch (2,000 conversations
at 0.5 events/s each make batches of ~2,500 events over ~2,000 conversations), and every
touched conversation is reported (a ``ConversationMetrics`` row) and stored (its table value).
So what a touched conversation costs is what an event costs, and it must not grow with the
length of the call. Per length, this builds ``--conversations`` states of that many events
(the type mix of ``bench/process.py``, a user turn and a response in every five events), then
times ``--batches`` batches (after one to warm up) that each add one event to every
conversation:

* stage: :func:`processors.stages.conversation_stage` (fold, metrics rows, Avro encoding,
  forward records, stored state bytes), no I/O;
* stored: the bytes of the stage's table writes per event (what the changelog and the local
  store take in);
* baseline, the bare fold in the same run: ``ConversationState.apply`` of the same events on
  copies of the same states, nothing reported or stored: the floor of the stage.

Pure CPU, one process, no broker: figures are µs per event on this machine, median of batches.

    .venv/bin/python bench/fold.py [--conversations 2000] [--lengths 10,100,500,2000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors import stages
from processors.conversation import ConversationState
from processors.events import Event
from schemas.serde import Serde

SERDE = Serde()
START = 1_700_000_000_000_000
# one user turn and one response in every five events, as in bench/process.py's mix
CYCLE = ["user_transcript", "agent_chat_response_part", "agent_response", "ping", "interruption"]


def event(cid: str, n: int) -> Event:
    """The n-th event of a conversation: 700 ms apart, event ids ascending."""
    return Event(f"{cid}:{n}", cid, "agent-1", CYCLE[n % len(CYCLE)], n, START + n * 700_000)


def build(conversations: int, length: int) -> dict[str, ConversationState]:
    states: dict[str, ConversationState] = {}
    for c in range(conversations):
        cid = f"conv-{c}"
        state = states[cid] = ConversationState(cid)
        for n in range(length):
            state.apply(event(cid, n))
        state.unobserved()
    return states


def time_length(conversations: int, length: int, batches: int) -> dict[str, float]:
    """Median µs per event of the stage and of the bare fold over ``batches`` batches."""
    states = build(conversations, length)
    table: dict[bytes, bytes] = {}  # stored once, as a live state has been: full chunks apart
    for state in states.values():
        table.update(state.storage())
    bare = {cid: ConversationState.from_bytes(table[cid.encode()], table.get) for cid in states}
    stage_us: list[float] = []
    fold_us: list[float] = []
    stored: list[float] = []
    for b in range(batches + 1):  # the first warms up (imports, Avro writers) and is not kept
        items = [event(cid, length + b) for cid in states]
        records = [stages.SourceRecord(0, i, b"\0" * 300, item) for i, item in enumerate(items)]
        gc.collect()
        started = time.perf_counter()
        for item in items:
            bare[item.conversation_id].apply(item)
        if b:
            fold_us.append((time.perf_counter() - started) / len(items) * 1e6)
        gc.collect()
        started = time.perf_counter()
        plan = stages.conversation_stage(records, states, START + length * 700_000, SERDE.encode)
        elapsed = time.perf_counter() - started
        if plan is None or len(plan.writes) < conversations:
            raise SystemExit(
                f"the stage planned {plan and len(plan.writes)} writes for {conversations}"
            )
        if b:
            stage_us.append(elapsed / len(items) * 1e6)
            stored.append(sum(len(w.value) for w in plan.writes) / len(items) / 1024)
    return {
        "stage_us_per_event": round(statistics.median(stage_us), 1),
        "fold_us_per_event": round(statistics.median(fold_us), 1),
        "stored_kib_per_event": round(statistics.median(stored), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--lengths", default="10,100,500,2000", help="events per conversation")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    result: dict[str, Any] = {
        "conversations": args.conversations,
        "load_average": os.getloadavg()[0],
        "by_length": {},
    }
    for length in lengths:
        figures = time_length(args.conversations, length, args.batches)
        result["by_length"][str(length)] = figures
        if not args.json:
            print(
                f"{length:>6} events/conversation: stage {figures['stage_us_per_event']:7.1f}"
                f" µs/event, bare fold {figures['fold_us_per_event']:6.1f}, table writes"
                f" {figures['stored_kib_per_event']:5.2f} KiB/event",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
