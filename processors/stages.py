"""The two processor stages as folds: a batch and the states it touches in, a :class:`Plan` out.

No I/O and no clock: the worker (:mod:`processors.app`) reads the batch, decodes it and loads
the states, passes the time, and carries the plan out with :func:`processors.plans.apply`.
The folds advance the states they are given in place (copying them per batch would cost more
than the metric work); the plan's table writes hold the advanced states' bytes, to be stored
only after the outputs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from processors import forward
from processors.conversation import ConversationState
from processors.events import CORRECTION, INTERRUPTION, Event
from processors.plans import (
    AGENTS_TABLE,
    CONVERSATION_METRICS,
    CONVERSATIONS_TABLE,
    FORWARD,
    LATE,
    WINDOW_METRICS,
    MetricUpdates,
    Plan,
    Send,
    Write,
)
from processors.windows import AgentWindows, Outcome, SourceProgress, WindowConfig, WindowEvent
from schemas.records import AgentWindowMetrics, ConversationMetrics

Encode = Callable[[str, ConversationMetrics | AgentWindowMetrics], bytes]


def index_key(partition: int) -> bytes:
    """Reserved table key of a partition's agent list (agent ids never start with NUL)."""
    return b"\x00agents:%d" % partition


def progress_key(partition: int) -> bytes:
    """Reserved table key of a partition's :class:`SourceProgress`."""
    return b"\x00progress:%d" % partition


# --- stage 1: conversations ------------------------------------------------------------------


class Ended(NamedTuple):
    """A ``ConversationLifecycle`` record with state ``ended``."""

    conversation_id: str
    agent_id: str | None


class SourceRecord(NamedTuple):
    """One source message the conversation stage uses: a monitor event (with its original
    bytes, forwarded as they are) or a lifecycle end."""

    partition: int
    offset: int
    value: bytes
    item: Event | Ended


def conversation_stage(
    records: Iterable[SourceRecord],
    states: Mapping[str, ConversationState],
    now: int,
    encode: Encode,
) -> Plan | None:
    """Fold a batch into the states of its conversations (``states`` holds each of them).

    The plan forwards first-seen events to the agent-keyed topic (one record per agent and
    source partition), emits and upserts the metrics of every touched conversation that has
    events, and writes each touched state once. None when no record touched a conversation.
    """
    touched: dict[str, ConversationState] = {}
    partition_of: dict[str, int] = {}
    forwards: dict[tuple[str, int], list[forward.Forwarded]] = defaultdict(list)
    new_by_type: dict[str, int] = defaultdict(int)
    agent_events: dict[tuple[str, str], int] = defaultdict(int)
    for record in records:
        item = record.item
        cid = item.conversation_id
        state = touched[cid] = states[cid]
        partition_of[cid] = record.partition
        if isinstance(item, Ended):
            state.end(item.agent_id)
            continue
        if not state.apply(item):
            continue
        new_by_type[item.type] += 1
        agent = item.agent_id
        if agent is not None:
            if item.type in (INTERRUPTION, CORRECTION) or item.is_error:
                agent_events[(agent, item.type)] += 1
            forwards[(agent, record.partition)].append(
                (
                    WindowEvent(
                        record.partition,
                        record.offset,
                        cid,
                        item.type,
                        item.received_at,
                        item.is_error,
                    ),
                    record.value,
                )
            )
    if not touched:
        return None
    metrics = MetricUpdates(events=dict(new_by_type), agent_events=dict(agent_events))
    rows: list[ConversationMetrics] = []
    for state in touched.values():
        if not state.times:  # only a lifecycle record so far: nothing to report
            continue
        rows.append(state.metrics(now))
        agent_label = state.agent_id or "unknown"
        metrics.latencies += [(agent_label, us / 1e6) for us in state.unobserved()]
        metrics.live.append((agent_label, state.conversation_id, state.ended))
    sends = [
        Send(FORWARD, agent.encode(), forward.encode(agent, part, now, items))
        for (agent, part), items in forwards.items()
    ]
    sends += [
        Send(
            CONVERSATION_METRICS,
            row["conversation_id"].encode(),
            encode("ConversationMetrics", row),
        )
        for row in rows
    ]
    writes = []
    for cid, state in touched.items():
        state.touched_at = now
        part = partition_of[cid]
        writes += [Write(CONVERSATIONS_TABLE, part, k, v) for k, v in state.storage()]
    return Plan(sends, rows, [], sql_alongside=True, writes=writes, metrics=metrics)


# --- stage 2: agent windows ------------------------------------------------------------------


class Tick(NamedTuple):
    """A progress report on an internal partition (None: a layout this version ignores)."""

    partition: int
    report: tuple[int, dict[int, int]] | None


class AgentBatch(NamedTuple):
    """One forwarded record: an agent's first-seen events from one source batch."""

    partition: int
    agent_id: str
    sent_at: int
    events: list[forward.Forwarded]


@dataclass(frozen=True, slots=True)
class WindowStates:
    """The states a window batch needs: every agent it names or ticks, and per internal
    partition its agent index and :class:`SourceProgress`."""

    agents: Mapping[str, AgentWindows]
    index: Mapping[int, set[str]]
    progress: Mapping[int, SourceProgress]


def window_stage(
    items: Iterable[Tick | AgentBatch],
    states: WindowStates,
    config: WindowConfig,
    now: int,
    encode: Encode,
) -> Plan:
    """Fold a batch of the internal topic into the agents' windows.

    The plan sends late events (their original bytes) and newly final windows, upserts open
    and final windows to SQL after that, then writes the changed agents, indexes and progress;
    a crash before the writes replays the ticks, which close the same windows.
    """
    changed: dict[str, AgentWindows] = {}  # agents whose state moved: only they are written
    partition_of: dict[str, int] = {}
    late: list[tuple[str, str, bytes]] = []
    clamped: dict[str, int] = defaultdict(int)
    lagging: set[str] = set()  # agents whose window lag gauge a tick refreshes
    index_changed: dict[int, None] = {}
    progress_changed: dict[int, None] = {}
    for item in items:
        partition = item.partition
        index = states.index[partition]
        if isinstance(item, Tick):  # every agent of this partition, by the progress
            report = item.report
            low = states.progress[partition].report(*report) if report is not None else None
            if low is None:
                continue
            progress_changed[partition] = None
            for agent_id in index:
                state = states.agents[agent_id]
                partition_of[agent_id] = partition
                if state.tick(low, config):
                    changed[agent_id] = state
                lagging.add(agent_id)
            continue
        agent_id = item.agent_id
        state = states.agents[agent_id]
        partition_of[agent_id] = partition
        if agent_id not in index:
            index.add(agent_id)
            index_changed[partition] = None
        for event, value in item.events:
            bounded = config.clamp(event, item.sent_at)
            if bounded is not event:
                clamped[agent_id] += 1
            outcome = state.accept(bounded, config)
            if outcome is Outcome.DUPLICATE:
                continue
            changed[agent_id] = state
            if outcome is Outcome.LATE:
                late.append((agent_id, event.conversation_id, value))
    plan = Plan()
    for agent_id in lagging | changed.keys():
        event_time = states.agents[agent_id].event_time
        if event_time is not None:
            plan.metrics.window_lag[agent_id] = (now - event_time) / 1e6
    if changed:
        _emit_windows(plan, changed, partition_of, late, clamped, config, encode)
    plan.writes += [
        Write(AGENTS_TABLE, p, index_key(p), orjson.dumps(sorted(states.index[p])))
        for p in index_changed
    ]
    plan.writes += [
        Write(AGENTS_TABLE, p, progress_key(p), states.progress[p].to_bytes())
        for p in progress_changed
    ]
    return plan


def _emit_windows(
    plan: Plan,
    changed: Mapping[str, AgentWindows],
    partition_of: Mapping[str, int],
    late: list[tuple[str, str, bytes]],
    clamped: Mapping[str, int],
    config: WindowConfig,
    encode: Encode,
) -> None:
    """Windows made final and late events to their topics, open and final windows to SQL,
    then the agents' states (before the index and progress writes)."""
    finals: list[AgentWindowMetrics] = []  # for the topic: newly final windows, as they closed
    rows = plan.sql_windows  # open windows, newly final ones, final ones with late events
    for agent_id, state in changed.items():
        final = state.take_final(config)
        finals += final
        rows += final
        for start, window in state.windows.items():
            if not window.final or window.late:
                rows.append(window.record(agent_id, start, config.size, state.event_time or 0))
        plan.metrics.windows_emitted += [record["closed_by"] for record in final]
    plan.sends += [Send(LATE, cid.encode(), value) for _, cid, value in late]
    plan.sends += [
        Send(
            WINDOW_METRICS,
            f"{r['agent_id']}@{r['window_start']}".encode(),
            encode("AgentWindowMetrics", r),
        )
        for r in finals
    ]
    for agent_id, _, _ in late:
        plan.metrics.late[agent_id] = plan.metrics.late.get(agent_id, 0) + 1
    plan.metrics.clamped.update(clamped)
    plan.writes += [
        Write(AGENTS_TABLE, partition_of[agent_id], agent_id.encode(), state.to_bytes())
        for agent_id, state in changed.items()
    ]
