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


def _varlong(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro ``long`` (zig-zag varint) at ``pos``: (value, next position)."""
    byte = data[pos]
    pos += 1
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _string(data: bytes, pos: int) -> tuple[str, int]:
    size, pos = _varlong(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise IndexError("string beyond the datum")
    return data[pos:end].decode(), end


class HeadReader:
    """Reads an :class:`Event` from the leading fields of a MonitorEvent datum, skipping the rest.

    Measured (bench/process.py, py-spy): the full Avro decode was the largest single cost of
    the processor, most of it spent building ``raw`` and ``payload``, which the metrics need
    only for ``agent_tool_response``. The first six fields of the current MonitorEvent schema
    (``event_key``, ``conversation_id``, ``agent_id``, ``type``, ``upstream_event_id``,
    ``received_at``) are all the other types need. :meth:`read` returns ``None`` whenever
    this does not apply (another schema id, a tool response, bytes that do not parse), and
    the caller decodes fully, which also reports malformed records.
    """

    __slots__ = ("header",)

    def __init__(self, schema_id: int) -> None:
        self.header = b"\x00" + schema_id.to_bytes(4, "big")

    def read(self, data: bytes | None) -> Event | None:
        if not data or data[:5] != self.header:  # None: a tombstone of a compacted topic
            return None
        try:
            event_key, pos = _string(data, 5)
            conversation_id, pos = _string(data, pos)
            branch, pos = _varlong(data, pos)
            agent_id: str | None = None
            if branch == 1:
                agent_id, pos = _string(data, pos)
            elif branch != 0:
                return None
            etype, pos = _string(data, pos)
            if etype == TOOL_RESPONSE:
                return None  # is_error and tool_name are in the payload
            branch, pos = _varlong(data, pos)
            event_id: int | None = None
            if branch == 1:
                event_id, pos = _varlong(data, pos)
            elif branch != 0:
                return None
            received_at, pos = _varlong(data, pos)
        except (IndexError, UnicodeDecodeError):
            return None
        return Event(event_key, conversation_id, agent_id, etype, event_id, received_at)
