"""From a verified webhook body to a ``PostCall`` record (sans-I/O).

Only ``post_call_transcription`` becomes a record: the topic is compacted by conversation, and
the audio or failure webhooks of the same conversation must not replace its transcript.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

TRANSCRIPTION = "post_call_transcription"


class BadWebhook(ValueError):
    """A correctly signed body that is not a webhook we can read (answered 400)."""


@dataclass(frozen=True, slots=True)
class Parsed:
    """A readable delivery: its type, and its record when it is a transcription webhook."""

    webhook_type: str
    record: dict[str, Any] | None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse(body: bytes, received_at: int) -> Parsed:
    """Read a webhook body; raises :class:`BadWebhook` with a short reason when it cannot."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadWebhook(f"body is not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise BadWebhook("body is not an object with a string 'type'")
    kind: str = obj["type"]
    if kind != TRANSCRIPTION:
        return Parsed(kind, None)
    data = obj.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("conversation_id"), str):
        raise BadWebhook("data.conversation_id is missing")
    metadata = _object(data.get("metadata"))
    analysis = _object(data.get("analysis"))
    return Parsed(
        kind,
        {
            "conversation_id": data["conversation_id"],
            "agent_id": _str(data.get("agent_id")),
            "webhook_type": kind,
            "event_timestamp": _int(obj.get("event_timestamp")),
            "received_at": received_at,
            "status": _str(data.get("status")),
            "start_time_unix_secs": _int(metadata.get("start_time_unix_secs")),
            "call_duration_secs": _int(metadata.get("call_duration_secs")),
            "termination_reason": _str(metadata.get("termination_reason")),
            "call_successful": _str(analysis.get("call_successful")),
            "transcript_summary": _str(analysis.get("transcript_summary")),
            "data": orjson.dumps(data).decode(),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        },
    )
