"""A rules engine whose state restore outlasts the group session keeps its membership.

aiokafka sends no heartbeat while a rebalance callback runs, so an engine that read its
changelog inside ``on_partitions_assigned`` was expelled whenever that read took longer than the
session timeout (on Kafka, seconds while new topics elect leaders), rejoined, restored again and
was expelled again. The restore here is made slower than the session by a pause before the real
one: a changelog read against a slow broker, on purpose.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from convostream.broker import create_topics
from convostream.kafka_engine import KafkaBroker
from convostream.ops import Health
from rules.engine import RulesEngine
from rules.metrics import RulesMetrics
from rules.settings import RulesSettings
from rules.spec import load_rules
from schemas.serde import Serde
from tests.commands_rig import KEYS
from tests.rules_harness import EXAMPLE_RULES, rules_env

pytestmark = pytest.mark.integration

SESSION_MS = 2000


class SlowRestore(RulesEngine):
    """The real engine; each restore first waits longer than the session timeout."""

    restores = 0

    async def restore(self, partitions: list[int]) -> None:
        self.restores += 1
        await asyncio.sleep(2 * SESSION_MS / 1000)
        await super().restore(partitions)


async def test_a_restore_longer_than_the_session_keeps_the_engine_in_its_group(
    kafka_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not isinstance(kafka_broker, KafkaBroker):
        pytest.skip("Tansu does not expel a member that stops heartbeating: Kafka session only")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    env = rules_env(
        kafka_broker.bootstrap, prefix, "http://127.0.0.1:9", "key", "svc", KEYS["svc"],
        CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS=str(SESSION_MS),
    )  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = RulesSettings()
    _, key = settings.issuer_and_key()
    health = Health("rules")
    health.declare("broker", "assignment")
    engine = SlowRestore(
        settings,
        load_rules(EXAMPLE_RULES),
        key,
        Serde(),
        RulesMetrics(CollectorRegistry()),
        health,
    )
    health.set("broker", True)  # the process's broker probe is not part of this test
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    try:
        async with asyncio.timeout(60):
            while "assignment" in health.ready()[1]:
                assert not task.done(), task
                await asyncio.sleep(0.1)
        await asyncio.sleep(3 * SESSION_MS / 1000)  # expelled, it would rejoin and restore again
        assert engine.restores == 1
        assert "assignment" not in health.ready()[1]
        assert engine._consumer is not None
        assert len(engine._consumer.assignment()) == 12
        assert not engine._consumer.paused()  # restored partitions are read again
    finally:
        stop.set()
        await task
