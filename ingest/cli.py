"""``convostream collect``: discovery and monitor sockets into Kafka until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from convostream import runtime
from convostream.ops import Health
from convostream.settings import ConfigError, load_settings, settings_options
from ingest.collector import Collector
from ingest.metrics import Metrics
from ingest.settings import CollectorSettings


@click.command()
@settings_options(CollectorSettings)
def collect(**values: Any) -> None:
    """Discover live conversations and publish every monitored frame to Kafka.

    Run as many collectors as needed with the same --group-id: the consumer group of
    convai.conversations shares the conversations among them, and a dead collector's
    conversations move to the others within seconds. The API key is read from
    CONVOSTREAM_API_KEY or ELEVENLABS_API_KEY only (never a flag) and is never logged.
    SIGINT/SIGTERM close the sockets, flush every record, hand the conversations over and exit.
    """
    settings = load_settings(CollectorSettings, values)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if not key:
        raise ConfigError(
            "invalid configuration: CONVOSTREAM_API_KEY (or ELEVENLABS_API_KEY) is required: "
            "the xi-api-key that discovery and the monitor sockets send"
        )
    runtime.setup(settings, secrets=(key,))
    runtime.tune_gc()
    metrics = Metrics()
    health = Health("collector")
    health.declare("broker", "assignment")
    runtime.serve_ops(settings.metrics_port, health, metrics.registry)

    async def main(stop: asyncio.Event) -> None:
        await Collector(settings, metrics, health).run(stop)

    runtime.run_component(settings, health, main)
