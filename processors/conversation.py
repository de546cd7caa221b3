"""Per-conversation metrics (DESIGN.md §3) from an order-independent state.

The state is a join-semilattice: every field only grows (sets, per-key minima, a sticky
``ended`` flag), so applying the same events in any order, any number of times, gives the same
state and therefore the same metrics. That is what lets the Faust worker process at least once
(replays after a crash are harmless) and tolerate reordering without any buffering.

Per distinct event (by ``event_key``) the state keeps its earliest ``received_at``; for
``user_transcript`` and ``agent_response`` events also their upstream event id. Everything else
(counts per type, tool errors) is fixed by the event's first copy, since copies of one frame
carry the same payload.

The state is bounded: it tracks at most ``MAX_TRACKED`` distinct events (16 bytes each, plus
8 per user turn for latency pairs and 8 per observed pair), so a stored state stays well under
a producer's 1 MB record limit however long the conversation runs. A capped conversation (more
distinct events than that) keeps counting: each further event counts in ``events_by_type``,
the turn counts and ``events_total`` and moves ``first/last_received_at``, but it is no longer
de-duplicated (a second copy of it counts again) and takes no part in latency pairs, so the
latency figures describe the first ``MAX_TRACKED`` events by arrival. ``untracked`` says how
many events were counted that way.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field

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
from schemas.records import ConversationMetrics

_HEADER = struct.Struct("<I")
MAX_TRACKED = 20_000


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
    observed: set[int] = field(default_factory=set)  # user keys whose latency went to Prometheus
    untracked: int = 0  # events counted beyond MAX_TRACKED, without de-duplication
    untracked_span: tuple[int, int] | None = None  # their earliest and latest received_at

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
        self.by_type[event.type] = self.by_type.get(event.type, 0) + 1
        if event.is_error and event.type == TOOL_RESPONSE:
            self.tool_errors += 1
        at = event.received_at
        if len(self.times) >= MAX_TRACKED:
            self.untracked += 1
            span = self.untracked_span
            self.untracked_span = (at, at) if span is None else (min(span[0], at), max(span[1], at))
            return True
        self.times[key] = at
        if event.event_id is not None:
            if event.type == USER_TRANSCRIPT:
                self.users[key] = event.event_id
            elif event.type == AGENT_RESPONSE:
                self.agents[key] = event.event_id
        return True

    def unobserved(self, latencies: dict[int, int]) -> list[int]:
        """The latencies (µs) of pairs not handed out before, now marked observed: each user
        turn reaches the histogram once, whatever caches, lifecycle records or owners do."""
        observed = self.observed
        fresh = [micros for key, micros in latencies.items() if key not in observed]
        if fresh:
            observed.update(latencies)
        return fresh

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

    def metrics(
        self, updated_at: int, latencies: dict[int, int] | None = None
    ) -> ConversationMetrics:
        """The ``ConversationMetrics`` record (Avro field names, microsecond timestamps)."""
        lat = sorted((self.latencies() if latencies is None else latencies).values())
        get = self.by_type.get
        return {
            "conversation_id": self.conversation_id,
            "agent_id": self.agent_id,
            "status": "ended" if self.ended else "active",
            "events_by_type": dict(self.by_type),
            "events_total": len(self.times) + self.untracked,
            "user_turns": get(USER_TRANSCRIPT, 0),
            "agent_turns": get(AGENT_RESPONSE, 0),
            "interruptions": get(INTERRUPTION, 0),
            "corrections": get(CORRECTION, 0),
            "tool_calls": get(TOOL_RESPONSE, 0),
            "tool_errors": self.tool_errors,
            "latency_pairs": len(lat),
            "latency_p50_ms": nearest_rank(lat, 50) / 1000.0 if lat else None,
            "latency_p95_ms": nearest_rank(lat, 95) / 1000.0 if lat else None,
            "first_received_at": min(self._times()) if self.times else 0,
            "last_received_at": max(self._times()) if self.times else 0,
            "updated_at": updated_at,
        }

    def _times(self) -> Iterable[int]:
        yield from self.times.values()
        if self.untracked_span is not None:
            yield from self.untracked_span

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
                "o": len(self.observed),
                "u": self.untracked,
                "s": self.untracked_span,
            }
        )
        parts = [_HEADER.pack(len(header)), header]
        for mapping in (self.times, self.users, self.agents):
            parts.append(array("Q", mapping.keys()).tobytes())
            parts.append(array("q", mapping.values()).tobytes())
        parts.append(array("Q", self.observed).tobytes())
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
        observed = array("Q")
        observed.frombytes(data[start : start + 8 * head.get("o", 0)])
        span = head.get("s")
        times, users, agents = maps
        return cls(
            head["c"],
            head["a"],
            head["e"],
            head["t"],
            head["x"],
            times,
            users,
            agents,
            set(observed),
            head.get("u", 0),
            None if span is None else (span[0], span[1]),
        )


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
