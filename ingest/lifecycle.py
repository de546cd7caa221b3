"""ConversationLifecycle records the collectors write and read (sans-I/O).

Besides discovered / monitoring / gap / ended, a collector that gives a conversation up (its
partition moves, or it shuts down) writes a ``monitoring`` record whose detail says
``released`` and carries the digests of every frame it published: the next owner seeds its
replay filter with them, so a hand-over publishes every frame once instead of re-publishing
the whole 100-frame replay. While monitoring, a collector also writes ``checkpoint`` records
(the digests of frames acknowledged since the previous one, and where they start), so that a
new owner after a crash, which gets no hand-over, still knows what was published up to the
last checkpoint and computes the same occurrence counts (and event keys).
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
    conversation_id: str, agent_id: str | None, collector_id: str, history: bytes
) -> dict[str, Any]:
    """The hand-over record: what the next owner must not publish again."""
    return _with_history(conversation_id, agent_id, collector_id, {"released": True}, history)


def checkpoint(
    conversation_id: str, agent_id: str | None, collector_id: str, start: int, history: bytes
) -> dict[str, Any]:
    """Digests of the frames ``start``, ``start + 1``... acknowledged since the last checkpoint."""
    detail = {"checkpoint": True, "from": start}
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


def observe(value: dict[str, Any]) -> Observed:
    """Interpret one decoded ConversationLifecycle record; never raises on odd details."""
    state = value.get("state")
    history: tuple[bytes, int] | None = None
    detail = value.get("detail")
    if state == "monitoring" and isinstance(detail, str) and '"history"' in detail:
        history = _history(detail)
    return Observed(
        conversation_id=str(value["conversation_id"]),
        agent_id=value.get("agent_id"),
        live=state in LIVE_STATES,
        ended=state == "ended",
        history=None if history is None else history[0],
        history_from=0 if history is None else history[1],
    )


def _history(detail: str) -> tuple[bytes, int] | None:
    try:
        obj = orjson.loads(detail)
        raw = base64.b64decode(obj["history"], validate=True)
        start = int(obj.get("from", 0))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError, KeyError):
        return None
    if len(raw) % DIGEST_SIZE or start < 0:
        return None
    return raw, start
