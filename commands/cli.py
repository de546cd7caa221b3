"""``convostream command-worker`` and ``convostream send-command``."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
import orjson

from commands.settings import CommandWorkerSettings, SendCommandSettings
from convostream import runtime
from convostream.issuer import KeysError
from convostream.settings import ConfigError, load_settings, settings_options
from schemas.avro_schemas import timestamp_fields
from schemas.clock import micros_to_iso
from schemas.commands import COMMAND_TYPES

EXIT_CODES = {
    "delivered": 0,
    "rejected": 3,
    "expired": 4,
    "duplicate": 5,
    "failed": 6,
    "timeout": 7,
}


@click.command("command-worker")
@settings_options(CommandWorkerSettings)
def command_worker(**values: Any) -> None:
    """Consume convai.commands, deliver each command upstream, write convai.command-results.

    Signing keys: CONVOSTREAM_COMMANDS_KEYS='{"issuer": "key"}' (or '{"issuer": {"key_id":
    "key"}}' for several active keys) and/or --keys-dir.
    """
    settings = load_settings(CommandWorkerSettings, values)
    try:
        keys = settings.issuer_keys()
    except KeysError as exc:
        raise ConfigError(str(exc)) from None
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    runtime.setup(settings, (api_key, *keys.secrets()))
    if settings.commands_policy_file is None:
        raise ConfigError("CONVOSTREAM_COMMANDS_POLICY_FILE / --policy-file is required")
    from prometheus_client import CollectorRegistry

    from commands.metrics import CommandMetrics
    from commands.policy import PolicyError, load_policy
    from commands.worker import CommandWorker
    from convostream.ops import Health
    from schemas.serde import open_serde
    from schemas.topics import COMMAND_INTENTS, COMMAND_RESULTS

    try:
        policy = load_policy(settings.commands_policy_file)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    registry = CollectorRegistry()
    health = Health("command-worker")
    health.declare("broker", "assignment")
    runtime.serve_ops(settings.metrics_port, health, registry)

    async def run(stop: asyncio.Event) -> None:
        serde = await open_serde(
            settings.schema_registry_url,
            (COMMAND_RESULTS, COMMAND_INTENTS),
            settings.topic_prefix,
            lookup_only=settings.schema_registry_lookup_only,
            access=settings.registry_access(),
        )
        async with serde:
            metrics = CommandMetrics(registry)
            await CommandWorker(settings, policy, keys, serde, metrics, health).run(stop)

    runtime.run_component(settings, health, run)


@click.command("send-command")
@click.argument("command_type", metavar="TYPE")
@click.option("--conversation", required=True, help="Target conversation_id.")
@click.option("--phone-number", default=None, help="E.164 number (transfer_to_number).")
@click.option("--text", default=None, help="Text (contextual_update, send_human_message).")
@click.option("--command-id", default=None, help="Idempotency key (default: a new UUID).")
@settings_options(SendCommandSettings)
def send_command(
    command_type: str,
    conversation: str,
    phone_number: str | None,
    text: str | None,
    command_id: str | None,
    **values: Any,
) -> None:
    """Sign one command, put it on convai.commands, wait for its result and print it as JSON.

    TYPE is one of: end_call, transfer_to_number, contextual_update, enable_human_takeover,
    send_human_message, disable_human_takeover.

    \b
    Exit codes: 0 delivered, 3 rejected, 4 expired, 5 duplicate, 6 failed,
    7 timeout (no result in --timeout seconds), 2 bad configuration.
    The signing key comes from CONVOSTREAM_COMMANDS_KEY or --key-file, never a flag.
    """
    settings = load_settings(SendCommandSettings, values)
    try:
        _issuer, key = settings.issuer_and_key()
    except KeysError as exc:
        raise ConfigError(str(exc)) from None
    runtime.setup(settings, (key,))
    if command_type not in COMMAND_TYPES:
        click.echo(f"note: {command_type!r} is not a known command type", err=True)
    code = asyncio.run(
        _send(settings, key, command_type, conversation, phone_number, text, command_id)
    )
    sys.exit(code)


async def _send(
    settings: SendCommandSettings,
    key: str,
    command_type: str,
    conversation: str,
    phone_number: str | None,
    text: str | None,
    command_id: str | None,
) -> int:
    from commands.client import CommandClient, CommandTimeout
    from schemas.serde import open_serde
    from schemas.topics import COMMANDS

    assert settings.commands_issuer is not None
    serde = await open_serde(
        settings.schema_registry_url,
        (COMMANDS,),
        settings.topic_prefix,
        lookup_only=settings.schema_registry_lookup_only,
        access=settings.registry_access(),
    )
    async with (
        serde,
        CommandClient(
            settings.kafka_bootstrap,
            issuer=settings.commands_issuer,
            key=key,
            key_id=settings.commands_key_id,
            topic_prefix=settings.topic_prefix,
            serde=serde,
            fetch_wait_ms=settings.fetch_wait_ms(None),
            security=settings.kafka_security(),
        ) as client,
    ):
        try:
            result = await client.send(
                command_type,
                conversation,
                phone_number=phone_number,
                text=text,
                ttl=settings.commands_ttl,
                timeout=settings.commands_timeout,
                command_id=command_id,
            )
        except CommandTimeout as exc:
            click.echo(orjson.dumps({"status": "timeout", "reason": str(exc)}).decode())
            return EXIT_CODES["timeout"]
    click.echo(orjson.dumps(printable(result)).decode())
    return EXIT_CODES.get(str(result.get("status")), 1)


def printable(result: dict[str, Any]) -> dict[str, Any]:
    """A CommandResult with its timestamps as ISO-8601 UTC."""
    stamps = timestamp_fields("CommandResult")
    return {
        k: micros_to_iso(v) if k in stamps and isinstance(v, int) else v for k, v in result.items()
    }
