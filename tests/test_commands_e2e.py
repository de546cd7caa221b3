"""The command path end to end: real broker, real simulator, real worker, send-command CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from convostream.broker import EmbeddedBroker
from schemas.signing import sign
from simulator.testing import wait_for
from tests.commands_rig import KEYS, ROTATED_KEY, ROTATED_KEY_ID, Rig, running_rig, send_cli

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rig(
    kafka_broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Rig]:
    async with running_rig(
        kafka_broker.bootstrap,
        tmp_path_factory.mktemp("commands"),
        commands_rate_burst=5,
        commands_rate_per_second=0.01,
    ) as r:
        yield r


async def wait_status(rig: Rig, conversation_id: str, timeout: float = 15.0) -> str:
    conv = rig.sim.by_id[conversation_id]
    await wait_for(lambda: conv.status != "in-progress", timeout)
    return conv.status


async def test_six_commands_reach_the_simulator_with_the_upstream_frame_shape(rig: Rig) -> None:
    chat = rig.conversation("chat").conversation_id
    voice = rig.conversation("voice").conversation_id
    steps = [
        (
            chat,
            ["contextual_update", "--text", "VIP customer"],
            {
                "command_type": "contextual_update",
                "parameters": {"contextual_update": "VIP customer"},
            },
            "context noted",
        ),
        (
            chat,
            ["enable_human_takeover"],
            {"command_type": "enable_human_takeover", "parameters": {}},
            "takeover enabled",
        ),
        (
            chat,
            ["send_human_message", "--text", "Hello from a human"],
            {"command_type": "send_human_message", "parameters": {"text": "Hello from a human"}},
            "human message queued",
        ),
        (
            chat,
            ["disable_human_takeover"],
            {"command_type": "disable_human_takeover", "parameters": {}},
            "takeover disabled",
        ),
        (chat, ["end_call"], {"command_type": "end_call", "parameters": {}}, "conversation ended"),
        (  # a phone-call tool: voice only
            voice,
            ["transfer_to_number", "--phone-number", "+14155550100"],
            {"command_type": "transfer_to_number", "parameters": {"phone_number": "+14155550100"}},
            "transferred",
        ),
    ]
    for conversation, args, frame, effect in steps:
        code, result = await send_cli(rig, *args, "--conversation", conversation)
        assert (code, result["status"]) == (0, "delivered"), result
        assert result["reason"] is None
        received = rig.received(conversation)[-1]
        assert json.loads(received["frame"]) == frame
        assert received["frame"] == json.dumps(frame, separators=(",", ":"))
        assert received["accepted"], received
        assert effect in received["effect"]
    assert len(rig.received(chat)) == 5
    assert len(rig.received(voice)) == 1
    assert await wait_status(rig, voice) != "in-progress"  # the transfer ended it
    assert await wait_status(rig, chat) != "in-progress"  # end_call ended it


# ----- rejections: status, reason, and nothing reaches the simulator --------------------------
def record(rig: Rig, kind: str, conversation: str, **over: Any) -> dict[str, Any]:
    from schemas.commands import build_command

    params = {k: over.pop(k) for k in ("phone_number", "text") if k in over}
    issuer = over.pop("issuer", "svc")
    out = build_command(kind, conversation, issuer=issuer, key=KEYS[issuer], **params)
    out.update(over)
    if "signature" not in over:
        out["signature"] = sign(out, KEYS[issuer])
    return out


async def expect(
    rig: Rig, command: dict[str, Any], status: str, reason: str, *, delivered: int = 0
) -> dict[str, Any]:
    conversation = command["conversation_id"]
    before = len(rig.received(conversation))
    result = await rig.client.send_record(command, timeout=60)
    assert result["status"] == status, result
    assert reason in (result["reason"] or ""), result
    assert result["command_id"] == command["command_id"]
    await asyncio.sleep(0.2)  # a frame written by mistake would be logged by now
    assert len(rig.received(conversation)) == before + delivered
    return result


@pytest.mark.parametrize(
    ("kind", "over", "reason"),
    [
        ("reboot", {}, "unknown command_type 'reboot'"),
        ("transfer_to_number", {}, "missing parameter phone_number for transfer_to_number"),
        ("send_human_message", {}, "missing parameter text for send_human_message"),
        ("transfer_to_number", {"phone_number": "+1 415 555"}, "phone_number is not E.164"),
        (
            "transfer_to_number",
            {"phone_number": "+33123456789"},
            "may not transfer to +33123456789",
        ),
        ("end_call", {"issuer": "narrow"}, "issuer 'narrow' may not send end_call"),
        ("contextual_update", {"text": "x" * 2001}, "contextual_update has 2001 characters"),
        ("end_call", {"signature": None}, "unsigned command"),
        ("end_call", {"signature": "0" * 64}, "bad signature for issuer 'svc'"),
        ("end_call", {"issued_by": "ghost"}, "no signing key for issuer 'ghost'"),
    ],
)
async def test_rejections(rig: Rig, kind: str, over: dict[str, Any], reason: str) -> None:
    voice = rig.conversation("voice").conversation_id
    await expect(rig, record(rig, kind, voice, **over), "rejected", reason)


async def test_rotated_keys_are_selected_by_key_id(rig: Rig) -> None:
    """svc has two active keys: send-command signs with the rotated one when given its id."""
    voice = rig.conversation("voice", 3).conversation_id
    code, result = await send_cli(
        rig,
        "contextual_update",
        "--text",
        "rotated",
        "--conversation",
        voice,
        "--key-id",
        ROTATED_KEY_ID,
        key=ROTATED_KEY,
    )
    assert (code, result["status"]) == (0, "delivered"), result
    code, result = await send_cli(
        rig, "contextual_update", "--text", "old id", "--conversation", voice, "--key-id", "gone"
    )
    assert (code, result["status"]) == (3, "rejected")
    assert result["reason"] == "no active key 'gone' for issuer 'svc'"
    assert len(rig.received(voice)) == 1


async def test_takeover_in_a_voice_conversation_is_rejected_with_exit_code_3(rig: Rig) -> None:
    voice = rig.conversation("voice").conversation_id
    code, result = await send_cli(rig, "enable_human_takeover", "--conversation", voice)
    assert code == 3
    assert result["status"] == "rejected"
    assert "works in chat conversations only; this one is voice" in result["reason"]
    assert rig.received(voice) == []


async def test_transfer_in_a_chat_conversation_is_rejected(rig: Rig) -> None:
    chat = rig.conversation("chat").conversation_id
    command = record(rig, "transfer_to_number", chat, phone_number="+14155550100")
    await expect(rig, command, "rejected", "works in phone conversations only; this one is chat")


async def test_commands_for_conversations_that_are_not_live_are_rejected(rig: Rig) -> None:
    ended = rig.conversation("voice", 2).conversation_id
    await expect(rig, record(rig, "end_call", ended), "delivered", "", delivered=1)
    await wait_status(rig, ended)
    await expect(rig, record(rig, "end_call", ended), "rejected", "conversation is not live")
    await expect(rig, record(rig, "end_call", "conv_unknown"), "rejected", "not found upstream")


async def test_expired_end_call_never_runs(rig: Rig) -> None:
    voice = rig.conversation("voice", 1)
    past = record(rig, "end_call", voice.conversation_id)
    past["issued_at"] -= 120_000_000
    past["expires_at"] = past["issued_at"] + 1_000_000
    past["signature"] = sign(past, KEYS["svc"])
    await expect(rig, past, "expired", "expired")
    assert voice.live


async def test_duplicate_command_id_is_delivered_once(rig: Rig) -> None:
    chat = rig.conversation("chat", 1).conversation_id
    command = record(rig, "contextual_update", chat, text="once")
    await expect(rig, command, "delivered", "", delivered=1)
    await expect(rig, command, "duplicate", "already delivered")


async def test_rate_limit_per_conversation(rig: Rig) -> None:
    """Burst 5, refill 0.01/s: at most 5 commands for one conversation, then rejections."""
    chat = rig.conversation("chat", 1).conversation_id
    statuses = []
    for n in range(6):
        result = await rig.client.send_record(
            record(rig, "contextual_update", chat, text=f"n{n}"), timeout=60
        )
        statuses.append(result["status"])
        if result["status"] == "rejected":
            assert "rate limit" in result["reason"]
            break
    assert statuses[-1] == "rejected"
    assert set(statuses[:-1]) == {"delivered"}
    await asyncio.sleep(0.2)
    assert len(rig.received(chat)) == 5  # one from the duplicate test, then the rest


async def test_undecodable_values_are_rejected(rig: Rig) -> None:
    from aiokafka import AIOKafkaProducer

    voice = rig.conversation("voice").conversation_id
    producer = AIOKafkaProducer(bootstrap_servers=rig.bootstrap)
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            f"{rig.prefix}convai.commands", b"not avro", key=voice.encode()
        )
    finally:
        await producer.stop()
    wanted = f"undecodable:{rig.prefix}convai.commands:{meta.partition}:{meta.offset}"
    waiter = asyncio.get_running_loop().create_future()
    rig.client._waiters[wanted] = waiter  # the client resolves results by command_id
    result = await asyncio.wait_for(waiter, 60)
    assert result["status"] == "rejected"
    assert "undecodable command" in result["reason"]
    assert "magic byte" in result["reason"]
    assert result["conversation_id"] == voice
    assert rig.received(voice) == []


async def test_metrics_count_results_by_type_and_status(rig: Rig) -> None:
    """Runs last in this module: the tests above delivered, rejected and expired commands."""
    value = rig.metrics.get_sample_value

    def total(kind: str, status: str) -> float:
        return value("convostream_commands_total", {"command_type": kind, "status": status}) or 0

    assert total("end_call", "delivered") >= 2
    assert total("end_call", "expired") == 1
    assert total("contextual_update", "duplicate") == 1
    assert total("other", "rejected") >= 2  # the unknown type and the undecodable value
    for socket in ("warm", "cold"):
        count = value("convostream_commands_delivery_seconds_count", {"socket": socket})
        assert count is not None
        assert count >= 1
