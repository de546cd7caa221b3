"""Shape checks of a decoded ControlCommand (sans-I/O): each failure is a reason string.

Parameters are strict: a command must carry the parameter its type needs and no other one, so
that an issuer's mistake (a phone number on ``end_call``) is reported instead of ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.commands import CHAT_ONLY, COMMAND_TYPES, E164

PARAMETER_FIELDS: tuple[str, ...] = ("phone_number", "text", "contextual_update")
# The record field each command type needs (None: no parameter at all).
REQUIRED_FIELD: dict[str, str | None] = {
    "end_call": None,
    "transfer_to_number": "phone_number",
    "contextual_update": "contextual_update",
    "enable_human_takeover": None,
    "send_human_message": "text",
    "disable_human_takeover": None,
}
TEXT_FIELDS = frozenset({"text", "contextual_update"})
# Ids end up in a URL path and in logs: a conservative alphabet, bounded length.
IDENTIFIER = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Limits:
    """Configurable bounds: text length in characters, lifetime of a command in microseconds."""

    max_text_chars: int = 2000
    max_ttl_micros: int = 3600 * 1_000_000


def check_shape(command: Mapping[str, Any], limits: Limits) -> str | None:
    """Why ``command`` is malformed, or None: ids, type, parameters, E.164, text length, times."""
    for name in ("command_id", "conversation_id"):
        value = command.get(name)
        if not isinstance(value, str) or not IDENTIFIER.match(value):
            return f"invalid {name}: expected 1-128 characters of [A-Za-z0-9_.:-]"
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
        if needed == "phone_number" and not E164.match(value):
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


def check_conversation(command_type: str, status: str | None, chat: bool | None) -> str | None:
    """Why the conversation cannot take the command (REST ``status``, chat or voice), or None.

    ``status`` None means the upstream does not know the conversation.
    """
    if status is None:
        return "conversation not found upstream"
    if status != "in-progress":
        return f"conversation is not live (status {status})"
    if command_type in CHAT_ONLY and chat is False:
        return f"{command_type} works in chat conversations only; this one is voice"
    return None
