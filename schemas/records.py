"""The records at the serde boundary as types: one ``TypedDict`` per Avro schema.

Field names and nullability match ``schemas/avro/*.avsc`` (``tests/test_serde.py`` checks
that); fields with a schema default are ``NotRequired`` (a writer may leave them out);
timestamps are ``int`` microseconds (:mod:`schemas.clock`). ``Serde.encode`` takes any mapping,
so these add checking where records are built without changing the wire.
"""

# No ``from __future__ import annotations``: TypedDict reads ``NotRequired`` from evaluated
# annotations to tell required keys from optional ones.
from typing import Any, Literal, NotRequired, TypedDict

from schemas.payloads import Payload


class MonitorEvent(TypedDict):
    event_key: str
    conversation_id: str
    agent_id: NotRequired[str | None]
    type: str
    upstream_event_id: NotRequired[int | None]
    received_at: int
    collector_id: str
    connection_id: str
    connection_seq: int
    replay: bool
    raw: str
    payload: Payload  # (record name, fields) of one of the payload records
    source: NotRequired[str]
    upstream_event_ref: NotRequired[str | None]


class DeadLetter(TypedDict):
    conversation_id: NotRequired[str | None]
    reason: str
    detail: str
    raw: bytes
    received_at: int
    collector_id: str
    connection_id: NotRequired[str | None]
    connection_seq: NotRequired[int | None]
    event_key: NotRequired[str | None]


LifecycleState = Literal[
    "unknown", "discovered", "started", "monitoring", "ended", "gap", "announced"
]


class ConversationLifecycle(TypedDict):
    conversation_id: str
    agent_id: NotRequired[str | None]
    state: LifecycleState
    at: int
    source: str
    collector_id: NotRequired[str | None]
    detail: NotRequired[str | None]
    status: NotRequired[str | None]
    verdict: NotRequired[str | None]


class ControlCommand(TypedDict):
    command_id: str
    conversation_id: str
    command_type: str
    phone_number: NotRequired[str | None]
    text: NotRequired[str | None]
    contextual_update: NotRequired[str | None]
    issued_by: str
    key_id: NotRequired[str | None]
    issued_at: int
    expires_at: int
    signature: NotRequired[str | None]


class CommandResult(TypedDict):
    command_id: str
    conversation_id: str
    command_type: str
    status: Literal["unknown", "delivered", "rejected", "expired", "duplicate", "failed"]
    reason: NotRequired[str | None]
    decided_at: int
    worker_id: NotRequired[str | None]
    delivered_at: NotRequired[int | None]


class ConversationMetrics(TypedDict):
    conversation_id: str
    agent_id: NotRequired[str | None]
    status: Literal["unknown", "active", "ended"]
    events_by_type: dict[str, int]
    events_total: int
    user_turns: int
    agent_turns: int
    interruptions: int
    corrections: int
    tool_calls: int
    tool_errors: int
    latency_pairs: int
    latency_p50_ms: NotRequired[float | None]
    latency_p95_ms: NotRequired[float | None]
    first_received_at: int
    last_received_at: int
    updated_at: int


class AgentWindowMetrics(TypedDict):
    agent_id: str
    window_start: int
    window_end: int
    events_by_type: dict[str, int]
    events_total: int
    conversations: int
    user_turns: int
    agent_turns: int
    interruptions: int
    tool_errors: int
    late_events: NotRequired[int]
    final: bool
    closed_by: NotRequired[Literal["unknown", "event_time", "idle"] | None]
    emitted_at: int


class Alert(TypedDict):
    alert_id: str
    rule: str
    conversation_id: str
    agent_id: NotRequired[str | None]
    severity: Literal["unknown", "info", "warning", "critical"]
    event_key: str
    raised_at: int
    detail: str


class RuleState(TypedDict):
    conversation_id: str
    agent_id: NotRequired[str | None]
    chat: NotRequired[bool | None]
    fired: list[str]
    matches: list[dict[str, Any]]  # RuleMatch records
    turns: NotRequired[list[dict[str, Any]]]  # RuleTurn records
    horizon: NotRequired[int | None]
    updated_at: int


class PostCall(TypedDict):
    conversation_id: str
    agent_id: NotRequired[str | None]
    webhook_type: str
    event_timestamp: NotRequired[int | None]
    received_at: int
    status: NotRequired[str | None]
    start_time_unix_secs: NotRequired[int | None]
    call_duration_secs: NotRequired[int | None]
    termination_reason: NotRequired[str | None]
    call_successful: NotRequired[str | None]
    transcript_summary: NotRequired[str | None]
    data: str
    body_sha256: str


RECORDS: dict[str, type[Any]] = {
    "MonitorEvent": MonitorEvent,
    "DeadLetter": DeadLetter,
    "ConversationLifecycle": ConversationLifecycle,
    "ControlCommand": ControlCommand,
    "CommandResult": CommandResult,
    "ConversationMetrics": ConversationMetrics,
    "AgentWindowMetrics": AgentWindowMetrics,
    "Alert": Alert,
    "RuleState": RuleState,
    "PostCall": PostCall,
}
