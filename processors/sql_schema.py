"""What each column of the SQL store means: the comments written into PostgreSQL's catalogue
(``COMMENT ON COLUMN``) and checked against docs/sql.md, so the schema documents itself."""

from __future__ import annotations

COLUMN_DOCS: dict[str, dict[str, str]] = {
    "conversation_metrics": {
        "conversation_id": "Upstream conversation id; one row per conversation.",
        "agent_id": "Agent of the conversation (null until a record names it).",
        "status": "active until the conversation ends, then ended.",
        "events_total": "Distinct monitor events (by event_key) of the conversation.",
        "events_by_type": "Distinct events per upstream type, as a JSON object.",
        "user_turns": "Distinct user_transcript events.",
        "agent_turns": "Distinct agent_response events.",
        "interruptions": "Distinct interruption events.",
        "corrections": "Distinct agent_response_correction events.",
        "tool_calls": "Distinct agent_tool_response events.",
        "tool_errors": "Distinct agent_tool_response events with is_error true.",
        "latency_pairs": "User turns answered by a later agent_response (latency samples).",
        "latency_p50_ms": "Median response latency in ms (nearest rank); null without pairs.",
        "latency_p95_ms": "95th percentile response latency in ms (nearest rank).",
        "first_received_at": "When a collector read the conversation's earliest event (UTC).",
        "last_received_at": "When a collector read the conversation's latest event (UTC).",
        "updated_at": "When this row was last written (UTC).",
    },
    "agent_window_metrics": {
        "agent_id": "Agent of the window.",
        "window_start": "Start of the tumbling window by received_at (UTC, inclusive).",
        "window_end": "End of the window (UTC, exclusive).",
        "events_total": "Distinct events of the agent in the window.",
        "events_by_type": "Distinct events per upstream type, as a JSON object.",
        "conversations": "Distinct conversations with an event in the window.",
        "user_turns": "Distinct user_transcript events.",
        "agent_turns": "Distinct agent_response events.",
        "interruptions": "Distinct interruption events.",
        "tool_errors": "Distinct agent_tool_response events with is_error true.",
        "late_events": "Events that arrived after the window became final (not in the counts).",
        "final": "True once the window is closed; its counts never change afterwards.",
        "closed_by": (
            "event_time (the agent's events passed end + grace) "
            "or idle (wall clock, once every worker caught up)."
        ),
        "emitted_at": "When the window was emitted (UTC).",
    },
    "conversation_transcripts": {
        "conversation_id": "Upstream conversation id.",
        "turn_index": "Position of the turn in the conversation, from 0.",
        "event_id": "Upstream event_id of the turn (monitor event or transcript source_event_id).",
        "role": "user or agent.",
        "message": "Text of the turn with corrections applied.",
        "original_message": "Text before an agent_response_correction; null when uncorrected.",
        "interrupted": "True when an interruption cut the agent's turn.",
        "tool_calls": "Names of the tools the turn called, as a JSON array.",
        "tool_errors": "Tool responses of the turn with is_error true.",
        "source": "live (seen on the monitor socket) or backfill (only in the REST transcript).",
        "first_received_at": "When the turn's first event was read (collector or backfill; UTC).",
    },
    "conversation_summaries": {
        "conversation_id": "Upstream conversation id; one row per ended conversation.",
        "agent_id": "Agent of the conversation.",
        "ended_at": "When the conversation ended (UTC).",
        "verdict": "complete, repaired (gaps filled from the transcript) or gapped.",
        "verdict_detail": "What was missed and what could not be repaired, as a JSON object.",
        "channel": "chat or voice; null when unknown.",
        "start_time_unix_secs": "Upstream start time (Unix seconds), from the post-call record.",
        "call_duration_secs": "Upstream call duration in seconds, from the post-call record.",
        "termination_reason": "Upstream termination reason, from the post-call record.",
        "call_successful": "Post-call analysis verdict (success, failure, unknown) when present.",
        "transcript_summary": "Post-call analysis summary when present.",
        "user_turns": "User turns in the transcript.",
        "agent_turns": "Agent turns in the transcript.",
        "interrupted_turns": "Agent turns cut by an interruption.",
        "corrected_turns": "Agent turns with a correction applied.",
        "backfilled_turns": "Turns that came only from the REST transcript.",
        "updated_at": "When this row was last written (UTC).",
    },
}


def comments_sql(*tables: str) -> str:
    """``COMMENT ON COLUMN`` statements for every documented column of ``tables`` (PostgreSQL)."""
    statements = []
    for table in tables:
        for column, text in COLUMN_DOCS[table].items():
            quoted = text.replace("'", "''")
            statements.append(f"COMMENT ON COLUMN {table}.{column} IS '{quoted}';")
    return "\n".join(statements)
