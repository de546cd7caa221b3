"""Typed ``MonitorEvent.payload`` values built from upstream frames (UPSTREAM.md §2).

A payload is the union branch in fastavro tuple notation, ``(full record name, fields)``, which
is what :class:`schemas.serde.Serde` writes without guessing and what it returns on decode.
:func:`monitor_payload` maps a parsed frame onto the record of its type; a frame of an unknown
type, or whose payload does not have the documented shape, becomes a ``RawPayload`` with the
reason, so nothing is lost (the frame text is in ``MonitorEvent.raw`` anyway). Free-form objects
(``parameters``, ``metadata``, ``result``, undocumented frames) are carried as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeGuard

import orjson

from schemas.avro_schemas import NAMESPACE, parsed

Payload = tuple[str, dict[str, Any]]

RAW_PAYLOAD = f"{NAMESPACE}.RawPayload"

# upstream type -> (frame key holding the payload object, record name)
_DOCUMENTED: dict[str, tuple[str, str]] = {
    "conversation_initiation_metadata": (
        "conversation_initiation_metadata_event",
        "ConversationInitiationMetadataPayload",
    ),
    "asr_initiation_metadata": ("asr_initiation_metadata_event", "AsrInitiationMetadataPayload"),
    "user_transcript": ("user_transcription_event", "UserTranscriptPayload"),
    "tentative_user_transcript": (
        "tentative_user_transcription_event",
        "TentativeUserTranscriptPayload",
    ),
    "agent_response": ("agent_response_event", "AgentResponsePayload"),
    "agent_response_correction": (
        "agent_response_correction_event",
        "AgentResponseCorrectionPayload",
    ),
    "agent_chat_response_part": ("text_response_part", "AgentChatResponsePartPayload"),
    "agent_response_metadata": ("agent_response_metadata_event", "AgentResponseMetadataPayload"),
    "interruption": ("interruption_event", "InterruptionPayload"),
    "internal_tentative_agent_response": (
        "tentative_agent_response_internal_event",
        "InternalTentativeAgentResponsePayload",
    ),
    "client_tool_call": ("client_tool_call", "ClientToolCallPayload"),
    "agent_tool_request": ("agent_tool_request", "AgentToolRequestPayload"),
    "agent_tool_response": ("agent_tool_response", "AgentToolResponsePayload"),
    "agent_tool_response_full_payload": (
        "agent_tool_response_full_payload",
        "AgentToolResponseFullPayloadPayload",
    ),
    "mcp_tool_call": ("mcp_tool_call", "McpToolCallPayload"),
    "mcp_connection_status": ("mcp_connection_status", "McpConnectionStatusPayload"),
    "context_usage": ("context_usage_event", "ContextUsagePayload"),
    "error": ("error_event", "ErrorPayload"),
}

# Types whose shape is undocumented: the record keeps the frame as JSON text plus any event_id.
_UNDOCUMENTED: dict[str, str] = {
    "agent_response_complete": "AgentResponseCompletePayload",
    "guardrail_triggered": "GuardrailTriggeredPayload",
    "client_error": "ClientErrorPayload",
    "dtmf_request": "DtmfRequestPayload",
    "agent_reasoning_response_part": "AgentReasoningResponsePartPayload",
    "rich_content": "RichContentPayload",
    "agent_typing": "AgentTypingPayload",
    "external_agent_connected": "ExternalAgentConnectedPayload",
    "external_agent_disconnected": "ExternalAgentDisconnectedPayload",
    "queue_status": "QueueStatusPayload",
}

# Record fields that carry a free-form JSON value as text.
_JSON_FIELDS = frozenset({"metadata", "parameters", "result", "details"})
# Records whose one field is the whole payload object as JSON text (its contents are unspecified).
_WHOLE_OBJECT_AS_JSON = {"AsrInitiationMetadataPayload": "metadata"}

# Upstream event type -> full Avro record name of its payload.
PAYLOAD_RECORDS: dict[str, str] = {t: f"{NAMESPACE}.{r}" for t, (_, r) in _DOCUMENTED.items()} | {
    t: f"{NAMESPACE}.{r}" for t, r in _UNDOCUMENTED.items()
}

# Upstream event type -> the frame key that holds its payload object (documented types).
PAYLOAD_KEYS: dict[str, str] = {t: key for t, (key, _) in _DOCUMENTED.items()}

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _record_schemas() -> dict[str, dict[str, Any]]:
    payload = next(f for f in parsed("MonitorEvent")["fields"] if f["name"] == "payload")
    return {branch["name"]: branch for branch in payload["type"]}


_RECORDS = _record_schemas()
# Payload records whose event_id takes a string too (the older undocumented ones take integers
# only: a string id of theirs stays in their ``data`` JSON).
_STRING_ID_RECORDS = frozenset(
    name
    for name, record in _RECORDS.items()
    for field in record["fields"]
    if field["name"] == "event_id" and "string" in field["type"]
)


class _Mismatch(Exception):
    """A payload that does not have the documented shape (internal: becomes RawPayload)."""


def json_text(value: Any) -> str:
    """Compact JSON text of a parsed JSON value (integers beyond 64 bits included)."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _is_long(value: object) -> TypeGuard[int]:
    return (
        isinstance(value, int) and not isinstance(value, bool) and _LONG_MIN <= value <= _LONG_MAX
    )


def _convert(schema: Any, value: Any, path: str) -> Any:
    if isinstance(schema, list):  # payload unions are ["null", X, ...]: the first that fits
        if value is None:
            return None
        for branch in schema[1:-1]:
            try:
                return _convert(branch, value, path)
            except _Mismatch:
                continue
        return _convert(schema[-1], value, path)
    kind = schema if isinstance(schema, str) else schema["type"]
    if (
        (kind == "string" and isinstance(value, str))
        or (kind == "boolean" and isinstance(value, bool))
        or (kind == "long" and _is_long(value))
    ):
        return value
    if kind == "array" and isinstance(value, list):
        return [_convert(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if kind == "record" and isinstance(value, dict):
        return _record(schema, value, path)
    raise _Mismatch(f"{path}: expected {kind}, found {type(value).__name__}")


def _record(schema: dict[str, Any], obj: Mapping[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in schema["fields"]:
        name = field["name"]
        if name not in obj:
            if "default" not in field:
                raise _Mismatch(f"{path}.{name}: missing")
            out[name] = field["default"]
        elif name in _JSON_FIELDS and obj[name] is not None:
            out[name] = json_text(obj[name])
        else:
            out[name] = _convert(field["type"], obj[name], f"{path}.{name}")
    return out


def _found_event_id(frame: Mapping[str, Any]) -> int | str | None:
    """An integer or string event_id at the top level of an undocumented frame or one down."""
    for candidate in (frame, *(v for v in frame.values() if isinstance(v, dict))):
        value = candidate.get("event_id")
        if _is_long(value) or isinstance(value, str):
            return value
    return None


def upstream_event_ids(payload: Payload) -> dict[str, Any]:
    """``upstream_event_id`` (an integer event_id) and ``upstream_event_ref`` (a string one)."""
    eid = payload[1].get("event_id")
    return {
        "upstream_event_id": eid if _is_long(eid) else None,
        "upstream_event_ref": eid if isinstance(eid, str) else None,
    }


def _frame_json(frame: Mapping[str, Any]) -> str:
    return json_text({k: v for k, v in frame.items() if k != "type"})


def raw_payload(event_type: str, frame: Mapping[str, Any], reason: str | None) -> Payload:
    """The passthrough payload: the frame (without ``type``) as JSON text, and why."""
    return RAW_PAYLOAD, {"type": event_type, "data": _frame_json(frame), "reason": reason}


def monitor_payload(event_type: str, frame: Mapping[str, Any]) -> Payload:
    """The typed payload of a parsed frame whose ``type`` is ``event_type``.

    Never raises: unknown types and shapes give a ``RawPayload`` whose ``reason`` is
    ``unknown_type`` or the first mismatching field. The upstream event id, when the frame has
    one, is ``payload[1].get("event_id")``.
    """
    documented = _DOCUMENTED.get(event_type)
    if documented is None:
        record = _UNDOCUMENTED.get(event_type)
        if record is None:
            return raw_payload(event_type, frame, "unknown_type")
        full_name = f"{NAMESPACE}.{record}"
        found = _found_event_id(frame)
        if isinstance(found, str) and full_name not in _STRING_ID_RECORDS:
            found = None
        return full_name, {"event_id": found, "data": _frame_json(frame)}
    key, record = documented
    body = frame.get(key)
    if not isinstance(body, dict):
        found = f"found {type(body).__name__}" if key in frame else "missing"
        return raw_payload(event_type, frame, f"{key}: expected object, {found}")
    whole = _WHOLE_OBJECT_AS_JSON.get(record)
    if whole is not None:
        return f"{NAMESPACE}.{record}", {whole: json_text(body)}
    full_name = f"{NAMESPACE}.{record}"
    try:
        return full_name, _record(_RECORDS[full_name], body, key)
    except _Mismatch as exc:
        return raw_payload(event_type, frame, str(exc))
