"""Per-agent tumbling windows over ``received_at`` with grace, idle closing and late events.

Faust's windowed tables cannot do this: they have no grace period, expire windows by wall
clock, and ``on_window_close`` gets a key, not the aggregate. So the bookkeeping is here, as a
plain value per agent that the worker stores in an ordinary table:

* the agent's event time is the largest ``received_at`` seen for it, advanced per event;
* ``closed_until`` is a window boundary: every window ending at or before it is final. It only
  moves forward: on each event whose time passes end + grace (``event_time``), or when the
  source progress (below) passes end + grace + idle timeout (``idle``);
* a window is reported once, when it becomes final, and never changes afterwards; an event for
  a window at or before ``closed_until`` is late: it is counted in ``late_events`` (kept apart
  from the window's counts) and handed back for ``convai.events.late``.

Idle closing must not outrun the conversation stage: a worker that restarts, or lags, forwards
old events long after the wall clock has passed their windows. So ticks are progress reports:
each worker says, for each source partition it owns and has forwarded up to its high-water
mark, "everything before my clock time T is forwarded" (:class:`SourceProgress`); an internal
partition closes idle windows only by the least of those times over every source partition.
A source partition whose owner is down, restarting or catching up holds idle closing back
until it has caught up, and its late-forwarded events still count in their windows.

The state is a fold over the agent's internal partition, message by message: events and ticks
carry their own times (a tick its sender's clock), so the same messages give
the same windows and the same record bytes whatever the batch boundaries, restarts or the wall
clock at processing time. ``emitted_at`` is derived from the window (the moment it became final
by the rules), not read from a clock. An event time more than ``max_future`` ahead of the time
its record was forwarded (a collector clock far in the future) is clamped to that bound, so one
such event cannot close every open window; the worker counts the clamped events.

Events reach this core already de-duplicated by ``event_key`` (the conversation state knows
first copies), but the worker forwards them at least once. Each carries its source partition
and offset, and offsets per source partition only grow, so ``last_offsets`` drops re-forwarded
copies without keeping any per-event state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, NamedTuple

import orjson

from processors.events import AGENT_RESPONSE, INTERRUPTION, TOOL_RESPONSE, USER_TRANSCRIPT
from schemas.records import AgentWindowMetrics

ClosedBy = Literal["event_time", "idle"]


class Outcome(Enum):
    COUNTED = "counted"
    LATE = "late"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """Window size, grace, idle timeout, how long final windows stay for late counts, and how
    far ahead of its forwarding time an event's time may lie (µs)."""

    size: int = 60_000_000
    grace: int = 10_000_000
    idle: int = 30_000_000
    retention: int = 600_000_000
    max_future: int = 300_000_000

    @classmethod
    def seconds(
        cls,
        size: float,
        grace: float,
        idle: float,
        retention: float = 600.0,
        max_future: float = 300.0,
    ) -> WindowConfig:
        return cls(*(round(s * 1_000_000) for s in (size, grace, idle, retention, max_future)))

    def clamp(self, event: WindowEvent, forwarded_at: int) -> WindowEvent:
        """``event`` with its time at most ``max_future`` past ``forwarded_at``."""
        bound = forwarded_at + self.max_future
        return event if event.received_at <= bound else event._replace(received_at=bound)


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
    closed_by: ClosedBy | None = None
    emitted_at: int | None = None

    def add(self, event: WindowEvent) -> None:
        self.by_type[event.type] = self.by_type.get(event.type, 0) + 1
        self.conversations.add(event.conversation_id)
        if event.is_error and event.type == TOOL_RESPONSE:
            self.tool_errors += 1

    def record(self, agent_id: str, start: int, size: int, now: int) -> AgentWindowMetrics:
        """The ``AgentWindowMetrics`` record (``emitted_at`` fixed once final, else ``now``)."""
        get = self.by_type.get
        return {
            "agent_id": agent_id,
            "window_start": start,
            "window_end": start + size,
            "events_by_type": dict(sorted(self.by_type.items())),  # bytes independent of order
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
    """All window state of one agent; ``pending`` holds the records of windows made final
    since the last :meth:`take_final` (not stored: the worker takes them before storing)."""

    agent_id: str
    event_time: int | None = None
    closed_until: int | None = None
    last_offsets: dict[int, int] = field(default_factory=dict)
    windows: dict[int, Window] = field(default_factory=dict)
    pending: list[AgentWindowMetrics] = field(default_factory=list)

    def accept(self, event: WindowEvent, config: WindowConfig) -> Outcome:
        """Count ``event`` in its window, or say it is late or a re-forwarded copy; then close
        the windows its time has passed."""
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
            self._close(_boundary(event.received_at - config.grace - 1, config.size), config)
        return Outcome.COUNTED

    def tick(self, now: int, config: WindowConfig) -> bool:
        """Close windows that ``now`` (the source progress, a wall-clock time) has passed by
        the idle timeout; True when one closed."""
        return self._close(_boundary(now - config.grace - config.idle - 1, config.size), config)

    def _close(self, bound: int, config: WindowConfig) -> bool:
        if self.closed_until is not None and bound <= self.closed_until:
            return False
        self.closed_until = bound
        closed = False
        for start in sorted(self.windows):
            window = self.windows[start]
            end = start + config.size
            if window.final or end > bound:
                continue
            by_event = self.event_time is not None and end + config.grace < self.event_time
            window.final = True
            window.closed_by = "event_time" if by_event else "idle"
            window.emitted_at = end + config.grace + (0 if by_event else config.idle)
            self.pending.append(window.record(self.agent_id, start, config.size, 0))
            closed = True
        return closed

    def take_final(self, config: WindowConfig) -> list[AgentWindowMetrics]:
        """Records of the windows made final since the last call (each window exactly once);
        drops final windows older than the retention."""
        final, self.pending = self.pending, []
        if self.closed_until is not None:
            horizon = self.closed_until - config.retention
            for start in [
                s for s, w in self.windows.items() if w.final and s + config.size <= horizon
            ]:
                del self.windows[start]
        return final

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


@dataclass(slots=True)
class SourceProgress:
    """Per source partition, the latest clock time before which its events were all forwarded
    (from ticks); one per internal partition, stored with its agents' states."""

    partitions: int = 0
    times: dict[int, int] = field(default_factory=dict)

    def report(self, partitions: int, times: Mapping[int, int]) -> int | None:
        """Fold in one tick (the sender's view of the source partition count and its times);
        the new low watermark when it moved forward, else None. Times only grow."""
        before = self.low()
        self.partitions = max(self.partitions, partitions)
        for partition, time_us in times.items():
            if time_us > self.times.get(partition, -1):
                self.times[partition] = time_us
        low = self.low()
        return low if low is not None and (before is None or low > before) else None

    def low(self) -> int | None:
        """The least time over every source partition; None while one has not reported."""
        if not self.partitions:
            return None
        try:
            return min(self.times[p] for p in range(self.partitions))
        except KeyError:
            return None

    def to_bytes(self) -> bytes:
        return orjson.dumps([self.partitions, [[p, t] for p, t in self.times.items()]])

    @classmethod
    def from_bytes(cls, data: bytes) -> SourceProgress:
        partitions, times = orjson.loads(data)
        return cls(partitions, {p: t for p, t in times})


def _boundary(time_us: int, size: int) -> int:
    """The largest window boundary at or below ``time_us``."""
    return time_us - time_us % size
