"""Knobs of ``convostream rules``: flags and ``CONVOSTREAM_*`` variables.

The issuer and its key are the ones every issuing service uses (``convostream.issuer``); the
upstream URL and API key serve the channel lookup (``metadata.text_only``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from convostream.issuer import IssuerSettings
from convostream.settings import OpsSettings, UpstreamSettings, flag


class RulesSettings(IssuerSettings, UpstreamSettings, OpsSettings):
    """One rules-engine process."""

    rules_file: Path | None = Field(
        None,
        description="YAML rules file (required); SIGHUP reloads it.",
        json_schema_extra=flag("--rules-file"),
    )
    rules_group_id: str = Field(
        "convostream-rules",
        description="Consumer group over convai.monitor.events; also names this engine's state "
        "in convai.rules.state. Engines with different rules need different groups.",
        json_schema_extra=flag("--group-id"),
    )
    rules_dry_run: bool = Field(
        False,
        description="Log what would fire; write no command, alert, state or offset.",
        json_schema_extra=flag("--dry-run"),
    )
    rules_fetch_wait_ms: int | None = Field(
        None,
        ge=1,
        description="Longest a fetch waits for new events (fetch.max.wait.ms). Unset: 500, or "
        "10 with CONVOSTREAM_BROKER_COMPAT=tansu, because Tansu answers a long poll only at "
        "its deadline instead of when data arrives.",
        json_schema_extra=flag("--fetch-wait-ms"),
    )
    rules_silence_grace: float = Field(
        2.0,
        ge=0,
        description="Seconds the wall clock must pass a silence rule's deadline, beyond the "
        "event-time check, before a conversation that went quiet fires (covers the delay "
        "from the collector to this engine).",
        json_schema_extra=flag("--silence-grace"),
    )
    rules_lookup_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds per conversation REST lookup (channel of rules with when.channel).",
        json_schema_extra=flag("--lookup-timeout"),
    )
