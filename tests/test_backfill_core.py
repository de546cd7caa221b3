"""The backfill core: missed turns only, deterministic keys, verdicts (no I/O)."""

from __future__ import annotations

from typing import Any

import orjson

from postcall.backfill import COMPLETE, FULL_REPLAY, GAPPED, REPAIRED, Seen, Tracker, repair
from schemas.payloads import monitor_payload
from schemas.serde import Serde

DETAILS: dict[str, Any] = {
    "status": "done",
    "metadata": {"start_time_unix_secs": 1_790_000_000},
    "transcript": [
        {"role": "agent", "message": "Hello!", "time_in_call_secs": 0, "source_event_id": 1},
        {"role": "user", "message": "Cancel my order", "time_in_call_secs": 3,
         "source_event_id": 2},
        {"role": "agent", "message": "Sure...", "original_message": "Sure, it is cancelled.",
         "interrupted": True, "time_in_call_secs": 5, "source_event_id": 3,
         "tool_results": [{"request_id": "toolu_1", "tool_name": "lookup_order",
                           "is_error": True, "type": "webhook", "tool_has_been_called": True,
                           "result_value": "{}"}]},
        {"role": "user", "message": "Thanks", "time_in_call_secs": 9, "source_event_id": 4},
    ],
}  # fmt: skip


def _live(kind: str, body_key: str, body: dict[str, Any]) -> dict[str, Any]:
    frame = {"type": kind, body_key: body}
    return {
        "conversation_id": "c1",
        "agent_id": "a1",
        "type": kind,
        "upstream_event_id": body.get("event_id"),
        "payload": monitor_payload(kind, frame),
    }


def test_only_the_missed_turns_are_republished_with_stable_keys() -> None:
    tracker = Tracker()
    tracker.event(_live("agent_response", "agent_response_event",
                        {"agent_response": "Hello!", "event_id": 1}))  # fmt: skip
    tracker.event(_live("user_transcript", "user_transcription_event",
                        {"user_transcript": "Cancel my order", "event_id": 2}))  # fmt: skip
    tracker.event(_live("agent_tool_response", "agent_tool_response",
                        {"tool_name": "lookup_order", "tool_call_id": "toolu_1",
                         "tool_type": "webhook", "is_error": True, "is_called": True,
                         "event_id": 3}))  # fmt: skip
    assert not tracker.lifecycle({"conversation_id": "c1", "state": "gap"})
    assert tracker.lifecycle({"conversation_id": "c1", "state": "ended"})
    assert not tracker.lifecycle({"conversation_id": "c1", "state": "ended"})  # once
    seen = tracker.conversations["c1"]
    result = repair("c1", seen, DETAILS, "rest", now=0)
    kinds = sorted((e["type"], e["upstream_event_id"]) for e in result.events)
    assert kinds == [
        ("agent_response", 3),
        ("agent_response_correction", 3),
        ("interruption", 3),
        ("user_transcript", 4),
    ]
    assert result.verdict == REPAIRED
    by_type = {e["type"]: e for e in result.events}
    correction = orjson.loads(by_type["agent_response_correction"]["raw"])
    assert correction["agent_response_correction_event"]["corrected_agent_response"] == "Sure..."
    assert (
        orjson.loads(by_type["agent_response"]["raw"])["agent_response_event"]["agent_response"]
        == "Sure, it is cancelled."
    )
    assert by_type["user_transcript"]["received_at"] > by_type["agent_response"]["received_at"]
    serde = Serde()
    for event in result.events:  # valid records, marked as backfilled
        assert serde.decode(serde.encode("MonitorEvent", event)).record["source"] == "backfill"
    again = repair("c1", seen, DETAILS, "webhook", now=99)
    assert [e["event_key"] for e in again.events] == [e["event_key"] for e in result.events]
    # once published they are seen: a re-run republishes nothing
    for event in result.events:
        seen.event(event)
    assert repair("c1", seen, DETAILS, "rest", now=0).events == []


def test_verdicts_when_the_transcript_cannot_cover_everything() -> None:
    assert repair("c1", Seen(), None, "rest: not found", now=0).verdict == GAPPED
    unjoinable = {**DETAILS, "transcript": [{"role": "user", "message": "hi",
                                             "time_in_call_secs": 1}]}  # fmt: skip
    result = repair("c1", Seen(), unjoinable, "rest", now=0)
    assert (result.verdict, result.detail["unjoinable_items"], result.events) == (GAPPED, 1, [])
    tracker = Tracker()
    tracker.lifecycle({"conversation_id": "c2", "state": "ended", "verdict": "complete"})
    assert tracker.conversations["c2"].verdict == "complete"  # read back after a restart
    assert not tracker.lifecycle({"conversation_id": "c2", "state": "ended"})


def test_a_full_replay_on_connect_makes_a_conversation_suspect() -> None:
    seen = Seen()
    for n in range(FULL_REPLAY):
        assert not seen.suspect  # fewer replayed frames: the replay reached back to the start
        seen.event({**_live("agent_response", "agent_response_event",
                            {"agent_response": f"r{n}", "event_id": 1000 + n}),
                    "replay": True, "connection_id": "first"})  # fmt: skip
    assert seen.suspect  # the first connection got a full replay: older frames may be missing
    # every turn of the transcript was seen live after all: nothing to publish, complete
    for item in DETAILS["transcript"]:
        seen.turns.update({("user_transcript", item["source_event_id"]),
                           ("agent_response", item["source_event_id"]),
                           ("interruption", item["source_event_id"]),
                           ("agent_response_correction", item["source_event_id"])})  # fmt: skip
    seen.tools.add("toolu_1")
    result = repair("c1", seen, DETAILS, "rest", now=0)
    assert (result.events, result.verdict) == ([], COMPLETE)


def test_a_conversation_no_collector_reported_is_repaired_whole() -> None:
    tracker = Tracker()
    tracker.event(
        {
            **_live(
                "user_transcript",
                "user_transcription_event",
                {"user_transcript": "hi", "event_id": 2},
            ),
            "conversation_id": "c2",
        }
    )
    tracker.lifecycle({"conversation_id": "c3", "agent_id": "a1", "state": "discovered"})
    assert not tracker.missed("c2")  # events of it arrived: its collector will end it
    assert not tracker.missed("c3")  # discovered: its collector will end it
    assert tracker.missed("c1")
    seen = tracker.conversations["c1"]
    assert seen.suspect
    result = repair("c1", seen, DETAILS, "webhook", now=0)
    assert result.verdict == REPAIRED
    turns = ["agent_response", "agent_response", "user_transcript", "user_transcript"]
    turns += ["interruption", "agent_response_correction", "agent_tool_response"]
    assert sorted(e["type"] for e in result.events) == sorted(turns)
    assert not tracker.missed("c1")  # asked again (a second webhook delivery): known now
