"""``convostream tail`` against the embedded broker: decoded JSON lines, errors as lines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner

from convostream.broker import EmbeddedBroker, create_topics
from convostream.tail import tail
from schemas.payloads import monitor_payload
from schemas.serde import Serde
from schemas.topics import MONITOR_DLQ, MONITOR_EVENTS

pytestmark = pytest.mark.integration

RECEIVED_AT = 1_795_000_000_123_456  # 2026-11-18T11:06:40.123456Z


def _event(conversation: str, seq: int) -> dict[str, Any]:
    frame = {
        "type": "user_transcript",
        "user_transcription_event": {"user_transcript": f"hi {seq}", "event_id": seq},
    }
    return {
        "event_key": f"{conversation}:{seq}", "conversation_id": conversation, "agent_id": None,
        "type": "user_transcript", "upstream_event_id": seq, "received_at": RECEIVED_AT + seq,
        "collector_id": "col-1", "connection_id": "conn-1", "connection_seq": seq,
        "replay": False, "raw": json.dumps(frame),
        "payload": monitor_payload("user_transcript", frame),
    }  # fmt: skip


async def _produce(bootstrap: str, prefix: str) -> None:
    await create_topics(bootstrap, [MONITOR_EVENTS, MONITOR_DLQ], prefix=prefix)
    serde = Serde()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        events = MONITOR_EVENTS.full_name(prefix)
        for seq in range(3):
            value = serde.encode("MonitorEvent", _event("conv-a", seq))
            await producer.send_and_wait(events, value, key=b"conv-a", partition=0)
        await producer.send_and_wait(events, b'{"not": "avro"}', key=b"\xff", partition=1)
        dead = {
            "conversation_id": "conv-a", "reason": "invalid_utf8", "detail": "byte 0xff",
            "raw": b"\xff\x00", "received_at": RECEIVED_AT, "collector_id": "col-1",
            "connection_id": "conn-1", "connection_seq": 4,
        }  # fmt: skip
        await producer.send_and_wait(
            MONITOR_DLQ.full_name(prefix), serde.encode("DeadLetter", dead), key=b"conv-a"
        )
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def topics(kafka_broker: EmbeddedBroker) -> tuple[str, str]:
    """A fresh topic prefix with records in it, so other tests' records never show up here."""
    prefix = f"tail-{uuid.uuid4().hex[:8]}."
    asyncio.run(_produce(kafka_broker.bootstrap, prefix))
    return kafka_broker.bootstrap, prefix


def _env(topics: tuple[str, str]) -> dict[str, str]:
    bootstrap, prefix = topics
    return {
        **os.environ,
        "CONVOSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "CONVOSTREAM_TOPIC_PREFIX": prefix,
        "CONVOSTREAM_LOG_FORMAT": "json",
    }


def _tail(topics: tuple[str, str], *args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "convostream", "tail", *args],
        capture_output=True, text=True, env=_env(topics), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_tail_prints_decoded_records_and_errors(topics: tuple[str, str]) -> None:
    lines = _tail(topics, "--no-follow")  # default topic: convai.monitor.events
    assert len(lines) == 4
    events = sorted((x for x in lines if "_error" not in x), key=lambda x: x["_offset"])
    _, prefix = topics
    for seq, line in enumerate(events):
        expected = {
            **_event("conv-a", seq),
            "received_at": f"2026-11-18T11:06:40.12345{6 + seq}Z",
            # defaults of fields the writer left out
            "source": "live",
            "upstream_event_ref": None,
        }
        expected["payload"] = {"_record": "UserTranscriptPayload", **expected["payload"][1]}
        assert line == {
            "_topic": f"{prefix}convai.monitor.events", "_partition": 0, "_offset": seq,
            "_key": "conv-a", "_schema": "MonitorEvent",
            "_schema_id": Serde().registry.writer_id("MonitorEvent"),
            **expected,
        }  # fmt: skip
    [bad] = [x for x in lines if "_error" in x]
    assert bad["_partition"] == 1
    assert bad["_key"] is None
    assert bad["_key_base64"] == "/w=="
    assert bad["_error"].startswith("UnknownMagicByte: magic byte 0x7b found, expected 0x00")
    assert bad["_value_base64"] == "eyJub3QiOiAiYXZybyJ9"


def test_tail_with_prefixed_name_max_and_bytes(topics: tuple[str, str]) -> None:
    _, prefix = topics
    [line] = _tail(topics, f"{prefix}convai.monitor.dlq", "--max", "1", "--timeout", "10")
    assert line["raw"] == "/wA="  # bytes as base64
    assert line["received_at"] == "2026-11-18T11:06:40.123456Z"
    assert (line["reason"], line["connection_seq"]) == ("invalid_utf8", 4)


def test_tail_latest_stops_when_idle(topics: tuple[str, str]) -> None:
    assert _tail(topics, "convai.monitor.dlq", "--latest", "--timeout", "0.5") == []


def test_tail_follows_until_ctrl_c(topics: tuple[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "convostream", "tail", "convai.monitor.dlq", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(topics),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["reason"] == "invalid_utf8"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_unknown_topic_lists_the_known_ones() -> None:
    result = CliRunner().invoke(tail, ["convai.nope"])
    assert result.exit_code == 2
    known = "known topics: convai.alerts, convai.command-intents, convai.command-results"
    assert f"unknown topic 'convai.nope'; {known}" in result.output
