"""Shared fixtures: one real embedded broker per test session, on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from convostream.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedBroker]:
    """A Tansu broker with the topic catalogue created; stopped when the session ends."""
    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
