"""Transcripts and summaries of finished conversations for data teams (sans-I/O).

A :class:`Book` folds MonitorEvents (live and backfilled), lifecycle records and PostCall
records of one conversation in any order, any number of times: each event counts once by
``event_key`` and every choice is made on sorted values, so the rows never depend on arrival
order. One transcript row per turn (role + upstream ``event_id``), in turn order:
- user turns from ``user_transcript``; agent turns from ``agent_response``, with the text of its
  ``agent_response_correction`` when there is one (``original_message`` keeps the original),
  ``interrupted`` from ``interruption``, and the turn's tool calls (``agent_tool_response``);
- events without an ``event_id`` cannot be placed in a turn and are left out;
- ``source`` is ``backfill`` when every event of the turn came from the post-call transcript.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.event_types import BACKFILL, LIVE

USER, AGENT = "user", "agent"
_SPOKEN = ("user_transcript", "agent_response")
_TEXT_FIELD = {
    "user_transcript": "user_transcript",
    "agent_response": "agent_response",
    "agent_response_correction": "corrected_agent_response",
}
_AGENT_TYPES = frozenset(
    {"agent_response", "agent_response_correction", "interruption", "agent_tool_response"}
)


@dataclass(frozen=True, slots=True, order=True)
class _Piece:
    """One distinct event of a turn, as much as the rows need."""

    received_at: int
    event_key: str
    type: str
    text: str | None = None
    original: str | None = None
    tool: str | None = None
    tool_error: bool = False
    backfill: bool = False


@dataclass(slots=True)
class Book:
    """Everything known about one conversation's turns and its end."""

    conversation_id: str
    agent_id: str | None = None
    pieces: dict[tuple[int, str], dict[str, _Piece]] = field(default_factory=dict)
    ended_at: int | None = None
    verdict: str | None = None
    verdict_detail: str | None = None
    postcall: dict[str, Any] | None = None

    def event(self, record: Mapping[str, Any]) -> bool:
        """Fold a decoded MonitorEvent; True when it changed a turn."""
        kind, eid = record["type"], record.get("upstream_event_id")
        if eid is None or (kind != "user_transcript" and kind not in _AGENT_TYPES):
            return False
        if self.agent_id is None:
            self.agent_id = record.get("agent_id")
        turn = self.pieces.setdefault((eid, USER if kind == "user_transcript" else AGENT), {})
        if record["event_key"] in turn:
            return False
        fields = record["payload"][1]
        turn[record["event_key"]] = _Piece(
            record["received_at"],
            record["event_key"],
            kind,
            text=fields.get(_TEXT_FIELD.get(kind, ""), None),
            original=fields.get("original_agent_response"),
            tool=fields.get("tool_name") if kind == "agent_tool_response" else None,
            tool_error=bool(fields.get("is_error")) if kind == "agent_tool_response" else False,
            backfill=record.get("source") == BACKFILL,
        )
        return True

    def lifecycle(self, record: Mapping[str, Any]) -> bool:
        """Fold a ConversationLifecycle record; True when it ended the conversation or gave
        its verdict (the latest verdict wins: the backfill writes one per conversation)."""
        if record["state"] != "ended":
            return False
        changed = self.ended_at is None or record["at"] < self.ended_at
        if changed:
            self.ended_at = record["at"]
        if record.get("verdict") and record["verdict"] != self.verdict:
            self.verdict, self.verdict_detail = record["verdict"], record.get("detail")
            changed = True
        return changed

    def post_call(self, record: Mapping[str, Any]) -> None:
        self.postcall = dict(record)

    def transcript(self) -> list[dict[str, Any]]:
        """The ``conversation_transcripts`` rows, in turn order."""
        rows = []
        for index, ((eid, role), turn) in enumerate(sorted(self.pieces.items())):
            pieces = sorted(turn.values())
            said = next((p.text for p in pieces if p.type in _SPOKEN), None)
            corrected = next((p for p in pieces if p.type == "agent_response_correction"), None)
            tools = [p for p in pieces if p.tool is not None]
            rows.append(
                {
                    "conversation_id": self.conversation_id,
                    "turn_index": index,
                    "event_id": eid,
                    "role": role,
                    "message": corrected.text if corrected else said,
                    "original_message": (corrected.original or said) if corrected else None,
                    "interrupted": any(p.type == "interruption" for p in pieces),
                    "tool_calls": orjson.dumps(sorted(p.tool for p in tools if p.tool)).decode(),
                    "tool_errors": sum(p.tool_error for p in tools),
                    "source": BACKFILL if all(p.backfill for p in pieces) else LIVE,
                    "first_received_at": pieces[0].received_at,
                }
            )
        return rows

    def summary(self, updated_at: int) -> dict[str, Any]:
        """The ``conversation_summaries`` row (post-call fields null until a webhook came)."""
        rows = self.transcript()
        post = self.postcall or {}
        data = orjson.loads(post["data"]) if post.get("data") else {}
        metadata = data.get("metadata")
        text_only = metadata.get("text_only") if isinstance(metadata, dict) else None
        return {
            "conversation_id": self.conversation_id,
            "agent_id": self.agent_id or post.get("agent_id"),
            "ended_at": self.ended_at,
            "verdict": self.verdict,
            "verdict_detail": self.verdict_detail,
            "channel": None if text_only is None else ("chat" if text_only else "voice"),
            "start_time_unix_secs": post.get("start_time_unix_secs"),
            "call_duration_secs": post.get("call_duration_secs"),
            "termination_reason": post.get("termination_reason"),
            "call_successful": post.get("call_successful"),
            "transcript_summary": post.get("transcript_summary"),
            "user_turns": sum(r["role"] == USER for r in rows),
            "agent_turns": sum(r["role"] == AGENT and r["message"] is not None for r in rows),
            "interrupted_turns": sum(r["interrupted"] for r in rows),
            "corrected_turns": sum(r["original_message"] is not None for r in rows),
            "backfilled_turns": sum(r["source"] == BACKFILL for r in rows),
            "updated_at": updated_at,
        }
