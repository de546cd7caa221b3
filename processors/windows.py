"""Per-agent tumbling windows over ``received_at`` with grace, idle closing and late events.

Faust's windowed tables cannot do this: they have no grace period, expire windows by wall
clock, and ``on_window_close`` gets a key, not the aggregate. So the bookkeeping is here, as a
plain value per agent that the worker stores in an ordinary table:

* the agent's event time is the largest ``received_at`` seen for it;
* ``closed_until`` is a window boundary: every window ending at or before it is final. It only
  moves forward, when event time passes end + grace (``event_time``) or wall clock passes
  end + grace + idle timeout (``idle``);
* a window is reported once, when it becomes final, and never changes afterwards; an event for
  a window at or before ``closed_until`` is late: it is counted in ``late_events`` (kept apart
  from the window's counts) and handed back for ``convai.events.late``.

Events reach this core already de-duplicated by ``event_key`` (the conversation state knows
first copies), but the worker forwards them at least once. Each carries its source partition
and offset, and offsets per source partition only grow, so ``last_offsets`` drops re-forwarded
copies without keeping any per-event state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

import orjson

from processors.events import AGENT_RESPONSE, INTERRUPTION, TOOL_RESPONSE, USER_TRANSCRIPT


class Outcome(Enum):
    COUNTED = "counted"
    LATE = "late"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """Window size, grace, idle timeout and how long final windows stay for late counts (µs)."""

    size: int = 60_000_000
    grace: int = 10_000_000
    idle: int = 30_000_000
    retention: int = 600_000_000

    @classmethod
    def seconds(
        cls, size: float, grace: float, idle: float, retention: float = 600.0
    ) -> WindowConfig:
        return cls(*(round(s * 1_000_000) for s in (size, grace, idle, retention)))


class WindowEvent(NamedTuple):
    """A first-seen event as forwarded to the agent's partition."""

    source_partition: int
    offset: int
    conversation_id: str
    type: str
    received_at: int
    is_error: bool


@dataclass(slots=True)
class Window:
    """Counts of one window; frozen (apart from ``late``) once ``final``."""

    by_type: dict[str, int] = field(default_factory=dict)
    conversations: set[str] = field(default_factory=set)
    tool_errors: int = 0
    late: int = 0
    final: bool = False
    closed_by: str | None = None
    emitted_at: int | None = None

    def add(self, event: WindowEvent) -> None:
        self.by_type[event.type] = self.by_type.get(event.type, 0) + 1
        self.conversations.add(event.conversation_id)
        if event.is_error and event.type == TOOL_RESPONSE:
            self.tool_errors += 1

    def record(self, agent_id: str, start: int, size: int, now: int) -> dict[str, Any]:
        """The ``AgentWindowMetrics`` record (``emitted_at`` fixed once final)."""
        get = self.by_type.get
        return {
            "agent_id": agent_id,
            "window_start": start,
            "window_end": start + size,
            "events_by_type": dict(self.by_type),
            "events_total": sum(self.by_type.values()),
            "conversations": len(self.conversations),
            "user_turns": get(USER_TRANSCRIPT, 0),
            "agent_turns": get(AGENT_RESPONSE, 0),
            "interruptions": get(INTERRUPTION, 0),
            "tool_errors": self.tool_errors,
            "late_events": self.late,
            "final": self.final,
            "closed_by": self.closed_by,
            "emitted_at": self.emitted_at if self.emitted_at is not None else now,
        }


@dataclass(slots=True)
class AgentWindows:
    """All window state of one agent."""

    agent_id: str
    event_time: int | None = None
    closed_until: int | None = None
    last_offsets: dict[int, int] = field(default_factory=dict)
    windows: dict[int, Window] = field(default_factory=dict)

    def accept(self, event: WindowEvent, config: WindowConfig) -> Outcome:
        """Count ``event`` in its window, or say it is late or a re-forwarded copy."""
        if event.offset <= self.last_offsets.get(event.source_partition, -1):
            return Outcome.DUPLICATE
        self.last_offsets[event.source_partition] = event.offset
        start = event.received_at - event.received_at % config.size
        if self.closed_until is not None and start + config.size <= self.closed_until:
            window = self.windows.get(start)
            if window is not None:
                window.late += 1
            return Outcome.LATE
        self.windows.setdefault(start, Window()).add(event)
        if self.event_time is None or event.received_at > self.event_time:
            self.event_time = event.received_at
        return Outcome.COUNTED

    def advance(self, now: int, config: WindowConfig) -> list[int]:
        """Finalise windows whose time has come; returns their starts (each exactly once)."""
        by_event = None
        if self.event_time is not None:
            by_event = _boundary(self.event_time - config.grace - 1, config.size)
        by_idle = _boundary(now - config.grace - config.idle - 1, config.size)
        bound = by_idle if by_event is None else max(by_event, by_idle)
        if self.closed_until is None or bound > self.closed_until:
            self.closed_until = bound
        closed: list[int] = []
        for start in sorted(self.windows):
            window = self.windows[start]
            if window.final or start + config.size > self.closed_until:
                continue
            window.final = True
            event_closed = by_event is not None and start + config.size <= by_event
            window.closed_by = "event_time" if event_closed else "idle"
            window.emitted_at = now
            closed.append(start)
        horizon = self.closed_until - config.retention
        just_closed = set(closed)  # kept until the caller has emitted them, pruned next time
        for start in [
            s
            for s, w in self.windows.items()
            if w.final and s + config.size <= horizon and s not in just_closed
        ]:
            del self.windows[start]
        return closed

    def open_windows(self) -> list[int]:
        return sorted(s for s, w in self.windows.items() if not w.final)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "a": self.agent_id,
                "t": self.event_time,
                "c": self.closed_until,
                "o": [[p, o] for p, o in self.last_offsets.items()],
                "w": [
                    [
                        s,
                        w.by_type,
                        sorted(w.conversations),
                        w.tool_errors,
                        w.late,
                        w.final,
                        w.closed_by,
                        w.emitted_at,
                    ]
                    for s, w in self.windows.items()
                ],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AgentWindows:
        d = orjson.loads(data)
        windows = {w[0]: Window(w[1], set(w[2]), w[3], w[4], w[5], w[6], w[7]) for w in d["w"]}
        return cls(d["a"], d["t"], d["c"], {p: o for p, o in d["o"]}, windows)


def _boundary(time_us: int, size: int) -> int:
    """The largest window boundary at or below ``time_us``."""
    return time_us - time_us % size
