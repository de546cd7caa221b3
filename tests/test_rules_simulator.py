"""The simulator's --escalation-ratio: about R of the conversations contain exactly one
user_transcript asking to "talk to a human", chosen by seed, and nothing else changes."""

from __future__ import annotations

import orjson

from simulator.script import ConversationScript, ScriptParams, make_agents

AGENT = make_agents(5, 1)[0]


def frames(number: int, ratio: float) -> list[tuple[str, str]]:
    script = ConversationScript(5, number, AGENT, ScriptParams(escalation_ratio=ratio))
    out = []
    t = 0.0
    while (frame := script.next_frame(t)) is not None:
        out.append((frame.type, frame.text))
        t += 1.0
    return out


def asks_for_human(conversation: list[tuple[str, str]]) -> int:
    return sum(
        1
        for kind, text in conversation
        if kind == "user_transcript"
        and "talk to a human" in orjson.loads(text)["user_transcription_event"]["user_transcript"]
    )


def test_ratio_selects_about_that_share_with_one_request_each() -> None:
    counts = [asks_for_human(frames(n, 0.3)) for n in range(200)]
    assert set(counts) <= {0, 1}
    assert 40 <= sum(counts) <= 80
    assert counts == [asks_for_human(frames(n, 0.3)) for n in range(200)]  # same seed, same


def test_only_the_escalating_transcript_differs() -> None:
    for n in range(20):
        plain, escalated = frames(n, 0.0), frames(n, 1.0)
        assert asks_for_human(plain) == 0
        assert asks_for_human(escalated) == 1
        differing = [(a, b) for a, b in zip(plain, escalated, strict=True) if a != b]
        assert [a[0] for a, _ in differing] == ["user_transcript"]
