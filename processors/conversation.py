"""Per-conversation metrics (DESIGN.md §3) from an order-independent state.

The state is a join-semilattice: every field only grows (sets, per-key minima, a sticky
``ended`` flag), so applying the same events in any order, any number of times, gives the same
state and therefore the same metrics. That is what lets the Faust worker process at least once
(replays after a crash are harmless) and tolerate reordering without any buffering.

Per distinct event (by ``event_key``) the state keeps its earliest ``received_at``; for
``user_transcript`` and ``agent_response`` events also their upstream event id. Everything else
(counts per type, tool errors) is fixed by the event's first copy, since copies of one frame
carry the same payload.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from processors.events import (
    AGENT_RESPONSE,
    CORRECTION,
    INTERRUPTION,
    TOOL_RESPONSE,
    USER_TRANSCRIPT,
    Event,
    key_hash,
)

_HEADER = struct.Struct("<I")


def nearest_rank(sorted_values: list[int], percent: int) -> int:
    """The nearest-rank percentile of ascending ``sorted_values`` (not empty)."""
    rank = max(1, -(-percent * len(sorted_values) // 100))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class ConversationState:
    """Everything needed to compute one conversation's metrics, in any arrival order."""

    conversation_id: str
    agent_id: str | None = None
    ended: bool = False
    by_type: dict[str, int] = field(default_factory=dict)
    tool_errors: int = 0
    times: dict[int, int] = field(default_factory=dict)  # key hash -> earliest received_at
    users: dict[int, int] = field(default_factory=dict)  # key hash -> event id (user_transcript)
    agents: dict[int, int] = field(default_factory=dict)  # key hash -> event id (agent_response)

    def apply(self, event: Event) -> bool:
        """Fold one event copy in; True when this was the first copy of its ``event_key``."""
        if event.agent_id is not None and (self.agent_id is None or event.agent_id < self.agent_id):
            self.agent_id = event.agent_id
        if event.ends_call:
            self.ended = True
        key = key_hash(event.event_key)
        seen = self.times.get(key)
        if seen is not None:
            if event.received_at < seen:
                self.times[key] = event.received_at
            return False
        self.times[key] = event.received_at
        self.by_type[event.type] = self.by_type.get(event.type, 0) + 1
        if event.event_id is not None:
            if event.type == USER_TRANSCRIPT:
                self.users[key] = event.event_id
            elif event.type == AGENT_RESPONSE:
                self.agents[key] = event.event_id
        if event.is_error and event.type == TOOL_RESPONSE:
            self.tool_errors += 1
        return True

    def end(self, agent_id: str | None = None) -> None:
        """A lifecycle ``ended`` record (or end_call) was observed."""
        self.ended = True
        if agent_id is not None and (self.agent_id is None or agent_id < self.agent_id):
            self.agent_id = agent_id

    def latencies(self) -> dict[int, int]:
        """Response latency in µs per paired user_transcript (key hash -> latency).

        Each user_transcript with event id u pairs with the agent_response of the smallest event
        id above u; several copies or responses with that id count from the earliest.
        """
        first_response: dict[int, int] = {}
        for key, eid in self.agents.items():
            at = self.times[key]
            if at < first_response.get(eid, at + 1):
                first_response[eid] = at
        ids = sorted(first_response)
        out: dict[int, int] = {}
        for key, uid in self.users.items():
            i = bisect_right(ids, uid)
            if i < len(ids):
                out[key] = max(0, first_response[ids[i]] - self.times[key])
        return out

    def metrics(self, updated_at: int, latencies: dict[int, int] | None = None) -> dict[str, Any]:
        """The ``ConversationMetrics`` record (Avro field names, microsecond timestamps)."""
        lat = sorted((self.latencies() if latencies is None else latencies).values())
        get = self.by_type.get
        return {
            "conversation_id": self.conversation_id,
            "agent_id": self.agent_id,
            "status": "ended" if self.ended else "active",
            "events_by_type": dict(self.by_type),
            "events_total": len(self.times),
            "user_turns": get(USER_TRANSCRIPT, 0),
            "agent_turns": get(AGENT_RESPONSE, 0),
            "interruptions": get(INTERRUPTION, 0),
            "corrections": get(CORRECTION, 0),
            "tool_calls": get(TOOL_RESPONSE, 0),
            "tool_errors": self.tool_errors,
            "latency_pairs": len(lat),
            "latency_p50_ms": nearest_rank(lat, 50) / 1000.0 if lat else None,
            "latency_p95_ms": nearest_rank(lat, 95) / 1000.0 if lat else None,
            "first_received_at": min(self.times.values()) if self.times else 0,
            "last_received_at": max(self.times.values()) if self.times else 0,
            "updated_at": updated_at,
        }

    def to_bytes(self) -> bytes:
        """Compact table value: a JSON header, then the per-event maps as packed 64-bit arrays."""
        header = orjson.dumps(
            {
                "c": self.conversation_id,
                "a": self.agent_id,
                "e": self.ended,
                "t": self.by_type,
                "x": self.tool_errors,
                "n": [len(self.times), len(self.users), len(self.agents)],
            }
        )
        parts = [_HEADER.pack(len(header)), header]
        for mapping in (self.times, self.users, self.agents):
            parts.append(array("Q", mapping.keys()).tobytes())
            parts.append(array("q", mapping.values()).tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ConversationState:
        (size,) = _HEADER.unpack_from(data)
        start = _HEADER.size + size
        head = orjson.loads(data[_HEADER.size : start])
        maps: list[dict[int, int]] = []
        for count in head["n"]:
            keys, values = array("Q"), array("q")
            keys.frombytes(data[start : start + 8 * count])
            start += 8 * count
            values.frombytes(data[start : start + 8 * count])
            start += 8 * count
            maps.append(dict(zip(keys, values, strict=True)))
        return cls(head["c"], head["a"], head["e"], head["t"], head["x"], *maps)


def compute(
    conversation_id: str, events: Iterable[Event], ended: bool = False
) -> ConversationState:
    """Fold ``events`` into a fresh state (tests and one-off recomputation)."""
    state = ConversationState(conversation_id)
    for event in events:
        state.apply(event)
    if ended:
        state.end()
    return state
