"""Avro primitives for reading the leading fields of a datum without decoding the rest.

Hot paths that need a few fields of a MonitorEvent (processors, rules engine) read them with
these and skip the payload union, whose full decode dominated their profiles. Both raise
``IndexError`` (or ``UnicodeDecodeError``) on bytes that end early; callers then fall back to
the full decode, which reports the problem properly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def read_long(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro ``long`` (zig-zag varint) at ``pos``: (value, next position)."""
    byte = data[pos]
    if byte < 0x80:  # -64..63, one byte
        return (byte >> 1) ^ -(byte & 1), pos + 1
    pos += 1
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def read_string(data: bytes, pos: int) -> tuple[str, int]:
    """An Avro ``string`` at ``pos``: (value, next position)."""
    n = data[pos]
    if n < 0x80 and not n & 1:  # a length under 64 (one varint byte): most ids and types
        end = pos + 1 + (n >> 1)
        if end > len(data):
            raise IndexError("string beyond the datum")
        return data[pos + 1 : end].decode(), end
    start, end = _string_span(data, pos)
    return data[start:end].decode(), end


def skip_string(data: bytes, pos: int) -> int:
    """The position after the Avro ``string`` at ``pos``, which is not decoded."""
    return _string_span(data, pos)[1]


def _string_span(data: bytes, pos: int) -> tuple[int, int]:
    size, pos = read_long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise IndexError("string beyond the datum")
    return pos, end


def read_optional(
    data: bytes, pos: int, read: Callable[[bytes, int], tuple[T, int]]
) -> tuple[T | None, int]:
    """A ``["null", T]`` union at ``pos``; another branch raises ``IndexError``."""
    branch = data[pos]  # the zig-zag varint of the branch index: 0x00 for 0, 0x02 for 1
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise IndexError(f"union branch byte {branch:#04x} where null or one type was expected")
    return read(data, pos + 1)


class LearntLayout:
    """The schema ids whose data has the current MonitorEvent layout, learnt from full decodes
    (``Serde.is_current``), so pinned and registry ids are read alike by the head readers."""

    __slots__ = ("headers",)

    def __init__(self) -> None:
        self.headers: set[bytes] = set()

    def learn(self, schema_id: int) -> None:
        """``schema_id`` is the current MonitorEvent schema."""
        self.headers.add(b"\x00" + schema_id.to_bytes(4, "big"))

    def knows(self, data: bytes) -> bool:
        """``data`` was written with a learnt schema id."""
        return data[:5] in self.headers


def read_event_identity(data: bytes) -> tuple[str, str, str | None, str, int]:
    """``event_key, conversation_id, agent_id, type`` of a MonitorEvent datum (after its 5-byte
    header) and the position after them: the leading fields of the current schema."""
    event_key, pos = read_string(data, 5)
    conversation_id, pos = read_string(data, pos)
    agent_id, pos = read_optional(data, pos, read_string)
    etype, pos = read_string(data, pos)
    return event_key, conversation_id, agent_id, etype, pos
