"""Transcript rows rebuilt from unordered events equal an independent reconstruction from the
simulator's ground truth (generation order), with reordering, duplicates and corrections."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from processors.transcripts import Book
from schemas.payloads import monitor_payload
from tests.collector_harness import ground_truth


def _independent(frames: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Walk the frames as generated: one row per turn, as a reader of the conversation sees it."""
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for f in frames:
        kind = f["type"]
        body = next(v for k, v in f.items() if k != "type")
        if kind == "user_transcript":
            rows[(body["event_id"], "user")] = {"message": body["user_transcript"]}
            continue
        if kind not in ("agent_response", "agent_response_correction", "interruption",
                        "agent_tool_response"):  # fmt: skip
            continue
        row = rows.setdefault((body["event_id"], "agent"), {"message": None})
        if kind == "agent_response":
            row.setdefault("said", body["agent_response"])
            row["message"] = row.get("corrected", body["agent_response"])
        elif kind == "agent_response_correction":
            row["corrected"] = row["message"] = body["corrected_agent_response"]
            row["original"] = body["original_agent_response"]
        elif kind == "interruption":
            row["interrupted"] = True
        else:
            row.setdefault("tools", []).append(body["tool_name"])
    return [
        (eid, role, r["message"], r.get("original"), r.get("interrupted", False),
         sorted(r.get("tools", [])))
        for (eid, role), r in sorted(rows.items())
    ]  # fmt: skip


@pytest.mark.integration  # runs the simulator
async def test_transcript_rows_equal_an_independent_reconstruction(
    simulator_factory: Any, tmp_path: Path
) -> None:
    gt = tmp_path / "gt.jsonl"
    sim = await simulator_factory(
        conversations=15, events_per_second=500, turns=12, chat_ratio=0.2, seed=8,
        reorder_ms=30, processing_seconds=0.01, ground_truth=gt,
    )  # fmt: skip
    await sim.wait_finished(60)
    await sim.stop()
    by_conversation: dict[str, list[dict[str, Any]]] = {}
    for line in ground_truth(gt):
        by_conversation.setdefault(line["conversation_id"], []).append(line)
    rng = random.Random(8)
    corrected = 0
    for cid, lines in by_conversation.items():
        records = []
        for line in lines:
            frame = json.loads(line["frame"])
            payload = monitor_payload(frame["type"], frame)
            records.append({
                "event_key": f"{cid}:{line['index']}", "conversation_id": cid,
                "agent_id": line["agent_id"], "type": frame["type"],
                "upstream_event_id": payload[1].get("event_id"),
                "received_at": 1_700_000_000_000_000 + rng.randrange(10**9),
                "payload": payload, "source": "live",
            })  # fmt: skip
        shuffled = records + rng.sample(records, len(records) // 3)  # replays after reconnects
        rng.shuffle(shuffled)
        book = Book(cid)
        for record in shuffled:
            book.event(record)
        rows = book.transcript()
        assert [r["turn_index"] for r in rows] == list(range(len(rows)))
        got = [
            (r["event_id"], r["role"], r["message"], r["original_message"], r["interrupted"],
             json.loads(r["tool_calls"]))
            for r in rows
        ]  # fmt: skip
        assert got == _independent([json.loads(line["frame"]) for line in lines]), cid
        corrected += sum(r["original_message"] is not None for r in rows)
    assert corrected > 0  # the data had corrections to apply
