"""The few fields of a MonitorEvent that the metrics need, pulled out once per event.

Decoded records are large dicts (``raw``, typed payload); the state machines only ever look at
these fields, so extracting them once keeps the cores small and the property tests simple.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from schemas.avro_head import LearntLayout, read_event_identity, read_long, read_optional
from schemas.event_types import (
    AGENT_RESPONSE,
    CORRECTION,
    END_CALL,
    INTERRUPTION,
    TOOL_RESPONSE,
    USER_TRANSCRIPT,
)

__all__ = [
    "AGENT_RESPONSE",
    "CORRECTION",
    "END_CALL",
    "INTERRUPTION",
    "TOOL_RESPONSE",
    "USER_TRANSCRIPT",
]


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


class HeadReader(LearntLayout):
    """Reads an :class:`Event` from the leading fields of a MonitorEvent datum, skipping the rest.

    Measured (bench/process.py, py-spy): the full Avro decode was the largest single cost of
    the processor, most of it spent building ``raw`` and ``payload``, which the metrics need
    only for ``agent_tool_response``. The first six fields of the current MonitorEvent schema
    (``event_key``, ``conversation_id``, ``agent_id``, ``type``, ``upstream_event_id``,
    ``received_at``) are all the other types need. Which schema ids have that layout is
    learnt (:meth:`learn`) from full decodes, so pinned and registry ids work alike.
    :meth:`read` returns ``None`` whenever this does not apply (an id not learnt, a tool
    response, bytes that do not parse), and the caller decodes fully, which also reports
    malformed records.
    """

    __slots__ = ()

    def read(self, data: bytes | None) -> Event | None:
        if not data or not self.knows(data):  # None: a tombstone of a compacted topic
            return None
        try:
            event_key, conversation_id, agent_id, etype, pos = read_event_identity(data)
            if etype == TOOL_RESPONSE:
                return None  # is_error and tool_name are in the payload
            event_id, pos = read_optional(data, pos, read_long)
            received_at, pos = read_long(data, pos)
        except (IndexError, UnicodeDecodeError):
            return None
        return Event(event_key, conversation_id, agent_id, etype, event_id, received_at)
