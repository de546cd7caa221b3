"""The rules file and the sans-I/O evaluator: validation messages, conditions, and the property
that any order and duplication of the same events fires the same rules exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.actions import alert_record, command_record
from rules.core import ConversationRules, Evaluator, Fire, RuleEvent, fire_id
from rules.head import SKIP, RuleHeadReader
from rules.spec import RulesError, load_rules, parse_rules
from schemas.serde import Serde
from schemas.signing import verify

EXAMPLE = Path(__file__).parent.parent / "deploy" / "rules" / "example.yaml"
RULES = parse_rules(
    {
        "rules": [
            {
                "name": "human-chat",
                "when": {"type": "user_transcript", "match": "(?i)human", "channel": "chat"},
                "then": {"command": "enable_human_takeover"},
            },
            {
                "name": "human-voice",
                "when": {"type": "user_transcript", "match": "(?i)human", "channel": "voice"},
                "then": {"command": "transfer_to_number", "phone_number": "+14155550100"},
            },
            {
                "name": "third-error",
                "when": {"type": "agent_tool_response", "match": '"is_error":true', "count": 3},
                "then": {"alert": "warning"},
            },
            {
                "name": "burst",
                "when": {"type": ["interruption", "client_error"], "count": 2, "within": 5},
                "then": {"alert": "info"},
            },
            {
                "name": "note",
                "when": {"type": "agent_response"},
                "then": {"command": "contextual_update", "contextual_update": "be brief"},
            },
        ]
    }
)


def ev(conv: str, kind: str, raw: str, at: int, key: str | None = None) -> RuleEvent:
    return RuleEvent(key or f"{conv}:{raw}", conv, "agent_1", kind, raw, at)


def _bad(doc: dict[str, Any]) -> str:
    with pytest.raises(RulesError) as err:
        parse_rules(doc)
    return str(err.value)


def test_example_file_is_valid() -> None:
    rules = {r.name: r for r in load_rules(EXAMPLE)}
    assert "wants-human-chat" in rules
    assert "wants-human-voice" in rules
    kinds = {(r.kind, r.metric is not None, r.within_micros is not None) for r in rules.values()}
    assert {("silence", False, False), ("latency", False, False), ("count", True, True)} <= kinds


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"when": {"type": "x", "match": "("}, "then": {"alert": "info"}}, "rule 'r' when.match"),
        ({"when": {"type": "x", "count": 0}, "then": {"alert": "info"}}, "rule 'r' when.count"),
        ({"when": {"type": "x"}, "then": {"alert": "loud"}}, "rule 'r' then.alert"),
        ({"when": {"type": "x"}, "then": {}}, "exactly one of 'command' or 'alert'"),
        ({"when": {"type": "x"}, "then": {"command": "explode"}}, "unknown command 'explode'"),
        (
            {"when": {"type": "x", "channel": "voice"}, "then": {"command": "transfer_to_number"}},
            "transfer_to_number needs 'phone_number'",
        ),
        (
            {
                "when": {"type": "x", "channel": "voice"},
                "then": {"command": "transfer_to_number", "phone_number": "0800"},
            },
            "E.164",
        ),
        (
            {"when": {"type": "x"}, "then": {"command": "enable_human_takeover"}},
            "set when.channel: chat",
        ),
        ({"when": {"type": "x", "colour": 1}, "then": {"alert": "info"}}, "rule 'r' when.colour"),
        ({"when": {"type": []}, "then": {"alert": "info"}}, "rule 'r' when.type"),
    ],
)
def test_invalid_rules_name_the_rule_and_field(rule: dict[str, Any], expected: str) -> None:
    assert expected in _bad({"rules": [{"name": "r", **rule}]})


def test_duplicate_names_and_bad_files(tmp_path: Path) -> None:
    rule = {"name": "same", "when": {"type": "x"}, "then": {"alert": "info"}}
    assert "rule 'same' name: used twice" in _bad({"rules": [rule, rule]})
    assert "rule #1 name" in _bad({"rules": [{"when": {"type": "x"}, "then": {"alert": "info"}}]})
    path = tmp_path / "r.yaml"
    path.write_text("rules: [unclosed")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(path)
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "missing.yaml")


def test_count_channel_and_window() -> None:
    e = Evaluator(RULES)
    err = '{"is_error":true,"n":%d}'
    fired: list[Fire] = []
    for i in range(3):
        fired += e.observe(ev("c", "agent_tool_response", err % i, i)).fires
        assert len(fired) == (1 if i == 2 else 0)
    assert fired[0].rule.name == "third-error"
    # a duplicate of a counted event does not count again
    e.observe(ev("d", "agent_tool_response", err % 1, 0))
    assert e.observe(ev("d", "agent_tool_response", err % 1, 0)).fires == []
    assert e.observe(ev("d", "agent_tool_response", err % 2, 0)).fires == []
    # within: two interruptions 10 s apart do not fire, a third 3 s after the second does
    s = 1_000_000
    assert e.observe(ev("w", "interruption", "a", 0)).fires == []
    assert e.observe(ev("w", "interruption", "b", 10 * s)).fires == []
    assert [f.rule.name for f in e.observe(ev("w", "client_error", "c", 13 * s)).fires] == ["burst"]
    # channel: the rule waits for the lookup, then fires for the matching channel only
    assert e.observe(ev("h", "user_transcript", "a human please", 0)).fires == []
    assert e.needs_channel("h")
    assert [f.rule.name for f in e.set_channel("h", chat=False)] == ["human-voice"]
    assert not e.needs_channel("h")
    assert e.set_channel("h", chat=True) == []


def test_actions_carry_deterministic_ids_and_a_valid_signature() -> None:
    by_name = {r.name: r for r in RULES}
    fire = Fire(by_name["human-voice"], "conv_1", "agent_1", "k1")
    first = command_record(fire, issuer="rules", key="k" * 16, ttl=30, now=1)
    again = command_record(fire, issuer="rules", key="k" * 16, ttl=30, now=2)
    assert first["command_id"] == again["command_id"] == fire_id("human-voice", "conv_1")
    assert first["phone_number"] == "+14155550100"
    assert verify(first, "k" * 16)
    assert fire_id("human-voice", "conv_2") != first["command_id"]
    assert first["key_id"] is None
    rotated = command_record(fire, issuer="rules", key="r" * 16, key_id="2026-12", ttl=30, now=1)
    assert rotated["key_id"] == "2026-12"
    assert verify(rotated, "r" * 16)
    assert not verify({**rotated, "key_id": None}, "r" * 16)  # the key id is signed too
    alert = alert_record(Fire(by_name["third-error"], "conv_1", None, "k3"), now=5)
    assert alert["alert_id"] == fire_id("third-error", "conv_1")
    serde = Serde()
    assert serde.decode(serde.encode("Alert", alert)).record == alert
    serde.encode("ControlCommand", first)


def test_state_survives_the_changelog_record() -> None:
    e = Evaluator(RULES)
    err = '{"is_error":true,"n":%d}'
    e.observe(ev("c", "agent_tool_response", err % 1, 1))
    e.observe(ev("c", "user_transcript", "human", 2))
    e.set_channel("c", chat=True)
    assert e.take_dirty() == ["c"]
    serde = Serde()
    record = serde.decode(serde.encode("RuleState", e.states["c"].to_record("c", 9))).record
    restored = Evaluator(RULES)
    restored.restore("c", record)
    assert restored.states["c"] == e.states["c"]
    assert restored.observe(ev("c", "user_transcript", "human again", 3)).fires == []
    restored.observe(ev("c", "agent_tool_response", err % 2, 4))
    fires = restored.observe(ev("c", "agent_tool_response", err % 3, 5)).fires
    assert [f.rule.name for f in fires] == ["third-error"]
    assert ConversationRules.from_record(record).chat is True


# ----- property: order and duplicates do not matter ---------------------------------------------
KINDS = ["user_transcript", "agent_tool_response", "interruption", "client_error", "agent_response"]
TEXTS = ["human", "hello", '"is_error":true', '"is_error":false']


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[RuleEvent], dict[str, bool]]:
    events = []
    for conv in draw(
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True)
    ):
        for i in range(draw(st.integers(0, 12))):
            kind = draw(st.sampled_from(KINDS))
            text = f"{draw(st.sampled_from(TEXTS))} {i}"
            at = draw(st.integers(0, 20)) * 1_000_000
            events.append(RuleEvent(f"{conv}:{i}", conv, "agent", kind, text, at))
    chats = {e.conversation_id: draw(st.booleans()) for e in events}
    return events, chats


def run(events: list[RuleEvent], chats: dict[str, bool], lookup_at: int) -> list[tuple[str, str]]:
    """Evaluate like the engine: channel looked up once a rule waits for it (or at
    ``lookup_at``, earlier, as a restart with a known channel would)."""
    e = Evaluator(RULES)
    fires = []
    for n, event in enumerate(events):
        if n == lookup_at:
            for conv, chat in chats.items():
                fires += e.set_channel(conv, chat)
        fires += e.observe(event).fires
        if e.needs_channel(event.conversation_id):
            fires += e.set_channel(event.conversation_id, chats[event.conversation_id])
    return sorted((f.rule.name, f.conversation_id) for f in fires)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), case=conversations())
def test_any_order_and_duplication_fires_the_same_rules_once(
    data: st.DataObject, case: tuple[list[RuleEvent], dict[str, bool]]
) -> None:
    events, chats = case
    expected = run(events, chats, lookup_at=-1)
    assert len(expected) == len(set(expected)), "a rule fired twice for one conversation"
    copies = data.draw(st.lists(st.sampled_from(events), max_size=len(events))) if events else []
    shuffled = data.draw(st.permutations(events + copies))
    lookup_at = data.draw(st.integers(-1, len(shuffled)))
    assert run(shuffled, chats, lookup_at) == expected


def test_reference_outcome_for_one_conversation() -> None:
    """The property above compares orders with each other; this pins what they agree on."""
    events = [
        ev("x", "user_transcript", "a human", 0),
        ev("x", "interruption", "i1", 0),
        ev("x", "interruption", "i2", 6_000_000),
        ev("x", "agent_response", "hi", 1),
    ]
    assert run(events, {"x": True}, -1) == [("human-chat", "x"), ("note", "x")]


def test_yaml_round_trip_of_the_design_example(tmp_path: Path) -> None:
    doc = {
        "rules": [
            {
                "name": "wants-human-chat",
                "when": {
                    "type": "user_transcript",
                    "match": "(?i)talk to a human",
                    "channel": "chat",
                    "count": 1,
                },
                "then": {"command": "enable_human_takeover"},
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(doc))
    (rule,) = load_rules(path)
    assert rule.channel == "chat"
    assert rule.count == 1


def test_head_reader_agrees_with_the_full_decode() -> None:
    serde = Serde()
    raw = '{"type":"user_transcript","user_transcription_event":{"user_transcript":"hi é"}}'
    record = {
        "event_key": "k1",
        "conversation_id": "conv_1",
        "agent_id": None,
        "type": "user_transcript",
        "upstream_event_id": 7,
        "received_at": 1_700_000_000_000_000,
        "collector_id": "c",
        "connection_id": "conn",
        "connection_seq": 300,
        "replay": True,
        "raw": raw,
        "payload": (
            "convostream.UserTranscriptPayload",
            {"user_transcript": "hi é", "event_id": 7},
        ),
    }
    data = serde.encode("MonitorEvent", record)
    reader = RuleHeadReader()
    assert reader.read(data, {"user_transcript"}) is None  # no id learnt yet: decode fully
    reader.learn(serde.registry.writer_id("MonitorEvent"))
    assert reader.read(data, {"user_transcript"}) == RuleEvent(
        "k1", "conv_1", None, "user_transcript", raw, 1_700_000_000_000_000
    )
    assert reader.read(data, {"interruption"}) == SKIP
    assert reader.read(data[:20], {"user_transcript"}) is None  # truncated: decode fully
    other = RuleHeadReader()
    other.learn(serde.registry.writer_id("MonitorEvent") + 1)
    assert other.read(data, {"user_transcript"}) is None
