"""``convostream broker``: the embedded broker in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click
from pydantic import Field

from convostream import runtime
from convostream.broker import EmbeddedBroker
from convostream.logs import get_logger
from convostream.settings import CommonSettings, load_settings, settings_options


class BrokerSettings(CommonSettings):
    broker_port: int = Field(
        9092,
        ge=0,
        le=65535,
        description="Port on 127.0.0.1 (0: any free port).",
        json_schema_extra={"flag": "--port"},
    )
    broker_create_topics: bool = Field(
        True,
        description="Create the topic catalogue once the broker answers.",
        json_schema_extra={"flag": "--create-topics"},
    )


@click.command()
@settings_options(BrokerSettings)
def broker(**values: Any) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in memory) on loopback.

    Waits until the broker answers, creates the catalogue's topics, prints the bootstrap address
    and runs until Ctrl-C. Storage is in memory: everything is gone when it stops.
    """
    settings = load_settings(BrokerSettings, values)
    runtime.setup(settings)
    log = get_logger("convostream.broker")
    embedded = EmbeddedBroker(
        port=settings.broker_port,
        prefix=settings.topic_prefix,
        create=settings.broker_create_topics,
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        log.info("stopping broker", signal=signal.Signals(signum).name)
        embedded.terminate()  # only signal here: the main thread is inside wait()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    embedded.start()
    click.echo(f"bootstrap: {embedded.bootstrap}", err=True)
    code = embedded.wait() if embedded.running() else 0
    embedded.stop()
    if not stopping:
        log.error("broker exited unexpectedly", code=code)
        sys.exit(1)
