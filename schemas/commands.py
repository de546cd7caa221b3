"""Control commands of the upstream monitor socket (UPSTREAM.md §3): shared by the command
workers, which send them, and the simulator, which receives them."""

from __future__ import annotations

import re

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
# E.164: a plus, a country code that does not start with 0, at most 15 digits in all.
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
