"""Shape checks of a decoded ControlCommand (sans-I/O): each failure is a reason string.

Parameters are strict: a command must carry the parameter its type needs and no other one, so
that an issuer's mistake (a phone number on ``end_call``) is reported instead of ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.commands import CHAT_ONLY, COMMAND_TYPES, E164, PHONE_ONLY, REQUIRED_FIELD

PARAMETER_FIELDS: tuple[str, ...] = ("phone_number", "text", "contextual_update")
TEXT_FIELDS = frozenset({"text", "contextual_update"})
# Ids end up in a URL path and in logs: a conservative alphabet, bounded length. \A and \Z
# (not ^ and $, which also accept a final newline) with fullmatch: the whole string or nothing.
IDENTIFIER = re.compile(r"\A[A-Za-z0-9_.:-]{1,128}\Z")
IDENTIFIER_RULE = "1-128 characters of [A-Za-z0-9_.:-]"


@dataclass(frozen=True, slots=True)
class Limits:
    """Configurable bounds: text length in characters; in microseconds the lifetime of a
    command and how far its ``issued_at`` may lie ahead of the worker's clock."""

    max_text_chars: int = 2000
    max_ttl_micros: int = 3600 * 1_000_000
    max_clock_skew_micros: int = 30 * 1_000_000


def check_shape(command: Mapping[str, Any], limits: Limits) -> str | None:
    """Why ``command`` is malformed, or None: ids, type, parameters, E.164, text length, times."""
    for name in ("command_id", "conversation_id"):
        value = command.get(name)
        if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
            return f"invalid {name}: expected {IDENTIFIER_RULE}"
    key_id = command.get("key_id")
    if key_id is not None and not (isinstance(key_id, str) and IDENTIFIER.fullmatch(key_id)):
        return f"invalid key_id: expected {IDENTIFIER_RULE} or null"
    kind = command.get("command_type")
    if kind not in REQUIRED_FIELD:
        return f"unknown command_type {kind!r}; expected one of {', '.join(COMMAND_TYPES)}"
    needed = REQUIRED_FIELD[kind]
    for name in PARAMETER_FIELDS:
        if name != needed and command.get(name) is not None:
            return f"unexpected parameter {name} for {kind}"
    if needed is not None:
        value = command.get(needed)
        if not isinstance(value, str) or not value.strip():
            return f"missing parameter {needed} for {kind}"
        if needed == "phone_number" and not E164.fullmatch(value):
            return "phone_number is not E.164 (+ then 7 to 15 digits, no spaces)"
        if needed in TEXT_FIELDS and len(value) > limits.max_text_chars:
            return f"{needed} has {len(value)} characters; the limit is {limits.max_text_chars}"
    issued_at, expires_at = command.get("issued_at"), command.get("expires_at")
    if not isinstance(issued_at, int) or not isinstance(expires_at, int):
        return "issued_at and expires_at must be timestamps"
    if expires_at <= issued_at:
        return "expires_at must be after issued_at"
    if expires_at - issued_at > limits.max_ttl_micros:
        return (
            f"lifetime expires_at - issued_at exceeds the limit of "
            f"{limits.max_ttl_micros // 1_000_000} s"
        )
    return None


def check_clock(issued_at: int, now_micros: int, limits: Limits) -> str | None:
    """Why ``issued_at`` cannot be trusted against the worker's clock, or None.

    Only the future is bounded here: a command issued a year ahead with a short lifetime would
    otherwise be deliverable now and replayable for a year. The past is bounded by the lifetime
    limit, since ``expires_at <= issued_at + max_ttl`` and an expired command is never delivered.
    """
    ahead = issued_at - now_micros
    if ahead > limits.max_clock_skew_micros:
        return (
            f"issued_at is {ahead / 1_000_000:.3f} s ahead of the worker's clock; at most "
            f"{limits.max_clock_skew_micros / 1_000_000:g} s of clock skew is accepted"
        )
    return None


def check_conversation(command_type: str, status: str | None, chat: bool | None) -> str | None:
    """Why the conversation cannot take the command (REST ``status``, chat or voice), or None.

    ``status`` None means the upstream does not know the conversation; ``chat`` None that it
    did not say whether it is chat (REST ``metadata.text_only``): takeover commands then fail
    closed, since delivering one to a voice call is what the check exists to prevent.
    """
    if status is None:
        return "conversation not found upstream"
    if status != "in-progress":
        return f"conversation is not live (status {status})"
    if command_type in CHAT_ONLY and chat is not True:
        kind = "voice" if chat is False else "of unknown kind (no metadata.text_only upstream)"
        return f"{command_type} works in chat conversations only; this one is {kind}"
    if command_type in PHONE_ONLY and chat is True:
        return f"{command_type} works in phone conversations only; this one is chat"
    return None
