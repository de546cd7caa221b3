"""``convostream webhooks``: verified post-call webhooks into Kafka, and gap backfill."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from convostream import runtime
from convostream.settings import ConfigError, load_settings, settings_options
from postcall.settings import WebhookSettings


@click.command()
@settings_options(WebhookSettings)
def webhooks(**values: Any) -> None:
    """Receive signed post-call webhooks; repair gapped conversations from their transcripts.

    The signing secret is read from CONVOSTREAM_WEBHOOK_SECRET only (never a flag) and never
    logged. Each post_call_transcription delivery whose ElevenLabs-Signature verifies becomes one
    PostCall record on convai.postcall (retries are recognised and published once). With
    --backfill (the default) it also follows convai.conversations and convai.monitor.events:
    a conversation that had a gap gets the turns the live stream missed republished from its
    transcript (REST, or the webhook when it came first), and every finished conversation a
    verdict (complete, repaired, gapped) on convai.conversations.
    """
    settings = load_settings(WebhookSettings, values)
    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        raise ConfigError("CONVOSTREAM_WEBHOOK_SECRET is required (the webhook signing secret)")
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    runtime.setup(settings, secrets=(settings.webhook_secret.get_secret_value(), api_key))
    from postcall.metrics import WebhookMetrics
    from postcall.service import run

    metrics = WebhookMetrics()

    async def main(stop: asyncio.Event) -> None:
        await run(settings, metrics, stop)

    runtime.run_until_signal(main)
