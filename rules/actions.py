"""What a fire becomes: a signed ControlCommand for ``convai.commands`` or an Alert for
``convai.alerts`` (sans-I/O). Both carry the fire's deterministic id."""

from __future__ import annotations

from rules.core import Fire
from schemas.commands import build_command
from schemas.records import Alert, ControlCommand


def command_record(
    fire: Fire, *, issuer: str, key: str, key_id: str | None = None, ttl: float, now: int
) -> ControlCommand:
    """The signed command of a command rule, signed with the key named ``key_id`` exactly as
    ``send-command`` signs; the workers check it like any issuer's."""
    then = fire.rule.then
    assert then.command is not None
    return build_command(
        then.command,
        fire.conversation_id,
        issuer=issuer,
        key=key,
        key_id=key_id,
        phone_number=then.phone_number,
        text=then.parameter(),
        ttl=ttl,
        command_id=fire.fire_id,
        now=now,
    )


def alert_record(fire: Fire, *, now: int) -> Alert:
    """The Alert of an alert rule."""
    assert fire.rule.then.alert is not None
    return {
        "alert_id": fire.fire_id,
        "rule": fire.rule.name,
        "conversation_id": fire.conversation_id,
        "agent_id": fire.agent_id,
        "severity": fire.rule.then.alert,
        "event_key": fire.event_key,
        "raised_at": now,
        "detail": fire.rule.describe(),
    }
