"""``convostream rules`` (run the engine) and ``convostream rules check FILE``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from convostream import runtime
from convostream.issuer import KeysError
from convostream.settings import ConfigError, load_settings, settings_options
from rules.settings import RulesSettings
from rules.spec import RulesError, load_rules


@click.group("rules", invoke_without_command=True)
@settings_options(RulesSettings)
@click.pass_context
def rules(ctx: click.Context, /, **values: Any) -> None:
    """The rules engine: live conditions on monitor events become signed commands and alerts.

    Without a sub-command, runs the engine: convostream rules --rules-file F --issuer NAME.
    The signing key comes from CONVOSTREAM_COMMANDS_KEY or --key-file, never a flag. SIGHUP
    reloads the rules file (a bad file keeps the rules in force).
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings(RulesSettings, values)
    if settings.rules_file is None:
        raise ConfigError("CONVOSTREAM_RULES_FILE / --rules-file is required")
    try:
        _issuer, key = settings.issuer_and_key()
    except KeysError as exc:
        raise ConfigError(str(exc)) from None
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    runtime.setup(settings, (key, api_key))
    rules_file = settings.rules_file
    try:
        loaded = load_rules(rules_file)
    except RulesError as exc:
        raise ConfigError(str(exc)) from None

    from prometheus_client import CollectorRegistry

    from convostream.ops import Health
    from rules.engine import RulesEngine
    from rules.metrics import RulesMetrics
    from schemas.serde import open_serde
    from schemas.topics import ALERTS, COMMANDS, RULES_STATE

    runtime.tune_gc()
    registry = CollectorRegistry()
    health = Health("rules")
    health.declare("broker", "assignment")
    runtime.serve_ops(settings.metrics_port, health, registry)

    async def run(stop: asyncio.Event) -> None:
        serde = await open_serde(
            settings.schema_registry_url,
            () if settings.rules_dry_run else (COMMANDS, ALERTS, RULES_STATE),
            settings.topic_prefix,
            lookup_only=settings.schema_registry_lookup_only,
            access=settings.registry_access(),
        )
        async with serde:
            engine = RulesEngine(
                settings,
                loaded,
                key,
                serde,
                RulesMetrics(registry),
                health,
                load=lambda: load_rules(rules_file),
            )
            await engine.run(stop)

    runtime.run_component(settings, health, run)


@rules.command("check")
@click.argument("path", type=click.Path(path_type=Path))
def check(path: Path) -> None:
    """Validate a rules file without running anything (exit 0 valid, 2 invalid)."""
    try:
        loaded = load_rules(path)
    except RulesError as exc:
        raise ConfigError(str(exc)) from None
    for rule in loaded:
        click.echo(f"{rule.name}: {rule.describe()} -> {rule.then.action()}")
    click.echo(f"{path}: {len(loaded)} rules OK")
