"""A Schema Registry outage delays commands; it never turns one into a ``rejected`` result.

The command worker meets a ControlCommand whose schema id it has not seen while the registry
answers 503: it retries with back-off until the registry is back, then delivers. The registry
here is the in-process stand-in (:class:`tests.registry_server.FakeRegistry`), whose outage can
be switched on; the broker, simulator and worker are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from commands.client import CommandClient
from commands.metrics import CommandMetrics
from commands.policy import parse_policy
from commands.worker import CommandWorker
from convostream.broker import EmbeddedBroker, create_topics
from schemas.avro_schemas import schema_text
from schemas.registry import Retry
from schemas.serde import open_serde
from schemas.topics import COMMAND_INTENTS, COMMAND_RESULTS, COMMANDS
from tests.commands_rig import (
    KEYRING,
    KEYS,
    POLICY_DOC,
    commands_log,
    new_prefix,
    start_simulator,
    worker_settings,
    write_policy,
)
from tests.registry_server import fake_registry_server

pytestmark = pytest.mark.integration


async def test_a_registry_outage_delays_a_command_and_never_rejects_it(
    kafka_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    prefix = new_prefix()
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    log = tmp_path / "commands.jsonl"
    sim = await start_simulator(log, conversations=2)
    async with contextlib.AsyncExitStack() as stack:
        fake, url = await stack.enter_async_context(fake_registry_server())
        # the sender writes with a version of ControlCommand (same schema, other text, so
        # another id) that the worker has never seen: it must look the id up
        variant = json.dumps(json.loads(schema_text("ControlCommand")), indent=1)
        sender_id = fake.add(f"{COMMANDS.full_name(prefix)}-value", variant)
        sender = await stack.enter_async_context(
            await open_serde(url, (COMMANDS,), prefix, lookup_only=True)
        )
        assert sender.registry.writer_id("ControlCommand") == sender_id
        serde = await stack.enter_async_context(
            await open_serde(
                url,
                (COMMAND_RESULTS, COMMAND_INTENTS),
                prefix,
                retry=Retry(first=0.1, cap=0.5),
            )
        )
        assert serde.registry.known(sender_id) is None
        settings = worker_settings(
            kafka_broker.bootstrap, prefix, sim, write_policy(tmp_path / "policy.json")
        )
        worker = CommandWorker(
            settings, parse_policy(POLICY_DOC), KEYRING, serde, CommandMetrics(CollectorRegistry())
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        client = CommandClient(
            kafka_broker.bootstrap, issuer="svc", key=KEYS["svc"], topic_prefix=prefix, serde=sender
        )
        await client.start()
        try:
            conversation = next(c for c in sim.conversations if c.live).conversation_id
            fake.methods.clear()
            fake.outage = 10**6  # down from now on
            send = asyncio.create_task(
                client.send("contextual_update", conversation, text="VIP", ttl=120, timeout=120)
            )
            while fake.methods.count("GET") < 5:  # the worker is retrying the look-up
                assert not send.done(), send.result()
                await asyncio.sleep(0.1)
            assert commands_log(log) == []
            fake.outage = 0  # back
            result = await send
            assert (result["status"], result["reason"]) == ("delivered", None), result
            assert [r["conversation_id"] for r in commands_log(log)] == [conversation]
        finally:
            stop.set()
            await client.close()
            await task  # a worker that failed fails the test
            await sim.stop()
