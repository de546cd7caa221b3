"""Property tests of the sans-I/O cores: conversation metrics and agent windows."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.conversation import ConversationState, compute, nearest_rank
from processors.events import Event
from processors.windows import AgentWindows, Outcome, WindowConfig, WindowEvent

TYPES = [
    "user_transcript",
    "agent_response",
    "interruption",
    "agent_response_correction",
    "agent_tool_response",
    "ping",
    "some_future_type",
]


@st.composite
def conversations(draw: st.DrawFn) -> list[Event]:
    """Distinct events of one conversation, plus copies (same key, other received_at)."""
    n = draw(st.integers(0, 40))
    events = []
    for i in range(n):
        etype = draw(st.sampled_from(TYPES))
        events.append(
            Event(
                event_key=f"k{i}",
                conversation_id="c1",
                agent_id=draw(st.sampled_from([None, "agent-a", "agent-b"])),
                type=etype,
                event_id=draw(st.one_of(st.none(), st.integers(0, 30))),
                received_at=draw(st.integers(1_000_000, 1_000_000 + 60_000_000)),
                is_error=etype == "agent_tool_response" and draw(st.booleans()),
                ends_call=etype == "agent_tool_response" and draw(st.booleans()),
            )
        )
    copies = draw(st.lists(st.sampled_from(events), max_size=20)) if events else []
    shifted = [c._replace(received_at=c.received_at + draw(st.integers(0, 5_000))) for c in copies]
    return events + shifted


@given(conversations(), st.randoms(use_true_random=False))
@settings(max_examples=300)
def test_metrics_do_not_depend_on_order_or_duplicates(
    events: list[Event], rnd: random.Random
) -> None:
    reference = compute("c1", events).metrics(updated_at=0)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    shuffled += rnd.sample(events, k=min(len(events), 5))  # more copies, arriving last
    state = compute("c1", shuffled)
    assert state.metrics(updated_at=0) == reference
    assert ConversationState.from_bytes(state.to_bytes()).metrics(updated_at=0) == reference


def test_latency_pairs_by_event_id_not_by_arrival() -> None:
    def ev(key: str, etype: str, eid: int, at_ms: int) -> Event:
        return Event(key, "c", "a", etype, eid, at_ms * 1000)

    events = [
        ev("u1", "user_transcript", 1, 1000),
        ev("a3", "agent_response", 3, 1900),  # not the smallest id above 1
        ev("a2", "agent_response", 2, 1500),
        ev("u4", "user_transcript", 4, 3000),
        ev("a5", "agent_response", 5, 2900),  # received before its user turn: latency 0
        ev("u9", "user_transcript", 9, 5000),  # no response after it: no pair
    ]
    metrics = compute("c", reversed(events)).metrics(0)
    assert metrics["latency_pairs"] == 2
    assert metrics["latency_p50_ms"] == 0.0
    assert metrics["latency_p95_ms"] == 500.0
    assert (metrics["user_turns"], metrics["agent_turns"]) == (3, 3)


def test_nearest_rank() -> None:
    values = list(range(1, 21))
    assert nearest_rank(values, 50) == 10
    assert nearest_rank(values, 95) == 19
    assert nearest_rank([7], 95) == 7


def test_end_call_and_lifecycle_end() -> None:
    tool = Event("t", "c", "a", "agent_tool_response", 1, 10, is_error=True, ends_call=True)
    assert compute("c", [tool]).metrics(0)["status"] == "ended"
    assert compute("c", [tool._replace(ends_call=False)]).metrics(0)["status"] == "active"
    assert compute("c", [], ended=True).metrics(0)["status"] == "ended"


# --- windows ---------------------------------------------------------------------------------

CFG = WindowConfig(size=1000, grace=200, idle=5000, retention=10_000)


@st.composite
def window_streams(draw: st.DrawFn) -> list[WindowEvent]:
    n = draw(st.integers(1, 80))
    times = sorted(draw(st.lists(st.integers(0, 8000), min_size=n, max_size=n)))
    return [
        WindowEvent(
            draw(st.integers(0, 2)),
            i,
            f"c{draw(st.integers(0, 4))}",
            draw(st.sampled_from(TYPES)),
            t,
            draw(st.booleans()),
        )
        for i, t in enumerate(times)
    ]


def _feed(
    events: list[WindowEvent], wall: list[int]
) -> tuple[AgentWindows, dict[int, dict[str, object]], list[WindowEvent]]:
    state = AgentWindows("agent")
    emitted: dict[int, dict[str, object]] = {}
    late: list[WindowEvent] = []
    for event, now in zip(events, wall, strict=True):
        if state.accept(event, CFG) is Outcome.LATE:
            late.append(event)
        for start in state.advance(now, CFG):
            assert start not in emitted, "a window was reported twice"
            emitted[start] = state.windows[start].record("agent", start, CFG.size, now)
        for start, record in emitted.items():
            window = state.windows.get(start)
            if window is not None:  # a final window never changes (late counts are kept apart)
                now_record = window.record("agent", start, CFG.size, 0)
                assert {**now_record, "late_events": 0} == {**record, "late_events": 0}
        state = AgentWindows.from_bytes(state.to_bytes())
    return state, emitted, late


@given(window_streams(), st.integers(0, 199), st.randoms(use_true_random=False))
@settings(max_examples=200)
def test_reordering_within_grace_loses_nothing(
    events: list[WindowEvent], jitter: int, rnd: random.Random
) -> None:
    """Events shuffled by less than the grace period: final windows hold every event."""
    arrival = sorted(events, key=lambda e: e.received_at + rnd.randint(0, jitter))
    arrival = [e._replace(offset=i) for i, e in enumerate(arrival)]  # offsets follow arrival
    wall = [0] * len(arrival)  # wall clock far behind: only event time closes windows
    state, _, late = _feed(arrival, wall)
    assert late == []
    state.advance(8000 + CFG.size + CFG.grace + CFG.idle + 1, CFG)  # idle-close the rest
    totals: dict[int, int] = {}
    for e in events:
        start = e.received_at - e.received_at % CFG.size
        totals[start] = totals.get(start, 0) + 1
    counted = {s: sum(w.by_type.values()) for s, w in state.windows.items()}
    assert counted == totals


@given(window_streams(), st.randoms(use_true_random=False))
@settings(max_examples=200)
def test_late_events_are_counted_and_handed_back(
    events: list[WindowEvent], rnd: random.Random
) -> None:
    """Any order and wall clock: every event is counted once, late, or a re-forwarded copy."""
    arrival = list(events)
    rnd.shuffle(arrival)
    arrival = [e._replace(offset=i) for i, e in enumerate(arrival)]
    wall = sorted(rnd.randint(0, 20_000) for _ in arrival)
    state, _, late = _feed(arrival, wall)
    counted = sum(sum(w.by_type.values()) for w in state.windows.values())
    pruned_possible = state.closed_until is not None and state.closed_until > CFG.retention
    if not pruned_possible:
        assert counted + len(late) == len(arrival)
        assert sum(w.late for w in state.windows.values()) <= len(late)
    for event in late:
        start = event.received_at - event.received_at % CFG.size
        assert state.closed_until is not None
        assert start + CFG.size <= state.closed_until
    # re-forwarded copies (same offsets) are dropped, whatever happened to the original
    before = state.to_bytes()
    for event in arrival:
        assert state.accept(event, CFG) is Outcome.DUPLICATE
    assert state.to_bytes() == before


def test_idle_close_by_wall_clock() -> None:
    state = AgentWindows("a")
    assert state.accept(WindowEvent(0, 0, "c", "ping", 100, False), CFG) is Outcome.COUNTED
    assert state.advance(1000 + 200 + 5000, CFG) == []  # not yet past end + grace + idle
    assert state.advance(1000 + 200 + 5001, CFG) == [0]
    assert state.windows[0].closed_by == "idle"
    assert state.accept(WindowEvent(0, 1, "c", "ping", 999, False), CFG) is Outcome.LATE
    assert state.windows[0].late == 1
    assert state.advance(10**6, CFG) == []


_TYPES = ["user_transcript", "agent_response", "interruption", "agent_tool_response", "ping"]


@settings(max_examples=200, deadline=None)
@given(
    etype=st.sampled_from(_TYPES),
    agent=st.one_of(st.none(), st.text(max_size=12)),
    event_id=st.one_of(st.none(), st.integers(-(2**40), 2**40)),
    received_at=st.integers(0, 2**62),
    key=st.text(min_size=1, max_size=40),
    cut=st.integers(0, 80),
)
def test_head_reader_agrees_with_full_decode(
    etype: str, agent: str | None, event_id: int | None, received_at: int, key: str, cut: int
) -> None:
    """The fast path gives the same Event as a full decode, or None (never a wrong one)."""
    from processors.events import HeadReader, from_record
    from schemas.payloads import monitor_payload
    from schemas.serde import Serde

    serde = Serde()
    if etype == "agent_tool_response":
        frame = {
            "type": etype,
            "agent_tool_response": {
                "tool_name": "end_call",
                "tool_call_id": "t",
                "tool_type": "system",
                "is_error": True,
                "is_called": True,
                "event_id": event_id or 0,
            },
        }
    else:
        frame = {"type": etype}
    record = {
        "event_key": key,
        "conversation_id": f"c-{key}",
        "agent_id": agent,
        "type": etype,
        "upstream_event_id": event_id,
        "received_at": received_at,
        "collector_id": "t",
        "connection_id": "c",
        "connection_seq": 1,
        "replay": False,
        "raw": "{}",
        "payload": monitor_payload(etype, frame),
    }
    value = serde.encode("MonitorEvent", record)
    reader = HeadReader(serde.registry.writer_id("MonitorEvent"))
    head = reader.read(value)
    full = from_record(serde.decode(value).record)
    if etype == "agent_tool_response":
        assert head is None
    else:
        assert head == full
    truncated = reader.read(value[:cut])  # must not raise
    assert truncated is None or truncated == full
    assert reader.read(serde.encode("ConversationMetrics", _metrics_record())) is None
    assert reader.read(None) is None  # a tombstone


def _metrics_record() -> dict[str, object]:
    return {
        "conversation_id": "c",
        "agent_id": None,
        "status": "active",
        "events_by_type": {},
        "events_total": 0,
        "user_turns": 0,
        "agent_turns": 0,
        "interruptions": 0,
        "corrections": 0,
        "tool_calls": 0,
        "tool_errors": 0,
        "latency_pairs": 0,
        "latency_p50_ms": None,
        "latency_p95_ms": None,
        "first_received_at": 0,
        "last_received_at": 0,
        "updated_at": 0,
    }
