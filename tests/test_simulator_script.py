"""The sans-I/O conversation script: determinism, uniqueness, turn-scoped ids, coverage."""

from __future__ import annotations

import collections

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import commands
from simulator.script import ConversationScript, Frame, ScriptParams, make_agents

UPSTREAM_TYPES = {
    "conversation_initiation_metadata",
    "asr_initiation_metadata",
    "user_transcript",
    "tentative_user_transcript",
    "agent_response",
    "agent_response_correction",
    "agent_chat_response_part",
    "agent_response_metadata",
    "agent_response_complete",
    "interruption",
    "internal_tentative_agent_response",
    "client_tool_call",
    "agent_tool_request",
    "agent_tool_response",
    "agent_tool_response_full_payload",
    "mcp_tool_call",
    "mcp_connection_status",
    "context_usage",
    "guardrail_triggered",
    "client_error",
    "dtmf_request",
}  # UPSTREAM.md §2


def run(
    seed: int, number: int, params: ScriptParams | None = None
) -> tuple[ConversationScript, list[Frame]]:
    agents = make_agents(seed, 3)
    script = ConversationScript(seed, number, agents[number % 3], params or ScriptParams())
    frames: list[Frame] = []
    now = 0.0
    while (frame := script.next_frame(now)) is not None:
        frames.append(frame)
        now += script.next_gap(10.0)
    return script, frames


def test_same_seed_same_frames_and_different_seed_differs() -> None:
    for number in range(5):
        a = [f.text for f in run(7, number)[1]]
        b = [f.text for f in run(7, number)[1]]
        c = [f.text for f in run(8, number)[1]]
        assert a == b
        assert a != c
    assert make_agents(7, 3) == make_agents(7, 3) != make_agents(8, 3)


def check_script(frames: list[Frame]) -> None:
    texts = [f.text for f in frames]
    assert len(set(texts)) == len(texts), "frames must be unique within a conversation"
    assert [f.index for f in frames] == list(range(len(frames)))
    assert frames[0].type == "conversation_initiation_metadata"
    assert [f.type for f in frames[1:3]] == ["asr_initiation_metadata", "mcp_connection_status"]
    ids = [f.event_id for f in frames if f.event_id is not None]
    assert ids == sorted(ids), "event_id never decreases"
    # Turn-scoped: frames sharing an id are contiguous among id-bearing frames.
    closed: set[int] = set()
    current = None
    for eid in ids:
        if eid != current:
            assert eid not in closed
            if current is not None:
                closed.add(current)
            current = eid
    # An interruption names the response it interrupted, and a correction shares that id.
    for i, frame in enumerate(frames):
        if frame.type == "interruption":
            earlier = [f for f in frames[:i] if f.type == "agent_response"]
            assert earlier[-1].event_id == frame.event_id
            assert frames[i + 1].type == "agent_response_correction"
            assert frames[i + 1].event_id == frame.event_id
    # Every agent_response answers a user turn with a smaller id (metrics pair them so).
    users = [f.event_id for f in frames if f.type == "user_transcript"]
    agents = [f.event_id for f in frames if f.type == "agent_response"]
    for u in users:
        assert u is not None
        assert any(a is not None and a > u for a in agents) or u == max(ids)


def test_uniqueness_ids_and_coverage_over_200_conversations() -> None:
    counts: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    ends = 0
    for number in range(200):
        script, frames = run(3, number)
        check_script(frames)
        counts.update(f.type for f in frames)
        kinds[script.kind] += 1
        last = orjson.loads(frames[-1].text)
        if last["type"] == "agent_tool_response_full_payload" and (
            last["agent_tool_response_full_payload"]["tool_name"] == "end_call"
        ):
            ends += 1
        tool_errors = [orjson.loads(f.text) for f in frames if f.type == "agent_tool_response"]
        assert all(isinstance(t["agent_tool_response"]["is_error"], bool) for t in tool_errors)
    missing = UPSTREAM_TYPES - set(counts)
    assert not missing, f"types never generated: {missing}"
    assert kinds["voice"] > 100
    assert kinds["chat"] > 30
    assert 60 < ends < 180
    # Plausible rates: the conversational core dominates, rare events stay rare.
    total = sum(counts.values())
    assert counts["agent_response"] > counts["agent_tool_response"] > counts["client_error"] > 0
    assert counts["guardrail_triggered"] < 0.02 * total
    assert counts["conversation_initiation_metadata"] == 200
    mcp_states = collections.defaultdict(list)
    for number in range(200):
        for f in run(3, number)[1]:
            if f.type == "mcp_tool_call":
                call = orjson.loads(f.text)["mcp_tool_call"]
                mcp_states[call["tool_call_id"]].append(call["state"])
    for states in mcp_states.values():
        assert states[0] == "loading"
        assert states[-1] in {"success", "failure"}
        assert states[1:-1] in ([], ["awaiting_approval"])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    number=st.integers(0, 10**6),
    turns=st.floats(1, 30),
    chat=st.floats(0, 1),
)
def test_any_seed_gives_a_valid_script(seed: int, number: int, turns: float, chat: float) -> None:
    check_script(run(seed, number, ScriptParams(turns=turns, chat_ratio=chat))[1])


def chat_and_voice(seed: int) -> tuple[ConversationScript, ConversationScript]:
    agents = make_agents(seed, 1)
    scripts = [ConversationScript(seed, n, agents[0], ScriptParams(turns=30)) for n in range(20)]
    chat = next(s for s in scripts if s.kind == "chat")
    voice = next(s for s in scripts if s.kind == "voice")
    return chat, voice


def test_commands_change_the_script() -> None:
    chat, voice = chat_and_voice(11)
    for script in (chat, voice):
        for i in range(10):
            assert script.next_frame(i * 0.1) is not None
    takeover = commands.parse('{"command_type":"enable_human_takeover","parameters":{}}')
    assert not commands.apply(voice, takeover, 1.0).accepted
    assert not voice.takeover
    enabled = commands.apply(chat, takeover, 1.0)
    assert enabled.accepted
    assert [f.type for f in enabled.frames] == ["external_agent_connected"]
    human = commands.parse(
        '{"command_type":"send_human_message","parameters":{"text":"Hi, I am Ana"}}'
    )
    assert commands.apply(chat, human, 1.0).accepted
    later = [chat.next_frame(1.0 + i * 0.1) for i in range(15)]
    texts = [orjson.loads(f.text) for f in later if f is not None]
    responses = [
        t["agent_response_event"]["agent_response"] for t in texts if t["type"] == "agent_response"
    ]
    assert "Hi, I am Ana" in responses
    kinds = [t["type"] for t in texts]
    assert kinds[kinds.index("agent_typing") + 1] == "agent_response"  # the operator typed it
    # After the in-flight turn, no generated agent reply while a human has taken over.
    after = responses[responses.index("Hi, I am Ana") + 1 :]
    assert after == []
    end = commands.apply(chat, commands.parse('{"command_type":"end_call"}'), 9.0)
    assert end.accepted
    assert end.ends_conversation
    assert chat.finished
    assert [f.type for f in end.frames][-2:] == [
        "agent_tool_response",
        "agent_tool_response_full_payload",
    ]
    assert chat.next_frame(10.0) is None
    chat_transfer = commands.apply(
        ConversationScript(chat.seed, chat.number, chat.agent, chat.params),
        commands.parse(
            '{"command_type":"transfer_to_number","parameters":{"phone_number":"+14155550123"}}'
        ),
        2.0,
    )
    assert not chat_transfer.accepted  # a phone-call tool: never in a chat conversation
    assert "phone only" in chat_transfer.effect
    assert not chat_transfer.frames
    bad = commands.apply(
        voice,
        commands.parse('{"command_type":"transfer_to_number","parameters":{"phone_number":"12"}}'),
        2.0,
    )
    assert not bad.accepted
    assert not bad.frames
    ok = commands.apply(
        voice,
        commands.parse(
            '{"command_type":"transfer_to_number","parameters":{"phone_number":"+14155550123"}}'
        ),
        2.0,
    )
    payload = orjson.loads(ok.frames[1].text)["agent_tool_response"]
    assert payload["tool_name"] == "transfer_to_number"
    assert payload["is_error"] is False
    for junk in ("not json", "[]", '{"parameters":{}}', '{"command_type":"dance"}', b"\x00"):
        assert not commands.apply(voice, commands.parse(junk), 3.0).accepted


def test_malformed_frames_are_unreadable_unique_and_leave_the_rest_unchanged() -> None:
    from ingest.frames import FrameReader  # the collector's own reading decides "unreadable"

    reasons: collections.Counter[str] = collections.Counter()
    total = malformed = 0
    for number in range(40):
        plain = run(5, number)[1]
        _, frames = run(5, number, ScriptParams(malformed_ratio=0.1))
        bad = [f for f in frames if f.type == "malformed"]
        # the same frames around them (an mcp_tool_call's timestamp is virtual time, which the
        # extra frames move on)
        rest = [f for f in frames if f.type != "malformed"]
        assert [(f.type, f.event_id) for f in rest] == [(f.type, f.event_id) for f in plain]
        assert [f.text for f in rest if f.type != "mcp_tool_call"] == [
            f.text for f in plain if f.type != "mcp_tool_call"
        ]
        assert len({f.text for f in bad}) == len(bad)
        reader = FrameReader(f"conv_{number}", "c1")
        reader.connected("conn", 0.0)
        reader.frame('{"type":"history_complete"}', 0, 0.0)  # no replay to hold back
        for frame in bad:
            (result,) = reader.frame(frame.text, 0, 0.0).results
            assert result.dead_letter is not None, frame.text
            reasons[result.dead_letter["reason"]] += 1
        total += len(frames)
        malformed += len(bad)
    assert 0.07 * total < malformed < 0.13 * total
    assert set(reasons) == {"invalid_json", "not_an_object", "missing_type"}
