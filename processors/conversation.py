"""Per-conversation metrics (DESIGN.md §3) from an order-independent state.

The state is a join-semilattice: every field only grows (sets, per-key minima, a sticky
``ended`` flag), so applying the same events in any order, any number of times, gives the same
state and therefore the same metrics. That is what lets the Faust worker process at least once
(replays after a crash are harmless) and tolerate reordering without any buffering.

Per distinct event (by ``event_key``) the state keeps its earliest ``received_at``; for
``user_transcript`` and ``agent_response`` events also their upstream event id. Everything else
(counts per type, tool errors) is fixed by the event's first copy, since copies of one frame
carry the same payload.

The worker folds a batch and then reports and stores every conversation it touched, typically
one event each. So the metrics and the stored bytes are kept up to date as events arrive
rather than recomputed from all of a conversation's events: a call's thousandth event costs
what its first did (recomputing made the fold grow from 68 to 446 µs per event between
conversations of 10 and 500 events). The per-event maps are held as the packed arrays they
are stored as; the latency pairs, their sorted values and the first and last times are
indices over them, kept current by each event and rebuilt when a state is read back.

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
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Sequence
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
from processors.packed import CHUNK, PackedMap
from schemas.records import ConversationMetrics

_HEADER = struct.Struct("<I")
MAX_TRACKED = 20_000


def nearest_rank(sorted_values: Sequence[int], percent: int) -> int:
    """The nearest-rank percentile of ascending ``sorted_values`` (not empty)."""
    rank = max(1, -(-percent * len(sorted_values) // 100))
    return sorted_values[rank - 1]


class ConversationState:
    """Everything needed to compute one conversation's metrics, in any arrival order."""

    __slots__ = (
        "_first",
        "_fresh",
        "_last",
        "_latency",
        "_response_ids",
        "_response_times",
        "_sorted_latencies",
        "_user_ids",
        "_user_keys",
        "agent_id",
        "agents",
        "by_type",
        "conversation_id",
        "ended",
        "times",
        "tool_errors",
        "touched_at",
        "untracked",
        "untracked_span",
        "users",
    )

    def __init__(
        self,
        conversation_id: str,
        agent_id: str | None = None,
        ended: bool = False,
        by_type: dict[str, int] | None = None,
        tool_errors: int = 0,
        times: PackedMap | None = None,
        users: PackedMap | None = None,
        agents: PackedMap | None = None,
        untracked: int = 0,
        untracked_span: tuple[int, int] | None = None,
        touched_at: int | None = None,
    ) -> None:
        self.conversation_id = conversation_id
        self.agent_id = agent_id
        self.ended = ended
        self.by_type: dict[str, int] = {} if by_type is None else by_type
        self.tool_errors = tool_errors
        self.times = PackedMap() if times is None else times  # key -> earliest received_at
        self.users = PackedMap() if users is None else users  # key -> event id (user turns)
        self.agents = PackedMap() if agents is None else agents  # key -> event id (responses)
        self.untracked = untracked  # events counted beyond MAX_TRACKED, not de-duplicated
        self.untracked_span = untracked_span  # their earliest and latest received_at
        # the processor's clock when a batch last touched it: what state retention ages by
        self.touched_at = touched_at
        self._index()
        # A stored state was stored after its pairs went to the histogram (the stage hands
        # them out before it writes), so a state read back has none left to hand out.
        self._fresh.clear()

    def _index(self) -> None:
        """The indices over the stored fields, built in bulk (never stored)."""
        times = self.times.values()
        self._first: int | None = min(times, default=None)
        self._last: int | None = max(times, default=None)  # None with times: to recompute
        earliest: dict[int, int] = {}
        for key, eid in self.agents.items():
            at = self.times[key]
            if at < earliest.get(eid, at + 1):
                earliest[eid] = at
        ids = sorted(earliest)
        # response event ids ascending, each with the earliest time of a response with it
        self._response_ids = array("q", ids)
        self._response_times = array("q", [earliest[eid] for eid in ids])
        by_id = sorted((uid, key) for key, uid in self.users.items())
        # user turns ascending by event id: the ids and, at the same positions, their keys
        self._user_ids = array("q", [uid for uid, _ in by_id])
        self._user_keys = array("Q", [key for _, key in by_id])
        self._latency: dict[int, int] = {}  # user key -> latency (µs) of its pair
        self._sorted_latencies = array("q")  # the values of _latency, ascending
        self._fresh: set[int] = set()  # user keys paired since pairs were last handed out
        for uid, key in by_id:
            self._pair(key, uid)

    def apply(self, event: Event) -> bool:
        """Fold one event copy in; True when this was the first copy of its ``event_key``."""
        if event.agent_id is not None and (self.agent_id is None or event.agent_id < self.agent_id):
            self.agent_id = event.agent_id
        if event.ends_call:
            self.ended = True
        key = key_hash(event.event_key)
        at = event.received_at
        seen = self.times.get(key)
        if seen is not None:
            if at < seen:
                self._earlier(key, seen, at)
            return False
        self.by_type[event.type] = self.by_type.get(event.type, 0) + 1
        if event.is_error and event.type == TOOL_RESPONSE:
            self.tool_errors += 1
        if len(self.times) >= MAX_TRACKED:
            self.untracked += 1
            span = self.untracked_span
            self.untracked_span = (at, at) if span is None else (min(span[0], at), max(span[1], at))
            return True
        self.times.add(key, at)
        if self._first is None or at < self._first:
            self._first = at
        if (self._last is not None and at > self._last) or len(self.times) == 1:
            self._last = at
        if event.event_id is not None:
            if event.type == USER_TRANSCRIPT:
                self.users.add(key, event.event_id)
                self._user(key, event.event_id)
            elif event.type == AGENT_RESPONSE:
                self.agents.add(key, event.event_id)
                self._response(event.event_id, at)
        return True

    def _earlier(self, key: int, seen: int, at: int) -> None:
        """A later-arriving copy of a tracked event was received earlier than the first."""
        self.times.lower(key, at)
        if self._first is None or at < self._first:
            self._first = at
        if seen == self._last:
            self._last = None  # it may have been the only one that late: recompute when asked
        uid = self.users.get(key)
        if uid is not None:
            self._pair(key, uid)
        eid = self.agents.get(key)
        if eid is not None:
            self._response(eid, at)

    def _user(self, key: int, uid: int) -> None:
        i = bisect_right(self._user_ids, uid)
        self._user_ids.insert(i, uid)
        self._user_keys.insert(i, key)
        self._pair(key, uid)

    def _response(self, eid: int, at: int) -> None:
        """A response id seen first, or seen at an earlier time: re-pair the user turns whose
        pair it now is (ids from the next lower response id up to it)."""
        ids = self._response_ids
        i = bisect_left(ids, eid)
        if i < len(ids) and ids[i] == eid:
            if self._response_times[i] <= at:
                return
            self._response_times[i] = at
        else:
            ids.insert(i, eid)
            self._response_times.insert(i, at)
        user_ids = self._user_ids
        low = bisect_left(user_ids, ids[i - 1]) if i else 0
        high = bisect_left(user_ids, eid)
        for n in range(low, high):
            self._pair(self._user_keys[n], user_ids[n])

    def _pair(self, key: int, uid: int) -> None:
        """Set the latency of user turn ``key``: to the earliest response with the smallest
        event id above ``uid``."""
        ids = self._response_ids
        i = bisect_right(ids, uid)
        if i == len(ids):
            return  # no response after it yet: responses only ever add pairs
        latency = max(0, self._response_times[i] - self.times[key])
        old = self._latency.get(key)
        if old == latency:
            return
        values = self._sorted_latencies
        if old is not None:
            del values[bisect_left(values, old)]
        else:
            self._fresh.add(key)
        self._latency[key] = latency
        insort(values, latency)

    def unobserved(self) -> list[int]:
        """The latencies (µs) of pairs not handed out before, now marked observed: each user
        turn reaches the histogram once, whatever caches, lifecycle records or owners do."""
        fresh = self._fresh
        if not fresh:
            return []
        latency = self._latency
        out = [latency[key] for key in fresh]
        fresh.clear()
        return out

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
        return dict(self._latency)

    def metrics(self, updated_at: int) -> ConversationMetrics:
        """The ``ConversationMetrics`` record (Avro field names, microsecond timestamps)."""
        lat = self._sorted_latencies
        get = self.by_type.get
        first, last = self._span()
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
            "first_received_at": first,
            "last_received_at": last,
            "updated_at": updated_at,
        }

    def _span(self) -> tuple[int, int]:
        """The earliest and latest received_at of the events (0, 0 without any tracked)."""
        if self._first is None:
            return 0, 0
        if self._last is None:
            self._last = max(self.times.values())
        first, last = self._first, self._last
        if self.untracked_span is not None:
            first = min(first, self.untracked_span[0])
            last = max(last, self.untracked_span[1])
        return first, last

    def storage(self) -> list[tuple[bytes, bytes]]:
        """The table entries to write for this state: its chunks to store now (full or
        changed, :mod:`processors.packed`), then its head (:meth:`to_bytes`) under the
        conversation id. Written in this order, a stored head never names a missing chunk."""
        entries = [
            (chunk_key(self.conversation_id, letter, number), data)
            for letter, packed in zip(_MAPS, self._maps(), strict=True)
            for number, data in packed.take_chunks()
        ]
        entries.append((self.conversation_id.encode(), self.to_bytes()))
        return entries

    def _maps(self) -> tuple[PackedMap, PackedMap, PackedMap]:
        return self.times, self.users, self.agents

    def to_bytes(self) -> bytes:
        """The head: a JSON header, then each map's entries after its stored chunks as packed
        64-bit arrays (the whole state while :meth:`storage` has stored no chunk)."""
        maps = self._maps()
        header = orjson.dumps(
            {
                "c": self.conversation_id,
                "a": self.agent_id,
                "e": self.ended,
                "t": self.by_type,
                "x": self.tool_errors,
                "n": [len(m) for m in maps],
                "k": [m.sealed for m in maps],
                "u": self.untracked,
                "s": self.untracked_span,
                "w": self.touched_at,
            }
        )
        return b"".join((_HEADER.pack(len(header)), header, *(m.tail_bytes() for m in maps)))

    @classmethod
    def from_bytes(
        cls, data: bytes, read_chunk: Callable[[bytes], bytes | None] | None = None
    ) -> ConversationState:
        """The state of a stored head, its chunks read with ``read_chunk`` (a table's get)."""
        head, start = _header(data)
        cid = head["c"]
        maps: list[PackedMap] = []
        chunked = head.get("k", _NO_CHUNKS)
        for letter, count, sealed in zip(_MAPS, head["n"], chunked, strict=True):
            chunks = []
            for number in range(sealed // CHUNK):
                chunk = read_chunk(chunk_key(cid, letter, number)) if read_chunk else None
                if chunk is None:
                    raise ValueError(f"stored state of {cid!r} lacks its chunk {letter}{number}")
                chunks.append(chunk)
            packed, start = PackedMap.read(chunks, data, start, count - sealed)
            maps.append(packed)
        span = head.get("s")
        times, users, agents = maps
        return cls(
            cid,
            head["a"],
            head["e"],
            head["t"],
            head["x"],
            times,
            users,
            agents,
            head.get("u", 0),
            None if span is None else (span[0], span[1]),
            head.get("w"),
        )


_MAPS = "tua"  # times, users, agents: the letters of their chunk keys
_NO_CHUNKS = (0, 0, 0)  # states stored before chunks existed


def chunk_key(conversation_id: str, letter: str, number: int) -> bytes:
    """Table key of a chunk: reserved (a leading NUL, which conversation ids do not have)."""
    return b"\x00%s%d:%s" % (letter.encode(), number, conversation_id.encode())


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    (size,) = _HEADER.unpack_from(data)
    start = _HEADER.size + size
    head: dict[str, Any] = orjson.loads(data[_HEADER.size : start])
    return head, start


def stored_chunks(data: bytes) -> list[bytes]:
    """The table keys of a stored head's chunks (deleted with it)."""
    head, _ = _header(data)
    return [
        chunk_key(head["c"], letter, number)
        for letter, sealed in zip(_MAPS, head.get("k", _NO_CHUNKS), strict=True)
        for number in range(sealed // CHUNK)
    ]


def last_touched(data: bytes) -> int | None:
    """When a stored state was last touched, read from its header alone (state retention
    reads every stored state). A state stored before ``touched_at`` existed (and before
    chunks): the latest received_at of its events; None when it holds no event and no such
    time (nothing but a lifecycle record)."""
    head, start = _header(data)
    touched: int | None = head.get("w")
    if touched is not None:
        return touched
    count = head["n"][0] - head.get("k", _NO_CHUNKS)[0]
    times = array("q")
    times.frombytes(data[start + 8 * count : start + 16 * count])
    latest: int | None = max(times, default=None)
    span = head.get("s")
    if span is not None:
        latest = span[1] if latest is None else max(latest, span[1])
    return latest


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
