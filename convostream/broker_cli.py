"""``convostream broker``: a broker in the foreground until SIGINT/SIGTERM.

``--engine tansu`` (the default) is the embedded Tansu broker; ``--engine kafka`` is Apache Kafka
(KRaft, one node) from Maven Central, which needs Java 17+ and, for the first run, Maven.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Literal

import click
from pydantic import Field

from convostream import runtime
from convostream.broker import EmbeddedBroker
from convostream.kafka_dist import KafkaUnavailable
from convostream.kafka_engine import KafkaBroker
from convostream.logs import get_logger
from convostream.settings import CommonSettings, load_settings, settings_options


class BrokerSettings(CommonSettings):
    broker_engine: Literal["tansu", "kafka"] = Field(
        "tansu",
        description="tansu: the embedded broker, in memory; kafka: Apache Kafka (KRaft) from "
        "Maven Central, needs Java 17+ and Maven (jars cached in CONVOSTREAM_KAFKA_CACHE, "
        "default ~/.cache/convostream/kafka), data in a temporary directory.",
        json_schema_extra={"flag": "--engine"},
    )
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
    """Run a Kafka broker on loopback: embedded Tansu (default) or Apache Kafka.

    Waits until the broker answers, creates the catalogue's topics, prints the bootstrap address
    and runs until Ctrl-C. Nothing is kept when it stops. Components talking to the Tansu engine
    need CONVOSTREAM_BROKER_COMPAT=tansu (README, the embedded broker).
    """
    settings = load_settings(BrokerSettings, values)
    runtime.setup(settings)
    log = get_logger("convostream.broker")
    engine = EmbeddedBroker if settings.broker_engine == "tansu" else KafkaBroker
    embedded = engine(
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
    try:
        embedded.start()
    except KafkaUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"bootstrap: {embedded.bootstrap}", err=True)
    code = embedded.wait() if embedded.running() else 0
    embedded.stop()
    if not stopping:
        log.error("broker exited unexpectedly", code=code)
        sys.exit(1)
