"""``convostream webhooks``: signature checks, bounds and idempotence, end to end on a real broker.

The receiver runs as in production (a subprocess with its secret in the environment); each kind
of delivery is checked for its HTTP status, its metric, and whether a record reached
convai.postcall. The signature core is also checked on its own (sans-I/O).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from convostream.broker import EmbeddedBroker, create_topics, free_port
from schemas.topics import POSTCALL
from schemas.webhooks import SignatureError, sign, verify
from tests.cli_process import CliProcess
from tests.collector_harness import read_topic

SECRET = b"wsec_" + uuid.uuid4().hex.encode()


def test_signature_round_trip_and_refusals() -> None:
    body = b'{"type":"post_call_transcription"}'
    header = sign(SECRET, body, 1_000_000)
    assert verify(header, body, SECRET, now=1_000_010) == 1_000_000
    rotated = f"{header},v0={'0' * 64}"  # a second MAC (secret rotation) is allowed
    assert verify(rotated, body, SECRET, now=1_000_000) == 1_000_000
    cases = {
        None: "missing",
        "v0=abc": "malformed",
        "t=1000000,v0=é": "mismatch",  # non-ASCII must not crash the constant-time compare
        header.replace("t=1000000", "t=1000001"): "mismatch",
    }
    for bad, reason in cases.items():
        with pytest.raises(SignatureError) as err:
            verify(bad, body, SECRET, now=1_000_000)
        assert err.value.reason == reason
    for now in (1_000_000 + 1801, 1_000_000 - 1801):
        with pytest.raises(SignatureError) as err:
            verify(header, body, SECRET, now=now)
        assert err.value.reason == "stale"
    with pytest.raises(SignatureError) as err:
        verify(header, body + b" ", SECRET, now=1_000_000)
    assert SECRET.decode() not in str(err.value)


def _body(conversation_id: str) -> bytes:
    data = {
        "agent_id": "agent_1",
        "conversation_id": conversation_id,
        "status": "done",
        "transcript": [
            {"role": "agent", "message": "Hello!", "time_in_call_secs": 0, "source_event_id": 1},
            {"role": "user", "message": "Hi", "time_in_call_secs": 2, "source_event_id": 2},
        ],
        "metadata": {
            "start_time_unix_secs": 1_790_000_000,
            "call_duration_secs": 9,
            "termination_reason": "end_call tool",
        },
        "analysis": {"call_successful": "success", "transcript_summary": "A short call."},
    }
    return orjson.dumps(
        {"type": "post_call_transcription", "event_timestamp": int(time.time()), "data": data}
    )


async def _metric(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    found = re.findall(r'convostream_webhooks_requests_total\{outcome="(\w+)"\} (\S+)', text)
    return {outcome: float(value) for outcome, value in found}


async def _ready(session: aiohttp.ClientSession, port: int, proc: CliProcess) -> None:
    async with asyncio.timeout(60):
        while True:
            assert proc.alive(), proc.log_text()
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)


@pytest.mark.integration
async def test_each_delivery_gets_its_status_metric_and_record(
    kafka_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    port, ops_port = free_port(), free_port()
    proc = CliProcess(
        "webhooks",
        {
            "CONVOSTREAM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
            "CONVOSTREAM_TOPIC_PREFIX": prefix,
            "CONVOSTREAM_WEBHOOK_SECRET": SECRET.decode(),
            "CONVOSTREAM_WEBHOOK_HOST": "127.0.0.1",
            "CONVOSTREAM_WEBHOOK_PORT": str(port),
            "CONVOSTREAM_WEBHOOK_MAX_BODY_BYTES": "4096",
            "CONVOSTREAM_WEBHOOK_BACKFILL": "false",
            "CONVOSTREAM_METRICS_PORT": str(ops_port),
        },
        tmp_path,
    )
    proc.start()
    url = f"http://127.0.0.1:{port}/webhooks/elevenlabs"
    try:
        async with aiohttp.ClientSession() as session:
            await _ready(session, ops_port, proc)
            now = int(time.time())
            valid = _body("conv_valid")
            other = _body("conv_other")
            deliveries = [
                ("valid", valid, sign(SECRET, valid, now), 200, "accepted"),
                ("replayed", valid, sign(SECRET, valid, now), 200, "duplicate"),
                ("tampered", valid.replace(b"Hello", b"Hallo"), sign(SECRET, valid, now), 401,
                 "mismatch"),
                ("wrong secret", other, sign(b"not-the-secret", other, now), 401, "mismatch"),
                ("stale", other, sign(SECRET, other, now - 31 * 60), 401, "stale"),
                ("unsigned", other, None, 401, "missing"),
                ("oversize", b"{" + b" " * 5000 + b"}", sign(SECRET, b"{}", now), 413,
                 "too_large"),
                ("audio", b'{"type":"post_call_audio","data":{}}',
                 sign(SECRET, b'{"type":"post_call_audio","data":{}}', now), 200, "ignored"),
            ]  # fmt: skip
            for name, body, header, status, outcome in deliveries:
                before = await _metric(session, ops_port)
                headers = {"Content-Type": "application/json"}
                if header is not None:
                    headers["ElevenLabs-Signature"] = header
                async with session.post(url, data=body, headers=headers) as resp:
                    assert resp.status == status, (name, await resp.text())
                    assert SECRET.decode() not in await resp.text()
                after = await _metric(session, ops_port)
                changed = {
                    k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k)
                }
                assert changed == {outcome: 1.0}, name
        records = await read_topic(kafka_broker.bootstrap, POSTCALL.full_name(prefix))
    finally:
        assert proc.stop() == 0
    assert [r.value["conversation_id"] for r in records] == ["conv_valid"]
    record = records[0].value
    assert record["status"] == "done"
    assert record["termination_reason"] == "end_call tool"
    assert record["call_successful"] == "success"
    assert orjson.loads(record["data"])["transcript"][1]["message"] == "Hi"
    assert SECRET.decode() not in proc.log_text()


@pytest.mark.integration  # a subprocess of the CLI
def test_a_missing_secret_stops_the_command_at_start(tmp_path: Path) -> None:
    proc = CliProcess("webhooks", {"CONVOSTREAM_WEBHOOK_SECRET": ""}, tmp_path)  # empty: unset
    proc.start()
    assert proc.proc is not None
    assert proc.proc.wait(60) == 2
    assert "CONVOSTREAM_WEBHOOK_SECRET is required" in proc.log_text()
