"""A command worker whose ledger rebuild outlasts the group session keeps its membership.

aiokafka sends no heartbeat while a rebalance callback runs, so a worker that rebuilt its ledger
(intents caught up, results read to the end) inside ``on_partitions_assigned`` would be expelled
whenever that read took longer than the session timeout, rejoin, rebuild again and be expelled
again, answering no command meanwhile. The rebuild here is made slower than the session by a
pause before the real one: a results read against a slow broker, on purpose.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from commands.worker import CommandWorker
from convostream.kafka_engine import KafkaBroker
from schemas.topics import COMMANDS
from tests.commands_rig import running_rig

pytestmark = pytest.mark.integration

SESSION_MS = 2000


class SlowRebuild(CommandWorker):
    """The real worker; each rebuild first waits longer than the session timeout."""

    rebuilds = 0

    async def rebuild(self, assigned: list[TopicPartition]) -> None:
        self.rebuilds += 1
        await asyncio.sleep(2 * SESSION_MS / 1000)
        await super().rebuild(assigned)


async def test_a_rebuild_longer_than_the_session_keeps_the_worker_in_its_group(
    kafka_broker: Any, tmp_path: Path
) -> None:
    if not isinstance(kafka_broker, KafkaBroker):
        pytest.skip("Tansu does not expel a member that stops heartbeating: Kafka session only")
    async with running_rig(
        kafka_broker.bootstrap,
        tmp_path,
        worker_type=SlowRebuild,
        group_session_timeout_ms=SESSION_MS,
    ) as rig:
        worker = rig.worker
        assert isinstance(worker, SlowRebuild)
        chat = rig.conversation("chat").conversation_id
        result = await rig.client.send("contextual_update", chat, text="hello", timeout=60)
        assert result["status"] == "delivered", result
        await asyncio.sleep(3 * SESSION_MS / 1000)  # expelled, it would rejoin and rebuild again
        assert worker.rebuilds == 1
        assert worker.assignment() == set(range(COMMANDS.partitions))
        assert "assignment" not in worker.health.ready()[1]  # the broker probe is not run here
        assert [r["command_type"] for r in rig.received(chat)] == ["contextual_update"]
