"""The internal record that carries first-seen events from conversation to agent partitions.

``convai.monitor.events`` is keyed by conversation, but windows are per agent, so events are
re-keyed by agent. One record holds every first-seen event of one agent from one source batch:
a single Kafka record per agent and batch instead of one per event, which keeps Faust's
per-message cost off the hot path. The original MonitorEvent bytes travel along, so a late
event goes to ``convai.events.late`` unchanged without being decoded again. ``sent_at`` (the
forwarding worker's clock) is what an event's time is bounded against, kept in the record so
a replay bounds it the same way.

Ticks (records without a key) carry a worker's progress report instead: the source topic's
partition count and, per source partition it has forwarded up to the high-water mark, its
clock time (:class:`processors.windows.SourceProgress`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from processors.windows import WindowEvent

_SCHEMA = parse_schema(
    {
        "type": "record",
        "name": "AgentBatch",
        "namespace": "convostream.internal",
        "fields": [
            {"name": "agent_id", "type": "string"},
            {"name": "source_partition", "type": "int"},
            {"name": "sent_at", "type": "long"},
            {
                "name": "events",
                "type": {
                    "type": "array",
                    "items": {
                        "type": "record",
                        "name": "AgentEvent",
                        "fields": [
                            {"name": "offset", "type": "long"},
                            {"name": "conversation_id", "type": "string"},
                            {"name": "type", "type": "string"},
                            {"name": "received_at", "type": "long"},
                            {"name": "is_error", "type": "boolean"},
                            {"name": "value", "type": "bytes"},
                        ],
                    },
                },
            },
        ],
    }
)

Forwarded = tuple[WindowEvent, bytes]  # the event and its original MonitorEvent bytes


def encode(agent_id: str, source_partition: int, sent_at: int, events: list[Forwarded]) -> bytes:
    buf = BytesIO()
    schemaless_writer(
        buf,
        _SCHEMA,
        {
            "agent_id": agent_id,
            "source_partition": source_partition,
            "sent_at": sent_at,
            "events": [
                {
                    "offset": e.offset,
                    "conversation_id": e.conversation_id,
                    "type": e.type,
                    "received_at": e.received_at,
                    "is_error": e.is_error,
                    "value": value,
                }
                for e, value in events
            ],
        },
    )
    return buf.getvalue()


def decode(data: bytes) -> tuple[str, int, list[Forwarded]]:
    record: dict[str, Any] = schemaless_reader(BytesIO(data), _SCHEMA, None)  # type: ignore[assignment]
    part = record["source_partition"]
    events = [
        (
            WindowEvent(
                part, e["offset"], e["conversation_id"], e["type"], e["received_at"], e["is_error"]
            ),
            e["value"],
        )
        for e in record["events"]
    ]
    return record["agent_id"], record["sent_at"], events


_TICK_HEAD = struct.Struct(">H")
_TICK_ITEM = struct.Struct(">Hq")


def encode_tick(partitions: int, times: Mapping[int, int]) -> bytes:
    return _TICK_HEAD.pack(partitions) + b"".join(
        _TICK_ITEM.pack(p, t) for p, t in sorted(times.items())
    )


def decode_tick(data: bytes) -> tuple[int, dict[int, int]] | None:
    """The report of a tick; None for another layout (a tick of an older version, which
    carried one clock time for every partition and is ignored: it cannot say what was
    forwarded)."""
    size = _TICK_HEAD.size
    if len(data) < size or (len(data) - size) % _TICK_ITEM.size:
        return None
    (partitions,) = _TICK_HEAD.unpack_from(data)
    return partitions, dict(_TICK_ITEM.iter_unpack(data[size:]))
