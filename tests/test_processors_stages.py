"""The processor stages as folds (batch and states in, plan out) and the order plans apply in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from processors import forward, plans
from processors.conversation import ConversationState, last_touched
from processors.events import Event
from processors.plans import MetricUpdates, Plan, Send, Write, apply
from processors.stages import (
    AgentBatch,
    Ended,
    SourceRecord,
    Tick,
    WindowStates,
    conversation_stage,
    index_key,
    progress_key,
    window_stage,
)
from processors.windows import AgentWindows, SourceProgress, WindowConfig, WindowEvent
from schemas.records import AgentWindowMetrics, ConversationMetrics
from schemas.serde import Serde

SERDE = Serde()
NOW = 1_700_000_100_000_000
SECOND = 1_000_000


def _event(key: str, cid: str, etype: str, at: int, agent: str | None = "agent-a") -> Event:
    return Event(key, cid, agent, etype, None, at)


def _source_batch() -> list[SourceRecord]:
    t = NOW - 10 * SECOND
    return [
        SourceRecord(0, 10, b"e1", _event("k1", "c1", "user_transcript", t)),
        SourceRecord(0, 11, b"e2", _event("k2", "c1", "interruption", t + 1)),
        SourceRecord(0, 12, b"e1-copy", _event("k1", "c1", "user_transcript", t + 5)),
        SourceRecord(1, 7, b"e3", _event("k3", "c2", "user_transcript", t, agent=None)),
        SourceRecord(2, 3, b"end", Ended("c3", "agent-b")),
    ]


def _fresh(cids: list[str]) -> dict[str, ConversationState]:
    return {cid: ConversationState(cid) for cid in cids}


def test_conversation_stage_plans_forwards_metrics_and_one_write_per_conversation() -> None:
    states = _fresh(["c1", "c2", "c3"])
    plan = conversation_stage(_source_batch(), states, NOW, SERDE.encode)
    assert plan is not None
    forwards = [s for s in plan.sends if s.topic == plans.FORWARD]
    assert [s.key for s in forwards] == [b"agent-a"]  # c2 has no agent, c3 only ended
    agent, sent_at, items = forward.decode(forwards[0].value)
    assert (agent, sent_at) == ("agent-a", NOW)
    assert [(e.offset, value) for e, value in items] == [(10, b"e1"), (11, b"e2")]  # no copy
    emitted = [s for s in plan.sends if s.topic == plans.CONVERSATION_METRICS]
    assert [s.key for s in emitted] == [b"c1", b"c2"]  # c3: a lifecycle record only
    decoded = SERDE.decode(emitted[0].value)[1]
    assert decoded["events_total"] == 2
    assert decoded["interruptions"] == 1
    assert plan.sql_conversations == [states["c1"].metrics(NOW), states["c2"].metrics(NOW)]
    assert plan.sql_alongside
    assert [(w.table, w.partition, w.key) for w in plan.writes] == [
        (plans.CONVERSATIONS_TABLE, 0, b"c1"),
        (plans.CONVERSATIONS_TABLE, 1, b"c2"),
        (plans.CONVERSATIONS_TABLE, 2, b"c3"),
    ]
    assert ConversationState.from_bytes(plan.writes[2].value).ended
    assert plan.metrics.events == {"user_transcript": 2, "interruption": 1}
    assert plan.metrics.agent_events == {("agent-a", "interruption"): 1}
    assert [(a, c, e) for a, c, e in plan.metrics.live] == [
        ("agent-a", "c1", False),
        ("unknown", "c2", False),
    ]


def test_conversation_stage_stores_when_it_touched_each_state() -> None:
    """State retention ages a stored state by the last batch that touched it, read from the
    header alone; states stored before that field fall back to their latest event."""
    plan = conversation_stage(_source_batch(), _fresh(["c1", "c2", "c3"]), NOW, SERDE.encode)
    assert plan is not None
    assert [last_touched(w.value) for w in plan.writes] == [NOW, NOW, NOW]
    older = ConversationState.from_bytes(plan.writes[0].value)
    older.touched_at = None  # as an earlier version stored it
    assert last_touched(older.to_bytes()) == NOW - 10 * SECOND + 1  # its latest received_at
    lifecycle_only = ConversationState("c3", ended=True)
    assert last_touched(lifecycle_only.to_bytes()) is None


def test_conversation_stage_without_conversations_plans_nothing() -> None:
    assert conversation_stage([], {}, NOW, SERDE.encode) is None


def test_replayed_conversation_batch_sends_the_same_outputs_until_its_states_are_written() -> None:
    """A crash after the outputs, before the writes: the replay starts from the old states and
    plans the same records; once the writes are stored, a replay forwards nothing again."""
    first = conversation_stage(_source_batch(), _fresh(["c1", "c2", "c3"]), NOW, SERDE.encode)
    replay = conversation_stage(_source_batch(), _fresh(["c1", "c2", "c3"]), NOW, SERDE.encode)
    assert first is not None
    assert replay is not None
    assert replay.sends == first.sends
    assert replay.writes == first.writes
    stored = {w.key.decode(): ConversationState.from_bytes(w.value) for w in first.writes}
    after = conversation_stage(_source_batch(), stored, NOW, SERDE.encode)
    assert after is not None
    assert [s for s in after.sends if s.topic == plans.FORWARD] == []
    assert after.metrics.events == {}
    assert after.metrics.latencies == []


CONFIG = WindowConfig(size=60 * SECOND, grace=10 * SECOND, idle=30 * SECOND)
START = 1_700_000_040_000_000 - 1_700_000_040_000_000 % CONFIG.size


def _window_event(offset: int, at: int, cid: str = "c1") -> WindowEvent:
    return WindowEvent(0, offset, cid, "user_transcript", at, False)


def _window_states(agents: list[str]) -> WindowStates:
    return WindowStates({a: AgentWindows(a) for a in agents}, {4: set()}, {4: SourceProgress()})


def test_window_stage_closes_idle_windows_by_tick_and_writes_state_after() -> None:
    states = _window_states(["agent-a"])
    events = [
        (_window_event(1, START + SECOND), b"m1"),
        (_window_event(2, START + 2 * SECOND), b"m2"),
    ]
    idle_past = START + CONFIG.size + CONFIG.grace + CONFIG.idle + 1
    items: list[Tick | AgentBatch] = [
        AgentBatch(4, "agent-a", START, events),
        Tick(4, (1, {0: idle_past})),
    ]
    plan = window_stage(items, states, CONFIG, idle_past, SERDE.encode)
    [final] = [s for s in plan.sends if s.topic == plans.WINDOW_METRICS]
    assert final.key == f"agent-a@{START}".encode()
    record = SERDE.decode(final.value)[1]
    assert (record["events_total"], record["closed_by"], record["final"]) == (2, "idle", True)
    assert [r["window_start"] for r in plan.sql_windows] == [START]
    assert not plan.sql_alongside
    assert [(w.table, w.partition, w.key) for w in plan.writes] == [
        (plans.AGENTS_TABLE, 4, b"agent-a"),
        (plans.AGENTS_TABLE, 4, index_key(4)),
        (plans.AGENTS_TABLE, 4, progress_key(4)),
    ]
    assert AgentWindows.from_bytes(plan.writes[0].value).closed_until == START + CONFIG.size
    assert plan.metrics.windows_emitted == ["idle"]
    assert plan.metrics.window_lag == {"agent-a": (idle_past - (START + 2 * SECOND)) / 1e6}


def test_window_stage_routes_late_events_and_counts_clamped_ones() -> None:
    states = _window_states(["agent-a"])
    later = START + 3 * CONFIG.size
    first: list[Tick | AgentBatch] = [
        AgentBatch(4, "agent-a", later, [(_window_event(1, later), b"m1")])
    ]
    window_stage(first, states, CONFIG, later, SERDE.encode)
    late = (_window_event(2, START + SECOND, cid="c9"), b"late-bytes")
    future = (_window_event(3, later + 2 * CONFIG.max_future), b"m3")
    plan = window_stage(
        [AgentBatch(4, "agent-a", later, [late, future])], states, CONFIG, later, SERDE.encode
    )
    assert [s for s in plan.sends if s.topic == plans.LATE] == [
        Send(plans.LATE, b"c9", b"late-bytes")
    ]
    assert plan.metrics.late == {"agent-a": 1}
    assert plan.metrics.clamped == {"agent-a": 1}
    assert [w.key for w in plan.writes] == [b"agent-a"]  # index already holds the agent


def test_a_tick_that_does_not_move_progress_plans_nothing() -> None:
    states = _window_states(["agent-a"])
    states.index[4].add("agent-a")
    plan = window_stage([Tick(4, (2, {0: NOW}))], states, CONFIG, NOW, SERDE.encode)
    assert plan == Plan()  # partition 1 has not reported: no low watermark yet


class RecordingSinks:
    """Sinks that record each call; ``fail_ack`` makes one record's acknowledgement fail."""

    def __init__(self, fail_ack: bytes | None = None) -> None:
        self.calls: list[str] = []
        self.fail_ack = fail_ack

    async def send(self, send: Send) -> Awaitable[object]:
        self.calls.append(f"send {send.topic}")
        return self._ack(send)

    async def _ack(self, send: Send) -> object:
        await asyncio.sleep(0)
        if send.key == self.fail_ack:
            raise RuntimeError("broker refused")
        self.calls.append(f"ack {send.topic}")
        return None

    async def write_sql(
        self, conversations: list[ConversationMetrics], windows: list[AgentWindowMetrics]
    ) -> None:
        self.calls.append("sql start")
        await asyncio.sleep(0)
        self.calls.append("sql done")

    def write_table(self, write: Write) -> None:
        self.calls.append(f"write {write.key.decode()}")

    def update_metrics(self, updates: MetricUpdates) -> None:
        self.calls.append("metrics")


def _plan(alongside: bool) -> Plan:
    return Plan(
        sends=[Send(plans.FORWARD, b"a", b"1"), Send(plans.LATE, b"b", b"2")],
        sql_alongside=alongside,
        writes=[Write(plans.AGENTS_TABLE, 0, b"x", b"1"), Write(plans.AGENTS_TABLE, 0, b"y", b"2")],
    )


async def test_a_plan_sends_then_upserts_then_writes_state_then_counts() -> None:
    sinks = RecordingSinks()
    await apply(_plan(alongside=False), sinks)
    assert sinks.calls == [
        "send forward",
        "send late",
        "ack forward",
        "ack late",
        "sql start",
        "sql done",
        "write x",
        "write y",
        "metrics",
    ]


async def test_an_upsert_alongside_the_sends_still_precedes_the_state() -> None:
    sinks = RecordingSinks()
    await apply(_plan(alongside=True), sinks)
    calls = sinks.calls
    assert calls.index("sql start") < calls.index("ack forward")
    assert max(calls.index(c) for c in ("ack late", "sql done")) < calls.index("write x")
    assert calls[-3:] == ["write x", "write y", "metrics"]


@pytest.mark.parametrize("alongside", [False, True])
async def test_a_failed_output_leaves_state_and_metrics_unwritten(alongside: bool) -> None:
    sinks = RecordingSinks(fail_ack=b"b")
    with pytest.raises(RuntimeError, match="broker refused"):
        await apply(_plan(alongside), sinks)
    assert not [c for c in sinks.calls if c.startswith("write") or c == "metrics"]
    assert ("sql done" in sinks.calls) is alongside  # an upsert under way is waited for
