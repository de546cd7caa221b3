"""Sans-I/O handling of control frames a monitor sends (UPSTREAM.md §3).

:func:`parse` reads a frame, :func:`apply` changes a :class:`~simulator.script.ConversationScript`
and says what happened, for the commands log. The upstream sends no acknowledgement, so neither
does the simulator: effects are only visible in the event stream and the REST status.

Choices where the upstream is undocumented:
- ``end_call``: the agent's ``end_call`` system tool fires (agent_tool_request/response/full
  payload), then the conversation ends (sockets close 1000, status processing → done).
- ``transfer_to_number``: phone (voice) calls only (in chat it is logged as not applied, and
  nothing is emitted); needs ``parameters.phone_number`` in E.164; emits the
  ``transfer_to_number`` system tool frames with ``is_error`` false and then ends the call (the
  caller has left the agent). A missing or malformed number is not applied, and nothing is emitted.
- ``contextual_update``: needs ``parameters.contextual_update`` (``text`` is accepted too); it is
  accepted and logged, with no visible effect.
- ``enable_human_takeover`` / ``send_human_message`` / ``disable_human_takeover``: chat only (in
  voice they are logged as not applied). Takeover stops the agent's generated replies until it is
  disabled; ``send_human_message`` (``parameters.text``) needs takeover enabled and emits an
  ``agent_response`` with the operator's text at the next turn boundary.
- Anything else (bad JSON, unknown type, binary frame) is logged as not accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.commands import CHAT_ONLY, COMMAND_TYPES, E164, PHONE_ONLY
from simulator.script import ConversationScript, Frame


@dataclass
class Command:
    command_type: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class CommandEffect:
    """What a command did: ``accepted`` (applied), a short ``effect``, frames it produced."""

    accepted: bool
    effect: str
    frames: list[Frame] = field(default_factory=list)
    ends_conversation: bool = False


def parse(text: str | bytes) -> Command:
    """Read a command frame; never raises."""
    if isinstance(text, bytes):
        return Command(None, error="binary frame")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Command(None, error="invalid JSON")
    if not isinstance(data, dict):
        return Command(None, error="not a JSON object")
    kind = data.get("command_type")
    params = data.get("parameters") or {}
    if not isinstance(kind, str):
        return Command(None, error="missing command_type")
    if not isinstance(params, dict):
        return Command(kind, error="parameters must be an object")
    if kind not in COMMAND_TYPES:
        return Command(kind, params, error="unknown command_type")
    return Command(kind, params)


def _text_param(params: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = params.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


def apply(script: ConversationScript, command: Command, now: float) -> CommandEffect:
    """Apply ``command`` to a live conversation at virtual time ``now``."""
    if command.error is not None or command.command_type is None:
        return CommandEffect(False, f"rejected: {command.error}")
    kind = command.command_type
    params = command.parameters
    if script.finished:
        return CommandEffect(False, "not applied: conversation already ended")
    if kind in CHAT_ONLY and script.kind != "chat":
        return CommandEffect(False, "not applied: voice conversation (human takeover is chat only)")
    if kind in PHONE_ONLY and script.kind != "voice":
        return CommandEffect(
            False, "not applied: chat conversation (transfer_to_number is phone only)"
        )
    if kind == "end_call":
        return CommandEffect(
            True, "conversation ended", script.end_call(now), ends_conversation=True
        )
    if kind == "transfer_to_number":
        number = _text_param(params, "phone_number")
        if number is None or not E164.match(number):
            return CommandEffect(False, "rejected: phone_number missing or not E.164")
        return CommandEffect(
            True,
            "transferred; conversation ended",
            script.transfer(now, number),
            ends_conversation=True,
        )
    if kind == "contextual_update":
        if _text_param(params, "contextual_update", "text") is None:
            return CommandEffect(False, "rejected: contextual_update text missing")
        return CommandEffect(True, "context noted (no visible effect)")
    if kind == "enable_human_takeover":
        if script.takeover:
            return CommandEffect(True, "takeover already enabled")
        script.takeover = True
        return CommandEffect(True, "takeover enabled", [script.operator(now, connected=True)])
    if kind == "disable_human_takeover":
        if not script.takeover:
            return CommandEffect(True, "takeover was not enabled")
        script.takeover = False
        return CommandEffect(True, "takeover disabled", [script.operator(now, connected=False)])
    # send_human_message
    text = _text_param(params, "text")
    if text is None:
        return CommandEffect(False, "rejected: text missing")
    if not script.takeover:
        return CommandEffect(False, "not applied: human takeover is not enabled")
    script.human_message(text)
    return CommandEffect(True, "human message queued as agent_response")
