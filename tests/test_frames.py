"""The collector's frame core: every input becomes exactly one event or one dead letter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.frames import FrameReader
from schemas.serde import Serde

SERDE = Serde()
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
TYPES = st.sampled_from(
    [
        "user_transcript",
        "agent_response",
        "interruption",
        "mcp_tool_call",
        "context_usage",
        "agent_tool_response",
        "dtmf_request",
        "brand_new_type",
    ]
)


def _reader() -> FrameReader:
    reader = FrameReader("conv-1", "collector-a", agent_id="agent-1", max_frame_bytes=4096)
    reader.connected("conn-1", 0.0)
    assert reader.frame(b'{"type":"history_complete"}', 0, 0.0).results == []  # empty replay
    return reader


def _one_record(reader: FrameReader, data: bytes | str, now: float) -> tuple[str, dict[str, Any]]:
    released = reader.frame(data, 1_700_000_000_000_000, now)
    assert len(released.results) == 1
    result = released.results[0]
    produced = [r for r in (result.event, result.dead_letter) if r is not None]
    assert len(produced) == 1
    name = "MonitorEvent" if result.event is not None else "DeadLetter"
    record = produced[0]
    assert (
        SERDE.decode(SERDE.encode(name, record)).record
        == SERDE.decode(SERDE.encode(name, record)).record
    )  # it is a valid record of its schema: encoding would raise otherwise
    return name, record


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=20, unique=True))
@settings(max_examples=200, deadline=None)
def test_arbitrary_bytes_never_raise(frames: list[bytes]) -> None:
    reader = _reader()
    for i, data in enumerate(frames):
        name, record = _one_record(reader, data, i * 0.001)
        if name == "DeadLetter":
            assert record["raw"] == data
        else:
            assert record["raw"].encode() == data


@given(st.lists(st.tuples(TYPES, JSON), min_size=1, max_size=20))
@settings(max_examples=200, deadline=None)
def test_arbitrary_json_frames_become_events_that_keep_the_text(
    frames: list[tuple[str, Any]],
) -> None:
    reader = _reader()
    for i, (event_type, body) in enumerate(frames):
        text = json.dumps({"type": event_type, "body": body, "n": i})
        name, record = _one_record(reader, text, i * 0.001)
        assert name == "MonitorEvent"
        assert record["raw"] == text
        assert record["type"] == event_type
        assert record["connection_seq"] == i


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe not utf-8", "invalid_utf8"),
        (b'{"type": "agent_response", ', "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"agent_response_event": {}}', "missing_type"),
        (b'{"type": 7}', "missing_type"),
        (b'{"type": "x", "pad": "' + b"a" * 5000 + b'"}', "oversize"),
    ],
)
def test_unreadable_frames_go_to_the_dlq_with_a_reason(data: bytes, reason: str) -> None:
    name, record = _one_record(_reader(), data, 0.0)
    assert name == "DeadLetter"
    assert record["reason"] == reason
    assert record["conversation_id"] == "conv-1"
    assert record["detail"]


def test_dead_letters_carry_the_key_of_their_occurrence() -> None:
    """A letter is keyed like an event, so one published again after a crash is recognisable."""
    first = _reader()
    bad = b"[1, 2]"
    keys = [_one_record(first, bad, i * 0.001)[1]["event_key"] for i in range(2)]
    assert len(set(keys)) == 2
    assert all(isinstance(k, str) for k in keys)
    # a successor that knows only the first copy (its last checkpoint) gets both in the replay
    successor = FrameReader("conv-1", "collector-b", max_frame_bytes=4096)
    successor.seed(first.history()[: len(first.history()) // 2])
    successor.connected("conn-2", 1.0)
    released = [successor.frame(bad, 0, 1.0), successor.frame(bad, 0, 1.0)]
    released.append(successor.frame(b'{"type":"history_complete"}', 0, 1.0))
    results = [r for rel in released for r in rel.results]
    assert [r.duplicate for r in results] == [True, False]
    letter = results[1].dead_letter
    assert letter is not None
    assert letter["event_key"] == keys[1]


def test_known_frame_gets_its_typed_payload_and_event_id() -> None:
    text = (
        '{"type":"user_transcript",'
        '"user_transcription_event":{"user_transcript":"Hi","event_id":2}}'
    )
    _, record = _one_record(_reader(), text, 0.0)
    assert record["payload"] == (
        "convostream.UserTranscriptPayload",
        {"user_transcript": "Hi", "event_id": 2},
    )
    assert record["upstream_event_id"] == 2


def test_integers_beyond_64_bits_are_still_json() -> None:
    text = '{"type":"context_usage","context_usage_event":{"event_id":123456789012345678901234}}'
    name, record = _one_record(_reader(), text, 0.0)
    assert name == "MonitorEvent"
    assert record["payload"][0] == "convostream.RawPayload"


def test_replayed_frames_are_dropped_before_parsing() -> None:
    reader = _reader()
    frames = [b"not json", b'{"type":"agent_response_complete"}']
    for i, data in enumerate(frames):
        _one_record(reader, data, 1.0 + i)
    reader.connected("conn-2", 10.0)
    held = [reader.frame(data, 0, 10.001 + i * 0.001) for i, data in enumerate(frames)]
    assert all(r.results == [] for r in held)  # a replay burst is held until aligned
    results = reader.disconnected().results
    assert len(results) == 2
    assert all(r.duplicate for r in results)
    assert reader.markers == 1


def test_markers_are_control_frames_and_string_event_ids_are_kept() -> None:
    reader = FrameReader("conv-1", "collector-a")
    reader.connected("conn-1", 0.0)
    assert reader.frame(b'{"type":"connected"}', 0, 0.0).results == []
    part = (
        '{"type":"agent_chat_response_part",'
        '"text_response_part":{"text":"Hi","type":"delta","event_id":"evt_123456"}}'
    )
    assert reader.frame(part, 0, 0.5).results == []  # held: the replay is not over
    released = reader.frame(b'{"type":"history_complete"}', 0, 5.0)
    assert reader.markers == 2
    (result,) = released.results
    assert result.event is not None
    assert result.event["upstream_event_id"] is None
    assert result.event["upstream_event_ref"] == "evt_123456"
    assert result.event["payload"][1]["event_id"] == "evt_123456"
    assert result.event["replay"] is True
    SERDE.encode("MonitorEvent", result.event)


def test_a_string_event_id_of_an_integer_only_payload_stays_in_its_data() -> None:
    """Older undocumented payloads (dtmf_request, client_error...) take integer ids only."""
    reader = FrameReader("conv-1", "collector-a")
    reader.connected("conn-1", 0.0)
    reader.frame(b'{"type":"history_complete"}', 0, 0.0)
    frame = '{"type":"dtmf_request","dtmf_request_event":{"event_id":"evt_7","digits":"12"}}'
    (result,) = reader.frame(frame, 0, 1.0).results
    assert result.event is not None
    assert result.event["payload"][1]["event_id"] is None
    assert (
        json.loads(result.event["payload"][1]["data"])["dtmf_request_event"]["event_id"] == "evt_7"
    )
    SERDE.encode("MonitorEvent", result.event)


@pytest.mark.parametrize(
    ("frame", "branch"),
    [
        (
            '{"type":"error","error_event":{"code":1008,"error_type":"invalid_message",'
            '"reason":"bad","details":{"field":"x"}}}',
            "convostream.ErrorPayload",
        ),
        ('{"type":"agent_typing","agent_typing_event":{"is_typing":true}}',
         "convostream.AgentTypingPayload"),
        ('{"type":"external_agent_connected","external_agent_connected_event":{}}',
         "convostream.ExternalAgentConnectedPayload"),
        ('{"type":"queue_status","queue_status_event":{"position":2}}',
         "convostream.QueueStatusPayload"),
    ],
)  # fmt: skip
def test_added_types_get_typed_payloads(frame: str, branch: str) -> None:
    _, record = _one_record(_reader(), frame, 0.0)
    assert record["payload"][0] == branch
