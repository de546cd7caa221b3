"""Shared fixtures: one real broker per test session, on free loopback ports.

``--broker tansu`` (the default; or ``CONVOSTREAM_TEST_BROKER``) runs the session on the embedded
Tansu broker with ``CONVOSTREAM_BROKER_COMPAT=tansu``; ``--broker kafka`` on a single-node Apache
Kafka from Maven Central with no compatibility switch. Components started by tests inherit the
choice through the environment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from convostream import kafka_compat
from convostream.broker import BrokerProcess, EmbeddedBroker
from convostream.kafka_dist import KafkaUnavailable
from convostream.kafka_engine import KafkaBroker
from tests.needs import missing_tool

# Group sessions: Tansu holds a join for half a session (README, embedded broker), so its
# session uses 2 s. On Kafka, in-process components keep Kafka's smallest default (6 s) so a
# stall on a loaded machine does not evict them; the harnesses that kill processes use 2 s,
# which the test broker accepts because it lowers group.min.session.timeout.ms to 1 s.
SESSION_MS = {"tansu": "2000", "kafka": "6000"}

KAFKA_TEST_PROPERTIES = {
    "group.min.session.timeout.ms": "1000",
    "group.initial.rebalance.delay.ms": "0",  # the first join completes at once
}


# Property tests check outcomes, not speed: on a loaded machine (CI's two cores shared by two
# xdist workers) Hypothesis's 200 ms per-example deadline would fail correct code.
settings.register_profile("convostream", deadline=None)
settings.load_profile("convostream")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=["tansu", "kafka"],
        default=os.environ.get("CONVOSTREAM_TEST_BROKER", "tansu"),
        help="broker engine of the session (env CONVOSTREAM_TEST_BROKER; default tansu)",
    )


def pytest_configure(config: pytest.Config) -> None:
    kafka_compat.install()  # in-process components start without ``runtime.setup``
    engine = config.getoption("--broker")
    os.environ["CONVOSTREAM_TEST_BROKER"] = engine
    os.environ.setdefault("CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS", SESSION_MS[engine])
    if engine == "tansu":
        os.environ["CONVOSTREAM_BROKER_COMPAT"] = "tansu"
    else:
        os.environ.pop("CONVOSTREAM_BROKER_COMPAT", None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tansu session: everything but ``kafka_only``. Kafka session: every test that uses the
    session broker or engine (directly or through another fixture) and the ``kafka_only``
    ones, but not the ``tansu_only`` variants; the rest does not depend on the broker and ran
    in the Tansu session."""
    kafka = config.getoption("--broker") == "kafka"
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        own_kafka = item.get_closest_marker("kafka_only") is not None
        own_tansu = item.get_closest_marker("tansu_only") is not None
        fixtures = getattr(item, "fixturenames", ())
        uses_broker = "kafka_broker" in fixtures or "broker_engine" in fixtures
        wanted = (uses_broker or own_kafka) and not own_tansu if kafka else not own_kafka
        (keep if wanted else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session")
def broker_engine(pytestconfig: pytest.Config) -> str:
    """The session's engine, for tests that start a broker of their own: tansu or kafka."""
    return str(pytestconfig.getoption("--broker"))


@pytest.fixture(scope="session")
def kafka_broker(pytestconfig: pytest.Config) -> Iterator[EmbeddedBroker | KafkaBroker]:
    """The session's broker with the topic catalogue created; stopped when the session ends."""
    broker: EmbeddedBroker | KafkaBroker
    if pytestconfig.getoption("--broker") == "kafka":
        broker = KafkaBroker(properties=KAFKA_TEST_PROPERTIES)
    else:
        broker = EmbeddedBroker()
    with running(broker):
        yield broker


@contextlib.contextmanager
def running(broker: BrokerProcess, timeout: float = 120.0) -> Iterator[None]:
    """``broker`` started (a missing Java or Maven is a missing tool) and stopped afterwards."""
    try:
        broker.start(timeout=timeout)
    except KafkaUnavailable as exc:
        missing_tool(str(exc))
    try:
        yield
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
