"""Gap backfill (sans-I/O): the turns a conversation's live stream missed, and a verdict.

The post-call transcript (REST details or the webhook's ``data``) links each turn to the monitor
``event_id`` through ``source_event_id``. For every turn it yields the MonitorEvents the live
stream would have carried for it: ``user_transcript``, ``agent_response`` (the original text),
``interruption``, ``agent_response_correction`` and one ``agent_tool_response`` per tool result.
Those already seen on ``convai.monitor.events`` — same type and ``event_id``, or for tools the
same ``tool_call_id`` — are left out, so nothing seen live is counted twice. Keys are derived
from (conversation, type, event id, tool call id) only, so a re-run publishes the same keys and
the processors, which count each key once, count them once.

What a transcript cannot repair (listed in every ``gapped``/``repaired`` verdict's detail):
event types it does not carry, hence ``events_by_type``/``events_total``; response latency (a
backfilled turn's ``received_at`` is its whole-second time in the call); and agent windows that
were already final (backfilled events are late there).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.event_types import (
    AGENT_RESPONSE,
    BACKFILL,
    CORRECTION,
    INTERRUPTION,
    TOOL_RESPONSE,
    USER_TRANSCRIPT,
)
from schemas.payloads import monitor_payload
from schemas.records import MonitorEvent

# A connection's replay burst holds at most about the last 100 frames (UPSTREAM.md §1): one that
# held that many may have been cut at its start. On a reconnect the collector reports it as a
# gap, but on a monitor's first connection it has nothing to compare with (a conversation that
# started while its monitor could not connect), so the backfill checks such conversations too.
FULL_REPLAY = 100
COMPLETE, REPAIRED, GAPPED = "complete", "repaired", "gapped"
JOINED_TYPES = frozenset({USER_TRANSCRIPT, AGENT_RESPONSE, INTERRUPTION, CORRECTION})
NOT_REPAIRABLE = (
    "events_by_type/events_total of types a transcript does not carry",
    "response latency (backfilled turns carry whole-second times in the call)",
    "agent windows already final (backfilled events are late there)",
)


@dataclass(slots=True)
class Seen:
    """What reached ``convai.monitor.events`` for one conversation, and where it stands."""

    agent_id: str | None = None
    gap: bool = False
    ended: bool = False
    verdict: str | None = None
    turns: set[tuple[str, int]] = field(default_factory=set)
    tools: set[str] = field(default_factory=set)
    replays: dict[str, int] = field(default_factory=dict)  # connection -> replayed frames

    @property
    def suspect(self) -> bool:
        """Frames may be missing: a gap was reported, or a replay was full."""
        return self.gap or any(n >= FULL_REPLAY for n in self.replays.values())

    def event(self, record: Mapping[str, Any]) -> None:
        """Fold in a decoded MonitorEvent (live or backfilled: a re-run then adds nothing)."""
        if self.agent_id is None:
            self.agent_id = record.get("agent_id")
        if record.get("replay"):
            conn = record["connection_id"]
            self.replays[conn] = self.replays.get(conn, 0) + 1
        kind, eid = record["type"], record.get("upstream_event_id")
        if kind in JOINED_TYPES and eid is not None:
            self.turns.add((kind, eid))
        elif kind == TOOL_RESPONSE:
            call_id = record["payload"][1].get("tool_call_id")
            if isinstance(call_id, str):
                self.tools.add(call_id)


class Tracker:
    """Per conversation :class:`Seen`, fed from the events and lifecycle topics in any order."""

    def __init__(self) -> None:
        self.conversations: dict[str, Seen] = {}
        self.settled = 0  # conversations with a verdict, given here or read back

    def _get(self, conversation_id: str) -> Seen:
        seen = self.conversations.get(conversation_id)
        if seen is None:
            seen = self.conversations[conversation_id] = Seen()
        return seen

    def event(self, record: Mapping[str, Any]) -> None:
        seen = self._get(record["conversation_id"])
        if seen.verdict is None:
            seen.event(record)

    def lifecycle(self, record: Mapping[str, Any]) -> bool:
        """Fold in a ConversationLifecycle record; True when the conversation now needs a verdict.

        A verdict already on the topic (a restart reading it again) settles the conversation.
        """
        seen = self._get(record["conversation_id"])
        if seen.agent_id is None:
            seen.agent_id = record.get("agent_id")
        state = record["state"]
        if record.get("verdict"):
            self.settle(record["conversation_id"], record["verdict"])
        elif state == "gap":
            seen.gap = True
        elif state == "ended" and not seen.ended and seen.verdict is None:
            seen.ended = True
            return True
        return False

    def missed(self, conversation_id: str) -> bool:
        """A post-call webhook came for a conversation of which nothing is known after the
        collectors' grace: it was missed whole. True (then it needs a verdict, as a gap) unless
        a lifecycle record or an event of it has arrived meanwhile."""
        if conversation_id in self.conversations:
            return False
        seen = self._get(conversation_id)
        seen.gap = seen.ended = True
        return True

    def settle(self, conversation_id: str, verdict: str) -> None:
        """A verdict was given: keep only that (the sets are no longer needed)."""
        seen = self._get(conversation_id)
        if seen.verdict is None:
            self.settled += 1
        seen.verdict = verdict
        seen.turns.clear()
        seen.tools.clear()
        seen.replays.clear()


@dataclass(frozen=True, slots=True)
class Repair:
    """What to publish for one finished conversation."""

    events: list[MonitorEvent]
    verdict: str
    detail: dict[str, Any]


def event_key(conversation_id: str, kind: str, event_id: int, call_id: str = "") -> str:
    text = f"{conversation_id}\x00{kind}\x00{event_id}\x00{call_id}".encode()
    return "bf-" + hashlib.blake2b(text, digest_size=16).hexdigest()


def _frames(item: Mapping[str, Any], eid: int) -> Iterator[tuple[dict[str, Any], str]]:
    """The frames the live stream carried for one transcript item, with their tool call id."""
    message, original = item.get("message"), item.get("original_message")
    if item.get("role") == "user":
        if isinstance(message, str):
            yield (
                {
                    "type": "user_transcript",
                    "user_transcription_event": {"user_transcript": message, "event_id": eid},
                },
                "",
            )
        return
    for result in item.get("tool_results") or ():
        if isinstance(result, Mapping) and isinstance(result.get("request_id"), str):
            response = {
                "tool_name": str(result.get("tool_name", "")),
                "tool_call_id": result["request_id"],
                "tool_type": str(result.get("type") or ""),
                "is_error": bool(result.get("is_error", False)),
                "is_called": bool(result.get("tool_has_been_called", True)),
                "event_id": eid,
            }
            yield {"type": TOOL_RESPONSE, TOOL_RESPONSE: response}, result["request_id"]
    said = original if isinstance(original, str) else message
    if isinstance(said, str):
        yield (
            {
                "type": "agent_response",
                "agent_response_event": {"agent_response": said, "event_id": eid},
            },
            "",
        )
    if item.get("interrupted"):
        yield {"type": "interruption", "interruption_event": {"event_id": eid}}, ""
    if isinstance(original, str) and isinstance(message, str) and original != message:
        correction = {
            "original_agent_response": original,
            "corrected_agent_response": message,
            "event_id": eid,
        }
        yield (
            {"type": "agent_response_correction", "agent_response_correction_event": correction},
            "",
        )


def repair(
    conversation_id: str, seen: Seen, details: Mapping[str, Any] | None, source: str, now: int
) -> Repair:
    """The missed events of a suspect conversation and its verdict (``details`` None: none).

    ``complete`` when the live stream had every turn after all, ``repaired`` when some were
    republished, ``gapped`` when the transcript is missing or has turns that cannot be joined.
    """
    if details is None:
        return Repair([], GAPPED, {"reason": f"no transcript ({source})"})
    metadata = details.get("metadata") if isinstance(details.get("metadata"), Mapping) else {}
    start = metadata.get("start_time_unix_secs") if isinstance(metadata, Mapping) else None
    base = start * 1_000_000 if isinstance(start, int) else now
    events: list[MonitorEvent] = []
    counts: dict[str, int] = {}
    unjoinable = 0
    for position, item in enumerate(details.get("transcript") or ()):
        if not isinstance(item, Mapping):
            continue
        eid = item.get("source_event_id")
        if not isinstance(eid, int) or isinstance(eid, bool):
            unjoinable += 1
            continue
        secs = item.get("time_in_call_secs")
        at = base + (secs if isinstance(secs, int) else 0) * 1_000_000 + position
        for frame, call_id in _frames(item, eid):
            kind = frame["type"]
            if (call_id and call_id in seen.tools) or (not call_id and (kind, eid) in seen.turns):
                continue
            events.append(_event(conversation_id, seen.agent_id, frame, eid, call_id, at))
            counts[kind] = counts.get(kind, 0) + 1
    detail: dict[str, Any] = {
        "source": source,
        "republished": counts,
        "not_repairable": list(NOT_REPAIRABLE),
    }
    if unjoinable:
        detail["unjoinable_items"] = unjoinable
    verdict = GAPPED if unjoinable else (REPAIRED if events else COMPLETE)
    return Repair(events, verdict, detail)


def _event(
    conversation_id: str,
    agent_id: str | None,
    frame: dict[str, Any],
    eid: int,
    call_id: str,
    at: int,
) -> MonitorEvent:
    kind = frame["type"]
    return {
        "event_key": event_key(conversation_id, kind, eid, call_id),
        "conversation_id": conversation_id,
        "agent_id": agent_id,
        "type": kind,
        "upstream_event_id": eid,
        "received_at": at,
        "collector_id": BACKFILL,
        "connection_id": BACKFILL,
        "connection_seq": 0,
        "replay": False,
        "raw": orjson.dumps(frame).decode(),
        "payload": monitor_payload(kind, frame),
        "source": BACKFILL,
    }
