"""The simulator's post-call side: transcripts consistent with the frames, signed webhooks with
retries, and the monitor outage (handshakes 503 while REST keeps answering)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from websockets.exceptions import InvalidStatus

from convostream.broker import free_port
from schemas.webhooks import SIGNATURE_HEADER, verify
from simulator.rest import details
from simulator.settings import SimulatorSettings
from simulator.testing import API_KEY, monitor, read_all, wait_for
from tests.collector_harness import ground_truth

SECRET = b"sim-webhook-secret"


async def _details(sim: Any, conversation_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{sim.url}/v1/convai/conversations/{conversation_id}",
            headers={"xi-api-key": API_KEY},
        ) as resp,
    ):
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


@pytest.mark.integration
async def test_transcript_matches_the_generated_frames(
    simulator_factory: Any, tmp_path: Path
) -> None:
    gt = tmp_path / "gt.jsonl"
    sim = await simulator_factory(
        conversations=12, events_per_second=400, turns=8, seed=11, chat_ratio=0.3,
        processing_seconds=0.01, ground_truth=gt,
    )  # fmt: skip
    await sim.wait_finished(30)
    await sim.stop()  # flushes the ground truth; the REST bodies are built without the server
    frames: dict[str, list[dict[str, Any]]] = {}
    for line in ground_truth(gt):
        frames.setdefault(line["conversation_id"], []).append(orjson.loads(line["frame"]))
    for conversation_id, generated in frames.items():
        transcript = details(sim.by_id[conversation_id], time.time())["transcript"]
        users = [f["user_transcription_event"] for f in generated if f["type"] == "user_transcript"]
        assert [
            (i["message"], i["source_event_id"]) for i in transcript if i["role"] == "user"
        ] == [(u["user_transcript"], u["event_id"]) for u in users]
        agents = {i["source_event_id"]: i for i in transcript if i["role"] == "agent"}
        responses = [f["agent_response_event"] for f in generated if f["type"] == "agent_response"]
        assert sorted(e for e, i in agents.items() if i["message"] is not None) == sorted(
            r["event_id"] for r in responses
        )
        interrupted = {f["interruption_event"]["event_id"] for f in generated
                       if f["type"] == "interruption"}  # fmt: skip
        assert {e for e, i in agents.items() if i["interrupted"]} == interrupted
        for f in generated:
            if f["type"] == "agent_response_correction":
                c = f["agent_response_correction_event"]
                item = agents[c["event_id"]]
                assert (item["original_message"], item["message"]) == (
                    c["original_agent_response"], c["corrected_agent_response"],
                )  # fmt: skip
        tools = Counter(
            (f["agent_tool_response"]["tool_call_id"], f["agent_tool_response"]["is_error"])
            for f in generated
            if f["type"] == "agent_tool_response"
        )
        results = Counter(
            (r["request_id"], r["is_error"]) for i in agents.values() for r in i["tool_results"]
        )
        assert results == tools
        times = [i["time_in_call_secs"] for i in transcript]
        assert times == sorted(times)


@pytest.mark.integration
async def test_webhooks_are_signed_and_retried_on_5xx(simulator_factory: Any) -> None:
    received: list[tuple[int, dict[str, Any]]] = []
    attempts: Counter[str] = Counter()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        verify(request.headers.get(SIGNATURE_HEADER), body, SECRET, time.time())
        payload = orjson.loads(body)
        conversation_id = payload["data"]["conversation_id"]
        attempts[conversation_id] += 1
        if attempts[conversation_id] == 1:
            return web.Response(status=503)  # the first try of each fails: retried
        received.append((attempts[conversation_id], payload))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        sim = await simulator_factory(
            conversations=4, events_per_second=300, turns=2, seed=3, processing_seconds=0.01,
            webhook_url=f"http://127.0.0.1:{port}/hook", webhook_secret=SECRET.decode(),
        )  # fmt: skip
        await sim.wait_finished(30)
        await wait_for(lambda: sim.status()["webhooks_delivered"] == 4, timeout=20)
    finally:
        await runner.cleanup()
    assert sorted(p["data"]["conversation_id"] for _, p in received) == sorted(sim.by_id)
    for tries, payload in received:
        assert tries == 2
        assert payload["type"] == "post_call_transcription"
        assert payload["data"]["status"] == "done"
        assert payload["data"]["transcript"]
    assert sim.status()["webhooks_failed"] == 0


@pytest.mark.integration
async def test_outage_refuses_handshakes_but_not_rest(simulator_factory: Any) -> None:
    sim = await simulator_factory(
        conversations=1, events_per_second=5, turns=30, seed=4, outage="0:1.5"
    )
    await wait_for(lambda: bool(sim.conversations))
    cid = sim.conversations[0].conversation_id
    with pytest.raises(InvalidStatus) as refused:
        async with monitor(sim, cid):
            pass
    assert refused.value.response.status_code == 503
    assert (await _details(sim, cid))["status"] == "in-progress"
    await asyncio.sleep(max(0.0, 1.6 - sim.now()))
    async with monitor(sim, cid) as ws:
        got = await read_all(ws, timeout=10, limit=1)
    assert got.frames
    assert sim.status()["handshakes_refused"] == 1


def test_outage_setting_is_validated() -> None:
    ok = SimulatorSettings(_env_file=None, sim_api_key="k", sim_outage="10:25")  # type: ignore[call-arg]
    assert ok.outage() == (10.0, 35.0)
    for bad in ("25", "a:b", "5:0", "-1:3"):
        with pytest.raises(ValueError, match="START:SECONDS"):
            SimulatorSettings(_env_file=None, sim_api_key="k", sim_outage=bad)  # type: ignore[call-arg]
