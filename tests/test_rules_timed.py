"""Metric thresholds, silence and response latency in the sans-I/O evaluator, backfilled events,
and what "the same rules" means for the order-dependent conditions (see ``rules/core.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.core import ConversationRules, Evaluator, Fire, RuleEvent
from rules.head import RuleHeadReader
from rules.spec import RulesError, parse_rules
from schemas.serde import Serde

S = 1_000_000
RULES = parse_rules(
    {
        "rules": [
            {
                "name": "tool-errors",
                "when": {"metric": "tool_errors", "at_least": 2, "within": 10},
                "then": {"alert": "warning"},
            },
            {"name": "quiet", "when": {"silence": 5}, "then": {"alert": "critical"}},
            {
                "name": "quiet-chat",
                "when": {"silence": 8, "channel": "chat"},
                "then": {"command": "enable_human_takeover"},
            },
            {"name": "slow", "when": {"latency_over": 3}, "then": {"alert": "info"}},
        ]
    }
)
TIMED = {"quiet": 5 * S, "quiet-chat": 8 * S, "slow": 3 * S}


def tool(conv: str, n: int, error: bool, at: int) -> RuleEvent:
    flag = "true" if error else "false"
    raw = f'{{"type":"agent_tool_response","agent_tool_response":{{"n":{n},"is_error":{flag}}}}}'
    return RuleEvent(f"{conv}:t{n}", conv, "agent", "agent_tool_response", raw, at)


def turn(conv: str, kind: str, n: int, at: int, backfill: bool = False) -> RuleEvent:
    return RuleEvent(f"{conv}:{kind}{n}", conv, "agent", kind, f"{kind} {n}", at, backfill)


def names(fires: list[Fire]) -> list[str]:
    return sorted(f.rule.name for f in fires)


def _bad(when: dict[str, Any]) -> str:
    with pytest.raises(RulesError) as err:
        parse_rules({"rules": [{"name": "r", "when": when, "then": {"alert": "info"}}]})
    return str(err.value)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"metric": "tool_errors"}, "rule 'r' when: metric needs 'at_least'"),
        ({"metric": "tool_errors", "at_least": 2, "count": 2}, "not 'match' or 'count'"),
        ({"metric": "latency", "at_least": 1}, "rule 'r' when.metric"),
        ({"metric": "interruptions", "at_least": 0}, "rule 'r' when.at_least"),
        ({"type": "x", "at_least": 2}, "'at_least' only goes with 'metric'"),
        ({"type": "x", "silence": 5}, "exactly one of 'type', 'metric', 'silence'"),
        ({}, "rule 'r' when: expected exactly one of"),
        ({"silence": 0}, "rule 'r' when.silence"),
        ({"silence": 5, "match": "x"}, "silence takes no 'match'"),
        ({"latency_over": 2, "count": 3}, "latency_over takes no 'count'"),
    ],
)
def test_invalid_conditions_name_the_rule_and_field(when: dict[str, Any], expected: str) -> None:
    assert expected in _bad(when)


def test_tool_error_threshold_counts_only_errors_within_the_window() -> None:
    e = Evaluator(RULES)
    assert e.observe(tool("c", 1, True, 0)).fires == []
    assert e.observe(tool("c", 2, False, 1 * S)).fires == []  # a tool call, not an error
    assert e.observe(tool("c", 3, True, 11 * S)).fires == []  # 11 s after the first
    assert names(e.observe(tool("c", 4, True, 12 * S)).fires) == ["tool-errors"]
    assert e.observe(tool("c", 5, True, 13 * S)).fires == []  # once per conversation


def test_silence_by_event_time() -> None:
    e = Evaluator(RULES)
    e.set_channel("c", chat=False)
    e.observe(turn("c", "user_transcript", 1, 0))
    assert e.observe(turn("c", "ping", 1, 5 * S)).fires == []  # exactly at the deadline
    fires = e.observe(turn("c", "ping", 2, 5 * S + 1)).fires
    assert names(fires) == ["quiet"]
    assert fires[0].event_key == "c:user_transcript1"
    # answered in time: no silence, however late the conversation goes on
    e.observe(turn("d", "user_transcript", 1, 0))
    e.observe(turn("d", "agent_response", 1, 2 * S))
    assert e.observe(turn("d", "ping", 1, 60 * S)).fires == []


def test_silence_falls_back_to_the_wall_clock_and_waits_for_the_channel() -> None:
    e = Evaluator(RULES)
    e.observe(turn("c", "user_transcript", 1, 100 * S))
    assert e.expire(104 * S) == []
    assert names(e.expire(105 * S + 1)) == ["quiet"]  # quiet-chat waits for 108 s
    assert names(e.expire(109 * S)) == []  # ... and for the channel
    assert e.needs_channel("c")
    assert names(e.set_channel("c", chat=True)) == ["quiet-chat"]
    assert e.expire(200 * S) == []
    assert "c" not in e.deadlines


def test_latency_over_fires_on_the_late_answer_only() -> None:
    e = Evaluator(RULES)
    e.observe(turn("c", "user_transcript", 1, 0))
    e.observe(turn("c", "agent_response", 1, 2 * S))  # 2 s: in time
    e.observe(turn("c", "user_transcript", 2, 10 * S))
    assert "slow" not in names(e.observe(turn("c", "interruption", 1, 14 * S)).fires)
    assert names(e.observe(turn("c", "agent_response", 2, 13 * S + 1)).fires) == ["slow"]


def test_timed_state_survives_the_changelog_record() -> None:
    e = Evaluator(RULES)
    e.observe(turn("c", "user_transcript", 1, 0))
    e.observe(turn("c", "agent_response", 1, 1 * S))
    e.observe(turn("c", "user_transcript", 2, 2 * S))
    serde = Serde()
    record = serde.decode(serde.encode("RuleState", e.states["c"].to_record("c", 9))).record
    restored = Evaluator(RULES)
    restored.restore("c", record)
    assert restored.states["c"] == e.states["c"]
    assert names(restored.expire(8 * S)) == ["quiet"]  # checked on the first tick after restore
    assert ConversationRules.from_record({"conversation_id": "x", "fired": []}).turns == {}


def test_backfilled_events_are_evaluated_and_their_fires_say_so() -> None:
    e = Evaluator(RULES)
    e.set_channel("c", chat=True)
    e.observe(turn("c", "user_transcript", 1, 0, backfill=True))
    fires = e.observe(turn("c", "agent_response", 1, 9 * S, backfill=True)).fires
    assert names(fires) == ["quiet", "quiet-chat", "slow"]
    assert all(f.backfill for f in fires)
    live = e.observe(tool("c", 1, True, 0)).fires + e.observe(tool("c", 2, True, 1)).fires
    assert [f.backfill for f in live] == [False]


def test_head_reader_tells_backfill_and_reads_times_for_silence() -> None:
    serde = Serde()
    record = {
        "event_key": "k1",
        "conversation_id": "conv_1",
        "agent_id": None,
        "type": "ping",
        "upstream_event_id": None,
        "received_at": 7,
        "collector_id": "backfill",
        "connection_id": "backfill",
        "connection_seq": 0,
        "replay": False,
        "raw": '{"type":"ping"}',
        "payload": ("convostream.RawPayload", {"type": "ping", "data": "{}", "reason": None}),
        "source": "backfill",
    }
    reader = RuleHeadReader()
    reader.learn(serde.registry.writer_id("MonitorEvent"))
    data = serde.encode("MonitorEvent", record)
    assert reader.read(data, set(), timed=True) == RuleEvent(
        "k1", "conv_1", None, "ping", "", 7, True
    )
    assert reader.read(data, {"ping"}) == RuleEvent(
        "k1", "conv_1", None, "ping", '{"type":"ping"}', 7, True
    )
    live = serde.encode("MonitorEvent", {**record, "collector_id": "c1", "source": "live"})
    head = reader.read(live, {"ping"})
    assert isinstance(head, RuleEvent)
    assert not head.backfill


# ----- property: what order and duplication may change -----------------------------------------
KINDS = ["user_transcript", "agent_response", "ping", "agent_tool_response"]


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[RuleEvent], dict[str, bool]]:
    events = []
    for conv in draw(st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2, unique=True)):
        for i in range(draw(st.integers(0, 10))):
            kind = draw(st.sampled_from(KINDS))
            at = draw(st.integers(0, 30)) * S // 2
            if kind == "agent_tool_response":
                events.append(tool(conv, i, draw(st.booleans()), at))
            else:
                events.append(turn(conv, kind, i, at))
    return events, {e.conversation_id: draw(st.booleans()) for e in events}


def reference(events: list[RuleEvent], chats: dict[str, bool]) -> set[tuple[str, str]]:
    """The timed rules whose condition holds over all the events, from the definitions."""
    out = set()
    for conv in {e.conversation_id for e in events}:
        mine = [e for e in events if e.conversation_id == conv]
        users = [e.received_at for e in mine if e.type == "user_transcript"]
        agents = [e.received_at for e in mine if e.type == "agent_response"]
        latest = max(e.received_at for e in mine)
        for name, limit in TIMED.items():
            if name == "quiet-chat" and not chats[conv]:
                continue
            horizon = max(agents, default=-1) if name == "slow" else latest
            if any(
                horizon > u + limit and not any(u < a <= u + limit for a in agents) for u in users
            ):
                out.add((name, conv))
    return out


def run(events: list[RuleEvent], chats: dict[str, bool]) -> list[tuple[str, str]]:
    e = Evaluator(RULES)
    fires = []
    for event in events:
        fires += e.observe(event).fires
        if e.needs_channel(event.conversation_id):
            fires += e.set_channel(event.conversation_id, chats[event.conversation_id])
    return sorted((f.rule.name, f.conversation_id) for f in fires if f.rule.name in TIMED)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), case=conversations())
def test_any_order_fires_at_most_once_and_never_misses(
    data: st.DataObject, case: tuple[list[RuleEvent], dict[str, bool]]
) -> None:
    events, chats = case
    copies = data.draw(st.lists(st.sampled_from(events), max_size=len(events))) if events else []
    fired = run(data.draw(st.permutations(events + copies)), chats)
    assert len(fired) == len(set(fired)), "a rule fired twice for one conversation"
    assert reference(events, chats) <= set(fired)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), case=conversations())
def test_orders_that_overtake_no_answer_fire_exactly_the_same_rules(
    data: st.DataObject, case: tuple[list[RuleEvent], dict[str, bool]]
) -> None:
    """Shuffle and duplicate freely, then move every agent_response in front of the events
    later than it in event time: such orders all fire what the definitions say."""
    events, chats = case
    copies = data.draw(st.lists(st.sampled_from(events), max_size=len(events))) if events else []
    order = data.draw(st.permutations(events + copies))
    for answer in sorted(
        (e for e in events if e.type == "agent_response"), key=lambda e: e.received_at
    ):
        first_later = next(
            (
                i
                for i, e in enumerate(order)
                if e.conversation_id == answer.conversation_id
                and e.received_at > answer.received_at
            ),
            len(order),
        )
        order.insert(first_later, answer)
    assert run(order, chats) == sorted(reference(events, chats))
