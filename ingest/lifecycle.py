"""ConversationLifecycle records the collectors write and read (sans-I/O).

Besides discovered / monitoring / gap / ended, a collector that gives a conversation up (its
partition moves, or it shuts down) writes a ``monitoring`` record whose detail says
``released`` and carries the digests of every frame it published: the next owner seeds its
replay filter with them, so a hand-over publishes every frame once instead of re-publishing
the whole 100-frame replay. While monitoring, a collector also writes ``checkpoint`` records
(the digests of frames acknowledged since the previous one, and where they start), so that a
new owner after a crash, which gets no hand-over, still knows what was published up to the
last checkpoint and computes the same occurrence counts (and event keys).

Both carry ``offset``: the offset of ``convai.monitor.events`` (the conversation's partition)
below which every record of the conversation is in the history. A checkpoint lags the last
frames published, so a new owner reads the conversation's records from that offset on
(:mod:`ingest.recovery`) and knows everything that was published, not only what was
checkpointed. Before a conversation's first checkpoint, the ``monitoring`` record that says a
collector started reading it tells the new owner when to start reading (its ``at``).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from ingest.replay import DIGEST_SIZE
from schemas.clock import now_micros

LIVE_STATES = frozenset({"announced", "discovered", "started", "monitoring"})


def record(
    conversation_id: str,
    state: str,
    *,
    agent_id: str | None = None,
    source: str = "collector",
    collector_id: str | None = None,
    detail: dict[str, Any] | None = None,
    status: str | None = None,
    at: int | None = None,
) -> dict[str, Any]:
    """One ConversationLifecycle value; ``detail`` becomes JSON text."""
    return {
        "conversation_id": conversation_id,
        "agent_id": agent_id,
        "state": state,
        "at": now_micros() if at is None else at,
        "source": source,
        "collector_id": collector_id,
        "detail": None if detail is None else orjson.dumps(detail).decode(),
        "status": status,
    }


def released(
    conversation_id: str,
    agent_id: str | None,
    collector_id: str,
    history: bytes,
    offset: int | None,
    lasts: list[int] | None = None,
) -> dict[str, Any]:
    """The hand-over record: what the next owner must not publish again."""
    detail = {"released": True, "offset": offset, "lasts": lasts or []}
    return _with_history(conversation_id, agent_id, collector_id, detail, history)


def checkpoint(
    conversation_id: str,
    agent_id: str | None,
    collector_id: str,
    start: int,
    history: bytes,
    offset: int | None,
    lasts: list[int] | None = None,
) -> dict[str, Any]:
    """Digests of the frames ``start``, ``start + 1``... acknowledged since the last checkpoint,
    the events offset they reach, and which of those frames ended a connection."""
    detail = {"checkpoint": True, "from": start, "offset": offset, "lasts": lasts or []}
    return _with_history(conversation_id, agent_id, collector_id, detail, history)


def _with_history(
    conversation_id: str,
    agent_id: str | None,
    collector_id: str,
    detail: dict[str, Any],
    history: bytes,
) -> dict[str, Any]:
    packed = base64.b64encode(history).decode("ascii")
    return record(
        conversation_id,
        "monitoring",
        agent_id=agent_id,
        collector_id=collector_id,
        detail={**detail, "history": packed},
    )


@dataclass(frozen=True, slots=True)
class Observed:
    """What a lifecycle record read from the topic tells an owner."""

    conversation_id: str
    agent_id: str | None
    live: bool
    ended: bool
    history: bytes | None = None  # set on a hand-over or checkpoint record
    history_from: int = 0  # the frame the history starts at (0 for a hand-over)
    offset: int | None = None  # events offset the history reaches (hand-over or checkpoint)
    reading_since: int | None = None  # a collector started reading it: the record's ``at``
    lasts: tuple[int, ...] = ()  # frames of the history that ended a connection (absolute)


def observe(value: dict[str, Any]) -> Observed:
    """Interpret one decoded ConversationLifecycle record; never raises on odd details."""
    state = value.get("state")
    history: tuple[bytes, int, int | None, tuple[int, ...]] | None = None
    detail = value.get("detail")
    if state == "monitoring" and isinstance(detail, str) and '"history"' in detail:
        history = _history(detail)
    reading = state == "monitoring" and detail is None and value.get("collector_id") is not None
    return Observed(
        conversation_id=str(value["conversation_id"]),
        agent_id=value.get("agent_id"),
        live=state in LIVE_STATES,
        ended=state == "ended",
        history=None if history is None else history[0],
        history_from=0 if history is None else history[1],
        offset=None if history is None else history[2],
        reading_since=value.get("at") if reading else None,
        lasts=() if history is None else history[3],
    )


def _history(detail: str) -> tuple[bytes, int, int | None, tuple[int, ...]] | None:
    """Digests, first frame, events offset and connection ends of a hand-over or checkpoint
    detail. A record written before offsets were recorded has none: the next owner then reads
    nothing back; one written before connection ends were recorded has none either."""
    try:
        obj = orjson.loads(detail)
        raw = base64.b64decode(obj["history"], validate=True)
        start = int(obj.get("from", 0))
        offset = obj.get("offset")
        offset = None if offset is None else int(offset)
        lasts = tuple(int(p) for p in obj.get("lasts") or ())
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError, KeyError):
        return None
    if len(raw) % DIGEST_SIZE or start < 0 or (offset is not None and offset < 0):
        return None
    end = start + len(raw) // DIGEST_SIZE
    return raw, start, offset, tuple(p for p in lasts if start <= p < end)
