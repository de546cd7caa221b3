"""The command holes of issue 9, each produced straight onto ``convai.commands`` with a raw
producer (no send-command, no client), against two workers in one group: the result's status
and reason, and nothing in the simulator's commands log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from convostream.broker import EmbeddedBroker
from schemas.clock import now_micros
from schemas.commands import build_command
from schemas.serde import Serde
from schemas.signing import sign
from simulator.testing import wait_for
from tests.commands_rig import KEYS, Rig, results_for, running_rig

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

YEAR = 365 * 86400 * 1_000_000


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(
    kafka_broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    async with running_rig(
        kafka_broker.bootstrap, tmp_path_factory.mktemp("holes"), workers=2
    ) as r:
        # both workers hold partitions, so copies on different partitions meet different workers
        await wait_for(lambda: all(w.assignment() for w in r.workers), 90)
        yield r


async def produce(rig: Rig, command: dict[str, Any], partitions: list[int] | None = None) -> None:
    """The signed record's bytes, as any service could write them, on the given partitions
    (default: the partition of its key)."""
    value = Serde().encode("ControlCommand", command)
    key = command["conversation_id"].encode()
    producer = AIOKafkaProducer(bootstrap_servers=rig.bootstrap)
    await producer.start()
    try:
        topic = f"{rig.prefix}convai.commands"
        sends = [producer.send(topic, value, key=key, partition=p) for p in partitions or [None]]
        await asyncio.gather(*[await send for send in sends])
    finally:
        await producer.stop()


async def results(rig: Rig, command_id: str, count: int) -> list[dict[str, Any]]:
    """The command's results once ``count`` are on the results topic (then a moment more, so
    that one too many would show)."""
    topic = f"{rig.prefix}convai.command-results"
    found: list[dict[str, Any]] = []
    for _ in range(600):
        found = await results_for(rig.bootstrap, topic, command_id)
        if len(found) >= count:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    return await results_for(rig.bootstrap, topic, command_id)


def signed(kind: str, conversation: str, **over: Any) -> dict[str, Any]:
    command = build_command(kind, conversation, issuer="svc", key=KEYS["svc"])
    command.update(over)
    command["signature"] = sign(command, KEYS["svc"])
    return command


async def test_voice_takeover_is_rejected_on_a_warm_socket(rig: Rig) -> None:
    voice = rig.conversation("voice").conversation_id
    warm_up = signed("contextual_update", voice, contextual_update="warm the socket")
    await produce(rig, warm_up)
    assert [r["status"] for r in await results(rig, warm_up["command_id"], 1)] == ["delivered"]
    before = len(rig.received(voice))
    takeover = signed("enable_human_takeover", voice)
    await produce(rig, takeover)
    [result] = await results(rig, takeover["command_id"], 1)
    assert result["status"] == "rejected", result
    assert "works in chat conversations only; this one is voice" in result["reason"]
    assert len(rig.received(voice)) == before


async def test_the_same_signed_record_on_every_partition_is_delivered_once(rig: Rig) -> None:
    """A command that leaves the conversation live (an end_call would end it, so later copies
    could fail for that reason instead), copied to all six partitions at once: both workers
    decide copies concurrently."""
    chat = rig.conversation("chat", 1).conversation_id
    update = signed("contextual_update", chat, contextual_update="only once")
    await produce(rig, update, partitions=list(range(6)))
    found = await results(rig, update["command_id"], 6)
    statuses = sorted(r["status"] for r in found)
    assert statuses == ["delivered", *["duplicate"] * 5], found
    assert {r["worker_id"] for r in found} == {w.worker_id for w in rig.workers}
    assert [f["frame"] for f in rig.received(chat)] == [
        '{"command_type":"contextual_update","parameters":{"contextual_update":"only once"}}'
    ]


async def test_a_number_with_a_trailing_newline_is_not_e164(rig: Rig) -> None:
    chat = rig.conversation("chat").conversation_id
    transfer = signed("transfer_to_number", chat, phone_number="+14155550100\n")
    await produce(rig, transfer)
    [result] = await results(rig, transfer["command_id"], 1)
    assert result["status"] == "rejected", result
    assert "phone_number is not E.164" in result["reason"]
    assert rig.received(chat) == []


async def test_a_command_issued_a_year_ahead_is_rejected(rig: Rig) -> None:
    voice = rig.conversation("voice", 2)
    issued_at = now_micros() + YEAR
    future = signed(
        "end_call", voice.conversation_id, issued_at=issued_at, expires_at=issued_at + 3000 * 10**6
    )
    await produce(rig, future)
    [result] = await results(rig, future["command_id"], 1)
    assert result["status"] == "rejected", result
    assert "ahead of the worker's clock" in result["reason"]
    assert rig.received(voice.conversation_id) == []
    assert voice.live
