"""The few fields of a MonitorEvent that the metrics need, pulled out once per event.

Decoded records are large dicts (``raw``, typed payload); the state machines only ever look at
these fields, so extracting them once keeps the cores small and the property tests simple.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

USER_TRANSCRIPT = "user_transcript"
AGENT_RESPONSE = "agent_response"
INTERRUPTION = "interruption"
CORRECTION = "agent_response_correction"
TOOL_RESPONSE = "agent_tool_response"
END_CALL = "end_call"


class Event(NamedTuple):
    """One MonitorEvent as the metric cores see it; ``received_at`` is epoch microseconds."""

    event_key: str
    conversation_id: str
    agent_id: str | None
    type: str
    event_id: int | None
    received_at: int
    is_error: bool = False
    ends_call: bool = False


def key_hash(event_key: str) -> int:
    """A 64-bit digest of ``event_key``: state keeps 8 bytes per event instead of the string.

    blake2b is stable across processes (unlike ``hash``), so a restored state still matches.
    """
    return int.from_bytes(hashlib.blake2b(event_key.encode(), digest_size=8).digest(), "little")


def from_record(record: Mapping[str, Any]) -> Event:
    """The :class:`Event` of a decoded ``MonitorEvent`` record."""
    etype: str = record["type"]
    is_error = ends_call = False
    if etype == TOOL_RESPONSE:
        fields = record["payload"][1]
        is_error = bool(fields.get("is_error", False))
        ends_call = fields.get("tool_name") == END_CALL
    return Event(
        record["event_key"],
        record["conversation_id"],
        record["agent_id"],
        etype,
        record["upstream_event_id"],
        record["received_at"],
        is_error,
        ends_call,
    )
