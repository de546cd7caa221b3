"""Property tests of the sans-I/O cores: conversation metrics and agent windows."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import forward
from processors.conversation import MAX_TRACKED, ConversationState, compute, nearest_rank
from processors.events import Event
from processors.packed import CHUNK
from processors.windows import AgentWindows, Outcome, SourceProgress, WindowConfig, WindowEvent

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


def _brute_latencies(events: list[Event]) -> list[int]:
    """The pairing rule of DESIGN.md §3 by brute force: earliest copy per key, each user turn
    with the earliest response of the smallest event id above its own."""
    earliest: dict[str, Event] = {}
    for e in events:
        if e.event_key not in earliest or e.received_at < earliest[e.event_key].received_at:
            earliest[e.event_key] = e
    responses = [
        e for e in earliest.values() if e.type == "agent_response" and e.event_id is not None
    ]
    out = []
    for user in earliest.values():
        if user.type != "user_transcript" or user.event_id is None:
            continue
        later = [r for r in responses if r.event_id > user.event_id]  # type: ignore[operator]
        if later:
            eid = min(r.event_id for r in later)  # type: ignore[type-var]
            at = min(r.received_at for r in later if r.event_id == eid)
            out.append(max(0, at - user.received_at))
    return sorted(out)


@given(conversations(), st.randoms(use_true_random=False))
@settings(max_examples=300)
def test_metrics_kept_current_per_event_match_a_recomputation(
    events: list[Event], rnd: random.Random
) -> None:
    """After every event the indices kept up to date match a state rebuilt from its stored
    bytes and a brute-force pairing, and each paired user turn is handed out exactly once."""
    shuffled = list(events)
    rnd.shuffle(shuffled)
    state = ConversationState("c1")
    handed_out: list[int] = []
    for n, event in enumerate(shuffled, 1):
        state.apply(event)
        handed_out += state.unobserved()
        rebuilt = ConversationState.from_bytes(state.to_bytes())
        assert state.metrics(0) == rebuilt.metrics(0)
        assert sorted(state.latencies().values()) == _brute_latencies(shuffled[:n])
        assert rebuilt.unobserved() == []
    assert len(handed_out) == len(state.latencies())


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


def test_a_30k_turn_conversation_stays_within_the_record_limit() -> None:
    """Beyond MAX_TRACKED distinct events the state stops growing and keeps counting."""
    state = ConversationState("c")
    for i in range(30_000):
        state.apply(Event(f"u{i}", "c", "a", "user_transcript", 2 * i, 1_000 + 2 * i))
        state.apply(Event(f"a{i}", "c", "a", "agent_response", 2 * i + 1, 1_500 + 2 * i))
    state.apply(Event("u0", "c", "a", "user_transcript", 0, 900))  # a tracked copy: not counted
    data = state.to_bytes()
    assert len(data) < 1_000_000  # the producer's max.request.size is 1 MiB
    restored = ConversationState.from_bytes(data)
    metrics = restored.metrics(0)
    assert metrics["events_total"] == 60_000
    assert (metrics["user_turns"], metrics["agent_turns"]) == (30_000, 30_000)
    assert restored.untracked == 60_000 - MAX_TRACKED
    assert (metrics["first_received_at"], metrics["last_received_at"]) == (900, 1_500 + 59_998)
    assert metrics["latency_pairs"] == MAX_TRACKED // 2  # pairs among the tracked events
    assert metrics == state.metrics(0)


def test_each_latency_pair_is_observed_once() -> None:
    """Across reloads from the table (cache evictions, other owners), lifecycle records and
    later responses, a user turn reaches the histogram once."""
    state = compute(
        "c",
        [
            Event("u1", "c", "a", "user_transcript", 1, 1_000),
            Event("a2", "c", "a", "agent_response", 2, 3_000),
        ],
    )
    assert state.unobserved() == [2_000]
    state = ConversationState.from_bytes(state.to_bytes())  # evicted and read back
    state.end("a")  # a lifecycle record touches it again
    assert state.unobserved() == []
    state.apply(Event("u3", "c", "a", "user_transcript", 3, 4_000))
    state.apply(Event("a4", "c", "a", "agent_response", 4, 4_500))
    assert state.unobserved() == [500]


def test_long_conversations_are_stored_in_chunks_written_once() -> None:
    """Stored every few events as the worker stores it, a 1,500-event conversation (copies
    arriving late with earlier times, also into chunks already stored) reads back equal from
    its head and chunks; a head holds at most a chunk's worth of entries per map, and each
    write holds only the chunks filled or changed since the last."""
    rnd = random.Random(3)
    types = ["user_transcript", "agent_response", "ping", "agent_chat_response_part"]
    events = [
        Event(f"k{i}", "c", "a", types[i % 4], i, 1_000_000 + 1000 * i + rnd.randrange(900))
        for i in range(1500)
    ]
    arrivals = list(events)
    for i in range(0, 1400, 97):  # a copy received earlier, arriving much later
        arrivals.insert(
            min(len(arrivals), i + 600), events[i]._replace(received_at=events[i].received_at - 500)
        )
    table: dict[bytes, bytes] = {}
    state = ConversationState("c")
    rewritten = 0
    for n, event in enumerate(arrivals, 1):
        state.apply(event)
        if n % 7 == 0 or n == len(arrivals):
            entries = state.storage()
            assert entries[-1][0] == b"c"  # the head after its chunks
            for key, value in entries[:-1]:
                assert len(value) == 16 * CHUNK
                rewritten += key in table
            table.update(entries)
            head = table[b"c"]
            assert len(head) < 1024 + 3 * 16 * CHUNK
            restored = ConversationState.from_bytes(head, table.get)
            assert restored.metrics(0) == state.metrics(0)
    assert rewritten >= 3  # earlier copies changed chunks already stored
    assert len(table) - 1 == sum(len(m) // CHUNK for m in (state.times, state.users, state.agents))
    assert state.metrics(0) == compute("c", arrivals).metrics(0)
    with pytest.raises(ValueError, match="lacks its chunk"):
        ConversationState.from_bytes(table[b"c"], {}.get)


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
        state.tick(now, CFG)
        for record in state.take_final(CFG):
            start = record["window_start"]
            assert isinstance(start, int)
            assert start not in emitted, "a window was reported twice"
            by_type = record["events_by_type"]
            assert isinstance(by_type, dict)
            assert list(by_type) == sorted(by_type)  # record bytes independent of arrival
            emitted[start] = record
        for start, record in emitted.items():
            window = state.windows.get(start)
            if window is not None:  # a final window never changes (late counts are kept apart)
                now_record = window.record("agent", start, CFG.size, 0)
                assert {**now_record, "late_events": 0} == record
        state = AgentWindows.from_bytes(state.to_bytes())
    return state, emitted, late


def _counted(state: AgentWindows, emitted: dict[int, dict[str, object]]) -> int:
    """Events in final windows (as emitted: pruned ones included) and in open ones."""
    final = sum(int(str(r["events_total"])) for r in emitted.values())
    return final + sum(sum(w.by_type.values()) for w in state.windows.values() if not w.final)


@given(window_streams(), st.integers(0, 199), st.randoms(use_true_random=False))
@settings(max_examples=200)
def test_reordering_within_grace_loses_nothing(
    events: list[WindowEvent], jitter: int, rnd: random.Random
) -> None:
    """Events shuffled by less than the grace period: final windows hold every event."""
    arrival = sorted(events, key=lambda e: e.received_at + rnd.randint(0, jitter))
    arrival = [e._replace(offset=i) for i, e in enumerate(arrival)]  # offsets follow arrival
    wall = [0] * len(arrival)  # wall clock far behind: only event time closes windows
    state, emitted, late = _feed(arrival, wall)
    assert late == []
    state.tick(8000 + CFG.size + CFG.grace + CFG.idle + 1, CFG)  # idle-close the rest
    for record in state.take_final(CFG):
        emitted[int(str(record["window_start"]))] = record
    totals: dict[int, int] = {}
    for e in events:
        start = e.received_at - e.received_at % CFG.size
        totals[start] = totals.get(start, 0) + 1
    assert {s: r["events_total"] for s, r in emitted.items()} == totals


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
    state, emitted, late = _feed(arrival, wall)
    assert _counted(state, emitted) + len(late) == len(arrival)  # pruned windows included
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


Message = WindowEvent | int  # an event, or a tick with its time


def _run(messages: list[Message], cuts: set[int], crashes: set[int]) -> list[dict[str, object]]:
    """The worker's loop over one partition: batches end at ``cuts``; at a batch end in
    ``crashes`` the records are emitted but the state is lost, and the batch is replayed from
    the last stored state (as after a SIGKILL between outputs and the table write)."""
    stored = AgentWindows("agent").to_bytes()
    emitted: list[dict[str, object]] = []
    begin = 0
    crashed: set[int] = set()
    while begin < len(messages):
        end = min([c for c in cuts if c > begin] + [len(messages)])
        state = AgentWindows.from_bytes(stored)
        for message in messages[begin:end]:
            if isinstance(message, int):
                state.tick(message, CFG)
            else:
                state.accept(message, CFG)
        emitted += state.take_final(CFG)
        if end in crashes and end not in crashed:
            crashed.add(end)  # outputs out, state lost: the batch comes again
            continue
        stored = state.to_bytes()
        begin = end
    return emitted


@given(window_streams(), st.data())
@settings(max_examples=200)
def test_final_windows_do_not_depend_on_batches_or_crashes(
    events: list[WindowEvent], data: st.DataObject
) -> None:
    """Same messages, any batch boundaries and crashes: the same final records, each window
    with one content (re-emits after a crash are identical, emitted_at included)."""
    rnd = data.draw(st.randoms(use_true_random=False))
    arrival = list(events)
    rnd.shuffle(arrival)
    messages: list[Message] = [e._replace(offset=i) for i, e in enumerate(arrival)]
    for _ in range(data.draw(st.integers(0, 6))):  # ticks at increasing wall-clock times
        messages.insert(rnd.randint(0, len(messages)), 0)
    clock = 0
    for i, message in enumerate(messages):
        if isinstance(message, int):
            clock += rnd.randint(0, 4000)
            messages[i] = clock
    reference = _run(messages, set(), set())
    size = len(messages) + 1
    cuts = set(data.draw(st.lists(st.integers(1, size), max_size=8)))
    crashes = set(data.draw(st.lists(st.sampled_from(sorted(cuts | {len(messages)})), max_size=3)))
    replayed = _run(messages, cuts, crashes)
    by_window: dict[object, list[dict[str, object]]] = {}
    for record in replayed:
        by_window.setdefault(record["window_start"], []).append(record)
    assert all(r == rs[0] for rs in by_window.values() for r in rs), "two different finals"
    assert [rs[0] for rs in by_window.values()] == reference


def test_idle_close_by_wall_clock() -> None:
    state = AgentWindows("a")
    assert state.accept(WindowEvent(0, 0, "c", "ping", 100, False), CFG) is Outcome.COUNTED
    assert not state.tick(1000 + 200 + 5000, CFG)  # not yet past end + grace + idle
    assert state.tick(1000 + 200 + 5001, CFG)
    [record] = state.take_final(CFG)
    assert (record["closed_by"], record["emitted_at"]) == ("idle", 1000 + 200 + 5000)
    assert state.accept(WindowEvent(0, 1, "c", "ping", 999, False), CFG) is Outcome.LATE
    assert state.windows[0].late == 1
    assert not state.tick(10**6, CFG)
    assert state.take_final(CFG) == []


def test_event_time_closes_per_event_and_future_clocks_are_clamped() -> None:
    cfg = WindowConfig(size=1000, grace=200, idle=5000, retention=10_000, max_future=3000)
    state = AgentWindows("a")
    state.accept(WindowEvent(0, 0, "c", "ping", 100, False), cfg)
    # a collector clock far ahead: bounded by the forwarding time (500) + max_future
    wild = WindowEvent(1, 0, "c", "ping", 10**12, False)
    bounded = cfg.clamp(wild, 500)
    assert bounded.received_at == 3500
    assert cfg.clamp(bounded, 500) is bounded
    assert state.accept(bounded, cfg) is Outcome.COUNTED
    [record] = state.take_final(cfg)  # closed by that event, at once, not at the batch end
    assert (record["window_start"], record["closed_by"]) == (0, "event_time")
    assert record["emitted_at"] == 1000 + 200
    assert (state.event_time, state.closed_until) == (3500, 3000)  # not 10**12
    assert state.accept(WindowEvent(0, 1, "c", "ping", 1500, False), cfg) is Outcome.LATE
    assert state.accept(WindowEvent(0, 2, "c", "ping", 3100, False), cfg) is Outcome.COUNTED


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
    reader = HeadReader()
    assert reader.read(value) is None  # the id is not learnt yet
    name, decoded, schema_id = serde.decode(value)
    assert serde.is_current(schema_id, name)
    reader.learn(schema_id)
    head = reader.read(value)
    full = from_record(decoded)
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


def test_source_progress_is_the_least_time_once_every_partition_reported() -> None:
    progress = SourceProgress()
    assert progress.report(3, {0: 100, 1: 90}) is None  # partition 2 silent: no idle closing
    assert progress.report(3, {2: 95}) == 90
    assert progress.report(3, {2: 200}) is None  # the least (partition 1) did not move
    assert progress.report(3, {1: 80, 0: 150}) is None  # times never go back
    assert progress.low() == 90
    assert progress.report(3, {1: 120}) == 120
    assert progress.report(4, {0: 300}) is None  # a partition added: it must report first
    restored = SourceProgress.from_bytes(progress.to_bytes())
    assert restored == progress
    assert restored.report(4, {3: 130, 1: 140, 2: 210}) == 130


@given(st.integers(0, 1000), st.dictionaries(st.integers(0, 1000), st.integers(0, 2**62)))
def test_tick_reports_round_trip(partitions: int, times: dict[int, int]) -> None:
    assert forward.decode_tick(forward.encode_tick(partitions, times)) == (partitions, times)


def test_a_tick_of_the_older_layout_reports_nothing() -> None:
    assert forward.decode_tick((1_700_000_000_000_000).to_bytes(8, "big")) is None
    assert forward.decode_tick(b"") is None
