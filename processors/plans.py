"""What one processor batch does, as a value, and the one function that carries it out.

The stage folds (:mod:`processors.stages`) compute a :class:`Plan` without I/O; :func:`apply`
performs it in the order the delivery guarantee needs:

1. outputs: the Kafka records (all handed to the producer, then all acknowledged) and the SQL
   upserts (alongside the sends, or after them);
2. table writes (state, changelogged): only after every output is stored, because the states
   mark their events seen: a crash between 1 and 2 replays the batch to the same outputs,
   which the receivers and the SQL guards take idempotently;
3. metric updates, last.

An exception in a step leaves the later steps undone, so state is never ahead of outputs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

from schemas.records import AgentWindowMetrics, ConversationMetrics

# Topics a plan sends to (roles; the worker maps them to its topic names)
FORWARD = "forward"
CONVERSATION_METRICS = "conversation-metrics"
WINDOW_METRICS = "window-metrics"
LATE = "late"

# Tables a plan writes to
CONVERSATIONS_TABLE = "conversations"
AGENTS_TABLE = "agent-windows"


@dataclass(frozen=True, slots=True)
class Send:
    """One record for a topic (a role above)."""

    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class Write:
    """One table write into the table partition ``partition``."""

    table: str
    partition: int
    key: bytes
    value: bytes


@dataclass(slots=True)
class MetricUpdates:
    """Prometheus updates of one batch (per label: how many, or the value to set)."""

    events: dict[str, int] = field(default_factory=dict)  # event type -> first-seen events
    agent_events: dict[tuple[str, str], int] = field(default_factory=dict)  # (agent, type)
    latencies: list[tuple[str, float]] = field(default_factory=list)  # (agent, seconds)
    live: list[tuple[str, str, bool]] = field(default_factory=list)  # (agent, conv id, ended)
    window_lag: dict[str, float] = field(default_factory=dict)  # agent -> seconds
    windows_emitted: list[str | None] = field(default_factory=list)  # closed_by per window
    late: dict[str, int] = field(default_factory=dict)  # agent -> late events
    clamped: dict[str, int] = field(default_factory=dict)  # agent -> clamped events


@dataclass(slots=True)
class Plan:
    """Outputs, table writes and metric updates of one batch.

    ``sql_alongside``: the SQL upsert runs while the records are sent (the conversation stage,
    whose SQL latency tail it shortens) rather than after they are acknowledged.
    """

    sends: list[Send] = field(default_factory=list)
    sql_conversations: list[ConversationMetrics] = field(default_factory=list)
    sql_windows: list[AgentWindowMetrics] = field(default_factory=list)
    sql_alongside: bool = False
    writes: list[Write] = field(default_factory=list)
    metrics: MetricUpdates = field(default_factory=MetricUpdates)


class Sinks(Protocol):
    """Where a plan goes: the producer, the SQL store, the tables and Prometheus."""

    async def send(self, send: Send) -> Awaitable[object]:
        """Hand one record to the producer; the awaitable is its acknowledgement."""

    async def write_sql(
        self, conversations: list[ConversationMetrics], windows: list[AgentWindowMetrics]
    ) -> None: ...

    def write_table(self, write: Write) -> None: ...

    def update_metrics(self, updates: MetricUpdates) -> None: ...


async def apply(plan: Plan, sinks: Sinks) -> None:
    """Outputs, then table writes, then metrics (module docstring)."""
    if plan.sql_alongside:
        sql = asyncio.ensure_future(sinks.write_sql(plan.sql_conversations, plan.sql_windows))
        try:
            await _send_all(plan.sends, sinks)
        finally:
            await sql
    else:
        await _send_all(plan.sends, sinks)
        await sinks.write_sql(plan.sql_conversations, plan.sql_windows)
    for write in plan.writes:
        sinks.write_table(write)
    sinks.update_metrics(plan.metrics)


async def _send_all(sends: list[Send], sinks: Sinks) -> None:
    """Every record handed to the producer first (one round trip), then all acknowledged."""
    acks = [await sinks.send(send) for send in sends]
    await asyncio.gather(*acks)
