"""Sans-I/O REST answers: ``GET /v1/convai/conversations[/{id}]`` and ``GET /_sim/status``.

Bodies follow the OpenAPI models ``GetConversationsPageResponseModel``,
``ConversationSummaryResponseModel``, ``GetConversationResponseModel`` and
``HTTPValidationError`` (tests validate them). Choices where the upstream is undocumented:
- Order: newest first (``sort_direction`` default ``desc``). The cursor is opaque
  (base64url of the last returned conversation's sequence number): keyset paging, so
  conversations that start while a client pages never shift or repeat items.
- ``call_start_after_unix`` / ``call_start_before_unix`` are inclusive.
- Errors: 401 ``{"detail": {"status": "invalid_api_key", "message"}}`` for a bad or missing
  key, 404 ``{"detail": {"status": "conversation_not_found", ...}}``, 422 in the
  ``HTTPValidationError`` shape for bad ``page_size``/``exclude_statuses``/``cursor``/times, and,
  with ``--rest-error-rate``, 429 (``too_many_concurrent_requests`` or ``system_busy``) or 503
  with a ``Retry-After`` header.
- ``message_count`` counts user and agent transcript messages generated so far.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from simulator.state import SimConversation
from simulator.transcript import transcript_items

LIST_PATH = "/v1/convai/conversations"
STATUSES = ("initiated", "in-progress", "processing", "done", "failed")
JSON = dict[str, Any]


@dataclass
class Reply:
    status: int
    body: JSON
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        return orjson.dumps(self.body)


def _invalid(loc: str, msg: str, kind: str, value: object = None) -> Reply:
    item: JSON = {"loc": ["query", loc], "msg": msg, "type": kind}
    if value is not None:
        item["input"] = value
    return Reply(422, {"detail": [item]})


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not raw.startswith("seq:") or not raw[4:].isdigit():
        return None
    return int(raw[4:])


def summary(conv: SimConversation, now_unix: float) -> JSON:
    script = conv.script
    return {
        "agent_id": conv.agent_id,
        "agent_name": script.agent.name,
        "conversation_id": conv.conversation_id,
        "start_time_unix_secs": int(conv.start_unix),
        "call_duration_secs": conv.duration(now_unix),
        "message_count": script.messages,
        "status": conv.status,
        "termination_reason": script.termination_reason if not conv.live else "",
        "call_successful": script.call_successful if not conv.live else "unknown",
        "transcript_summary": None,
        "call_summary_title": None,
        "main_language": "en",
        "tool_names": list(script.tool_names),
        "direction": "inbound" if script.kind == "voice" else None,
        "rating": None,
        "tag_ids": [],
    }


def details(conv: SimConversation, now_unix: float) -> JSON:
    script = conv.script
    done = conv.status == "done"
    return {
        "agent_id": conv.agent_id,
        "agent_name": script.agent.name,
        "conversation_product": "agent",
        "status": conv.status,
        "user_id": None,
        "conversation_id": conv.conversation_id,
        "environment": "production",
        "has_audio": script.kind == "voice",
        "has_user_audio": script.kind == "voice",
        "has_response_audio": script.kind == "voice",
        "has_auxiliary_audio": False,
        "transcript": transcript_items(conv.generated),
        "metadata": {
            "start_time_unix_secs": int(conv.start_unix),
            "call_duration_secs": conv.duration(now_unix),
            "cost_fiat": None,
            "termination_reason": script.termination_reason if not conv.live else "",
            "main_language": "en",
            "text_only": script.kind == "chat",
        },
        "analysis": {
            "call_successful": script.call_successful,
            "transcript_summary": f"A {script.kind} conversation with {script.messages} messages.",
        }
        if done
        else None,
        "tag_ids": [],
    }


def _int_param(query: dict[str, list[str]], name: str) -> int | Reply | None:
    values = query.get(name)
    if not values:
        return None
    try:
        return int(values[-1])
    except ValueError:
        return _invalid(name, "Input should be a valid integer", "int_parsing", values[-1])


def list_conversations(
    conversations: Sequence[SimConversation], query: dict[str, list[str]], now_unix: float
) -> Reply:
    """One page, newest first; ``conversations`` is indexed by ``seq``."""
    page_size = _int_param(query, "page_size")
    if isinstance(page_size, Reply):
        return page_size
    if page_size is None:
        page_size = 30
    if page_size < 1:
        return _invalid(
            "page_size",
            "Input should be greater than or equal to 1",
            "greater_than_equal",
            page_size,
        )
    if page_size > 100:
        return _invalid(
            "page_size", "Input should be less than or equal to 100", "less_than_equal", page_size
        )
    excluded = set(query.get("exclude_statuses", []))
    bad = excluded - set(STATUSES)
    if bad:
        return _invalid(
            "exclude_statuses",
            f"Input should be one of {', '.join(STATUSES)}",
            "enum",
            sorted(bad)[0],
        )
    after = _int_param(query, "call_start_after_unix")
    before = _int_param(query, "call_start_before_unix")
    for value in (after, before):
        if isinstance(value, Reply):
            return value
    agent_id = (query.get("agent_id") or [""])[-1]
    start = len(conversations) - 1
    cursor = (query.get("cursor") or [""])[-1]
    if cursor:
        seq = decode_cursor(cursor)
        if seq is None:
            return _invalid("cursor", "Invalid cursor", "value_error", cursor)
        start = min(start, seq - 1)
    page: list[JSON] = []
    last_seq: int | None = None
    has_more = False
    for i in range(start, -1, -1):
        conv = conversations[i]
        if conv.status in excluded or (agent_id and conv.agent_id != agent_id):
            continue
        begun = int(conv.start_unix)
        if (isinstance(after, int) and begun < after) or (
            isinstance(before, int) and begun > before
        ):
            continue
        if len(page) == page_size:
            has_more = True
            break
        page.append(summary(conv, now_unix))
        last_seq = conv.seq
    next_cursor = encode_cursor(last_seq) if has_more and last_seq is not None else None
    return Reply(200, {"conversations": page, "next_cursor": next_cursor, "has_more": has_more})


@dataclass
class RestApp:
    """Routes a GET to an answer; ``lookup`` finds conversations, ``status`` the sim status."""

    conversations: Sequence[SimConversation]
    lookup: Callable[[str], SimConversation | None]
    status: Callable[[], JSON]
    check_key: Callable[[str | None], bool]
    error_rate: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def handle(self, target: str, api_key: str | None, now_unix: float) -> Reply:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        if path == "/_sim/status":
            return Reply(200, self.status())
        if not path.startswith(LIST_PATH):
            return Reply(404, {"detail": {"status": "not_found", "message": "Not Found"}})
        if not self.check_key(api_key):
            return Reply(
                401,
                {
                    "detail": {
                        "status": "invalid_api_key",
                        "message": "Invalid or missing xi-api-key.",
                    }
                },
            )
        if self.error_rate > 0 and self.rng.random() < self.error_rate:
            return self._busy()
        query: dict[str, list[str]] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            query.setdefault(key, []).append(value)
        if path == LIST_PATH:
            return list_conversations(self.conversations, query, now_unix)
        rest = path[len(LIST_PATH) + 1 :]
        if path[len(LIST_PATH)] != "/" or not rest or "/" in rest:
            return Reply(404, {"detail": {"status": "not_found", "message": "Not Found"}})
        conv = self.lookup(unquote(rest))
        if conv is None:
            return Reply(
                404,
                {
                    "detail": {
                        "status": "conversation_not_found",
                        "message": "Conversation not found.",
                    }
                },
            )
        return Reply(200, details(conv, now_unix))

    def _busy(self) -> Reply:
        roll = self.rng.random()
        if roll < 0.4:
            status, code = 429, "too_many_concurrent_requests"
        elif roll < 0.8:
            status, code = 429, "system_busy"
        else:
            status, code = 503, "service_unavailable"
        return Reply(
            status,
            {"detail": {"status": code, "message": "Try again later."}},
            {"Retry-After": "1"},
        )
