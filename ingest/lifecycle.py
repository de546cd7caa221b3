"""ConversationLifecycle records the collectors write and read (sans-I/O).

Besides discovered / monitoring / gap / ended, a collector that gives a conversation up (its
partition moves, or it shuts down) writes a ``monitoring`` record whose detail says
``released`` and carries the digests of the frames it published: the next owner seeds its
replay filter with them, so a hand-over publishes every frame once instead of re-publishing
the whole 100-frame replay.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from ingest.replay import DIGEST_SIZE
from schemas.avro_schemas import now_micros

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
    conversation_id: str, agent_id: str | None, collector_id: str, history: list[bytes]
) -> dict[str, Any]:
    """The hand-over record: what the next owner must not publish again."""
    packed = base64.b64encode(b"".join(history)).decode("ascii")
    return record(
        conversation_id,
        "monitoring",
        agent_id=agent_id,
        collector_id=collector_id,
        detail={"released": True, "history": packed},
    )


@dataclass(frozen=True, slots=True)
class Observed:
    """What a lifecycle record read from the topic tells an owner."""

    conversation_id: str
    agent_id: str | None
    live: bool
    ended: bool
    history: list[bytes] | None  # set on a hand-over record


def observe(value: dict[str, Any]) -> Observed:
    """Interpret one decoded ConversationLifecycle record; never raises on odd details."""
    state = value.get("state")
    history = None
    detail = value.get("detail")
    if state == "monitoring" and isinstance(detail, str) and '"released"' in detail:
        history = _history(detail)
    return Observed(
        conversation_id=str(value["conversation_id"]),
        agent_id=value.get("agent_id"),
        live=state in LIVE_STATES,
        ended=state == "ended",
        history=history,
    )


def _history(detail: str) -> list[bytes] | None:
    try:
        packed = orjson.loads(detail).get("history")
        raw = base64.b64decode(packed, validate=True)
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return None
    if len(raw) % DIGEST_SIZE:
        return None
    return [raw[i : i + DIGEST_SIZE] for i in range(0, len(raw), DIGEST_SIZE)]
