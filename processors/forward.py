"""The internal record that carries first-seen events from conversation to agent partitions.

``convai.monitor.events`` is keyed by conversation, but windows are per agent, so events are
re-keyed by agent. One record holds every first-seen event of one agent from one source batch:
a single Kafka record per agent and batch instead of one per event, which keeps Faust's
per-message cost off the hot path. The original MonitorEvent bytes travel along, so a late
event goes to ``convai.events.late`` unchanged without being decoded again.
"""

from __future__ import annotations

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


def encode(agent_id: str, source_partition: int, events: list[Forwarded]) -> bytes:
    buf = BytesIO()
    schemaless_writer(
        buf,
        _SCHEMA,
        {
            "agent_id": agent_id,
            "source_partition": source_partition,
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


def decode(data: bytes) -> tuple[str, list[Forwarded]]:
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
    return record["agent_id"], events
