"""Shared fixtures: one real embedded broker per test session, on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Every consumer group in the suite runs on the embedded Tansu broker, which holds a join for half
# a session timeout: a short session makes workers ready in seconds (see README, embedded broker).
os.environ.setdefault("CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS", "2000")

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


@pytest.fixture
async def simulator_factory():  # type: ignore[no-untyped-def]
    """Start in-process simulators on free ports: ``sim = await simulator_factory(seed=1)``.

    Knobs are SimulatorSettings fields with or without the ``sim_`` prefix; the API key defaults
    to ``simulator.testing.API_KEY``. Every simulator started is stopped after the test.
    """
    from simulator.testing import SimulatorFactory

    async with SimulatorFactory() as factory:
        yield factory
