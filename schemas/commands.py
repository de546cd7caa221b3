"""Control commands of the upstream monitor socket (UPSTREAM.md §3): shared by the command
workers, which send them, and the simulator, which receives them."""

from __future__ import annotations

import re
import uuid

from schemas.clock import now_micros
from schemas.records import ControlCommand
from schemas.signing import sign

COMMAND_TYPES: tuple[str, ...] = (
    "end_call",
    "transfer_to_number",
    "contextual_update",
    "enable_human_takeover",
    "send_human_message",
    "disable_human_takeover",
)
# Human takeover exists for chat (text) conversations only.
CHAT_ONLY = frozenset({"enable_human_takeover", "send_human_message", "disable_human_takeover"})
# Transfer to a number is a phone-call tool (the system-tool docs say phone calls only).
PHONE_ONLY = frozenset({"transfer_to_number"})
# E.164: a plus, a country code that does not start with 0, at most 15 digits in all. Anchored
# with \A and \Z, not ^ and $ ($ also matches before a final newline: "+14155550100\n"), so
# match, fullmatch and search all accept the whole string or nothing.
E164 = re.compile(r"\A\+[1-9][0-9]{6,14}\Z")
# The record field each command type needs (None: no parameter at all).
REQUIRED_FIELD: dict[str, str | None] = {
    "end_call": None,
    "transfer_to_number": "phone_number",
    "contextual_update": "contextual_update",
    "enable_human_takeover": None,
    "send_human_message": "text",
    "disable_human_takeover": None,
}


def build_command(
    command_type: str,
    conversation_id: str,
    *,
    issuer: str,
    key: str,
    key_id: str | None = None,
    phone_number: str | None = None,
    text: str | None = None,
    ttl: float = 30.0,
    command_id: str | None = None,
    now: int | None = None,
) -> ControlCommand:
    """A ControlCommand record signed with ``key`` (named ``key_id``, if the issuer has several).
    ``text`` fills the field the type needs (``contextual_update`` or ``text``); unknown types
    keep it in ``text``, for the worker to reject with a reason."""
    issued_at = now_micros() if now is None else now
    field = REQUIRED_FIELD.get(command_type)
    record: ControlCommand = {
        "command_id": command_id or str(uuid.uuid4()),
        "conversation_id": conversation_id,
        "command_type": command_type,
        "phone_number": phone_number,
        "text": None,
        "contextual_update": None,
        "issued_by": issuer,
        "key_id": key_id,
        "issued_at": issued_at,
        "expires_at": issued_at + int(ttl * 1_000_000),
        "signature": None,
    }
    if text is not None and field == "contextual_update":
        record["contextual_update"] = text
    elif text is not None:
        record["text"] = text
    record["signature"] = sign(record, key)
    return record
