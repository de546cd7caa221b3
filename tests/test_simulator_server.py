"""The simulator over real sockets: replay, reorder, drops, auth, commands, REST, determinism."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from schemas.commands import COMMAND_TYPES
from simulator.script import ConversationScript
from simulator.server import Simulator
from simulator.testing import API_KEY, monitor, read_all, wait_for

OPENAPI = Path("/work/shared/reference/elevenlabs-openapi-conversations.json")
URI = "urn:elevenlabs:openapi"


@cache
def openapi(name: str) -> Draft202012Validator:
    doc = json.loads(OPENAPI.read_text())
    registry: Registry[Any] = Registry().with_resource(URI, DRAFT202012.create_resource(doc))
    return Draft202012Validator({"$ref": f"{URI}#/components/schemas/{name}"}, registry=registry)


def ground_truth(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def rest(
    sim: Simulator, path: str, key: str | None = API_KEY, params: Any = None
) -> tuple[int, Any]:
    headers = {"xi-api-key": key} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(sim.url + path, headers=headers, params=params) as response,
    ):
        return response.status, await response.json()


def frames_of(gt: list[dict[str, Any]], conversation_id: str) -> list[str]:
    rows = [r for r in gt if r["conversation_id"] == conversation_id]
    assert [r["index"] for r in rows] == list(range(len(rows)))
    return [r["frame"] for r in rows]


async def test_replay_last_100_on_every_connect(simulator_factory: Any, tmp_path: Path) -> None:
    gt_path = tmp_path / "gt.jsonl"
    sim = await simulator_factory(
        conversations=1, events_per_second=150, turns=300, seed=4, ground_truth=gt_path
    )
    await wait_for(lambda: sim.conversations and sim.conversations[0].frames > 150)
    conv = sim.conversations[0]
    sessions, bounds = [], []
    for _ in range(2):
        before = conv.frames
        async with monitor(sim, conv.conversation_id) as ws:
            first = await ws.recv()
            after = conv.frames
            rest_of = await read_all(ws, limit=129)
        rest_of.frames.insert(0, str(first))
        sessions.append(rest_of)
        bounds.append((before, after))
        await asyncio.sleep(0.3)
    await sim.stop()
    generated = frames_of(ground_truth(gt_path), conv.conversation_id)
    starts = []
    for got, (before, after) in zip(sessions, bounds, strict=True):
        start = generated.index(got.frames[0])
        # Exactly the last 100 generated when the socket opened.
        assert before - 100 <= start <= after - 100
        # The first 100 frames are the 100 generated last before the connect, in order, then
        # the live frames continue without a gap.
        assert got.frames == generated[start : start + 130]
        assert start >= 50
        starts.append(start)
    assert starts[1] > starts[0] + 20  # the second connect replays the newer window


async def test_reorder_delivers_everything_within_the_bound(
    simulator_factory: Any, tmp_path: Path
) -> None:
    gt_path = tmp_path / "gt.jsonl"
    reorder_ms = 60
    sim = await simulator_factory(
        conversations=3,
        events_per_second=120,
        turns=6,
        seed=12,
        reorder_ms=reorder_ms,
        ground_truth=gt_path,
    )
    await wait_for(lambda: len(sim.conversations) == 3, interval=0.001)

    async def watch(conversation_id: str) -> Any:
        async with monitor(sim, conversation_id) as ws:
            return await read_all(ws, timeout=20)

    results = await asyncio.gather(*(watch(c.conversation_id) for c in sim.conversations))
    await sim.wait_finished(10)
    await sim.stop()
    gt = ground_truth(gt_path)
    inversions = 0
    for conv, got in zip(sim.conversations, results, strict=True):
        assert got.code == 1000
        generated = frames_of(gt, conv.conversation_id)
        assert set(got.frames) == set(generated), "every frame arrives"
        assert len(got.frames) == len(generated), "and only once on one connection"
        # Generation times are deterministic: replay the script's timing to get them.
        script = ConversationScript(
            sim.settings.sim_seed,
            conv.script.number,
            conv.script.agent,
            sim.params,
            conv.script.start_virtual,
        )
        born, t = {}, conv.script.start_virtual
        for text in generated:
            born[text] = t
            t += script.next_gap(sim.settings.sim_events_per_second)
        first_seen: dict[str, float] = {}
        for text, at in zip(got.frames, got.times, strict=True):
            first_seen.setdefault(text, at - sim._t0)
        order = [generated.index(text) for text in first_seen]
        inversions += sum(1 for a, b in itertools.pairwise(order) if b < a)
        live = [text for text in generated if born[text] > 0.05]  # after the connect
        for text in live:
            delay = first_seen[text] - born[text]
            assert -0.005 <= delay <= reorder_ms / 1000 + 0.1, (delay, text)
    assert inversions > 5, "frames should arrive out of generation order"


async def test_disconnects_happen(simulator_factory: Any) -> None:
    sim = await simulator_factory(
        conversations=1, events_per_second=50, turns=500, disconnect_every=0.1, seed=2
    )
    await wait_for(lambda: bool(sim.conversations) and sim.conversations[0].live)
    conv = sim.conversations[0]
    codes = []
    for _ in range(12):
        async with monitor(sim, conv.conversation_id) as ws:
            got = await read_all(ws, timeout=10)
        codes.append(got.code)
        if got.code in (1002, 1011):  # an error close is announced by an error frame
            last = orjson.loads(got.frames[-1])
            assert last["type"] == "error"
            assert last["error_event"]["code"] == got.code
    assert sim.status()["drops"] >= 12
    assert set(codes) <= {1006, 1002, 1011}  # close codes of the AsyncAPI only
    assert 1006 in codes, codes  # abrupt TCP drops
    assert {1002, 1011} & set(codes), codes  # and close codes


async def test_auth_unknown_and_ended_close_1008(simulator_factory: Any) -> None:
    sim = await simulator_factory(
        conversations=2, events_per_second=200, turns=1, seed=3, processing_seconds=0.1
    )
    await wait_for(lambda: len(sim.conversations) == 2)
    conv_id = sim.conversations[0].conversation_id
    for key in ("wrong-key", None):
        async with monitor(sim, conv_id, key=key) as ws:
            got = await read_all(ws)
        assert (got.code, got.reason) == (1008, "invalid api key")
        assert got.frames == []
    async with monitor(sim, "conv_doesnotexist") as ws:
        got = await read_all(ws)
    assert (got.code, got.reason, got.frames) == (1008, "conversation not found", [])
    await sim.wait_finished(10)
    async with monitor(sim, conv_id) as ws:
        got = await read_all(ws)
    assert (got.code, got.reason, got.frames) == (1008, "conversation has ended", [])
    assert (await rest(sim, "/v1/convai/conversations", key="nope"))[0] == 401
    assert (await rest(sim, "/v1/convai/conversations", key=None))[0] == 401


def pick(sim: Simulator, kind: str) -> Any:
    return next(c for c in sim.conversations if c.script.kind == kind)


def parsed(frames: list[str]) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in frames]


async def test_commands_are_logged_and_take_effect(simulator_factory: Any, tmp_path: Path) -> None:
    log_path, gt_path = tmp_path / "commands.jsonl", tmp_path / "gt.jsonl"
    sim = await simulator_factory(
        conversations=8,
        events_per_second=40,
        turns=400,
        seed=21,
        chat_ratio=0.5,
        processing_seconds=0.2,
        commands_log=log_path,
        ground_truth=gt_path,
    )
    await wait_for(lambda: len(sim.conversations) == 8)
    chat, voice = pick(sim, "chat"), pick(sim, "voice")
    sent: list[tuple[str, str]] = []

    async def send(ws: Any, conv: Any, frame: dict[str, Any]) -> None:
        text = json.dumps(frame)
        sent.append((conv.conversation_id, text))
        await ws.send(text)

    human = "Hello, this is Maria from the support team."
    async with monitor(sim, chat.conversation_id) as ws:
        reader = asyncio.create_task(read_all(ws, timeout=20))
        await send(
            ws,
            chat,
            {
                "command_type": "contextual_update",
                "parameters": {"contextual_update": "VIP customer"},
            },
        )
        await send(ws, chat, {"command_type": "enable_human_takeover", "parameters": {}})
        await asyncio.sleep(0.8)  # let the reply in flight finish
        mark = chat.frames
        await send(ws, chat, {"command_type": "send_human_message", "parameters": {"text": human}})
        await asyncio.sleep(0.5)
        during = frames_of_live(sim, chat, mark)
        await send(ws, chat, {"command_type": "disable_human_takeover", "parameters": {}})
        await asyncio.sleep(0.8)
        await send(ws, chat, {"command_type": "end_call", "parameters": {}})
        chat_got = await reader
    assert chat_got.code == 1000
    replies = [
        f["agent_response_event"]["agent_response"]
        for f in parsed(chat_got.frames)
        if f["type"] == "agent_response"
    ]
    assert human in replies
    assert [f for f in during if f["type"] == "agent_response"] == [
        f
        for f in during
        if f["type"] == "agent_response" and f["agent_response_event"]["agent_response"] == human
    ]
    assert any(f["type"] == "user_transcript" for f in during), "users keep typing"
    assert len(replies) > replies.index(human) + 1, "the agent answers again after disable"
    tail = parsed(chat_got.frames)[-3:]
    assert tail[1]["type"] == "agent_tool_response"
    assert tail[1]["agent_tool_response"]["tool_name"] == "end_call"

    async with monitor(sim, voice.conversation_id) as ws:
        reader = asyncio.create_task(read_all(ws, timeout=20))
        for kind, params in (
            ("enable_human_takeover", {}),
            ("send_human_message", {"text": "nope"}),
            ("disable_human_takeover", {}),
        ):
            await send(ws, voice, {"command_type": kind, "parameters": params})
        await asyncio.sleep(0.2)
        await send(
            ws,
            voice,
            {"command_type": "transfer_to_number", "parameters": {"phone_number": "+14155550123"}},
        )
        voice_got = await reader
    assert voice_got.code == 1000
    tools = [
        f["agent_tool_response"]
        for f in parsed(voice_got.frames)
        if f["type"] == "agent_tool_response"
    ]
    assert tools[-1]["tool_name"] == "transfer_to_number"
    assert tools[-1]["is_error"] is False
    assert not any(
        f["type"] == "agent_response" and f["agent_response_event"]["agent_response"] == "nope"
        for f in parsed(voice_got.frames)
    )

    for conv in (chat, voice):
        await wait_for(lambda c=conv: c.status in ("done", "failed"), timeout=5)
        status, body = await rest(sim, f"/v1/convai/conversations/{conv.conversation_id}")
        assert status == 200
        assert body["status"] == conv.status
    await sim.stop()
    logged = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    assert [(r["conversation_id"], r["frame"]) for r in logged] == sent
    assert {r["command_type"] for r in logged} == set(COMMAND_TYPES)
    by = {(r["conversation_id"], r["command_type"]): r for r in logged}
    for kind in ("enable_human_takeover", "send_human_message", "disable_human_takeover"):
        assert by[(chat.conversation_id, kind)]["accepted"] is True
        assert by[(voice.conversation_id, kind)]["accepted"] is False
    assert by[(voice.conversation_id, "transfer_to_number")]["accepted"] is True
    for r in logged:
        assert isinstance(r["received_at_unix"], float)
        assert r["received_at"].startswith("20")
    # Command effects are ground truth too.
    gt_frames = [r["frame"] for r in ground_truth(gt_path)]
    assert any(human in f for f in gt_frames)


def frames_of_live(sim: Simulator, conv: Any, mark: int) -> list[dict[str, Any]]:
    return parsed(list(conv.replay)[-(conv.frames - mark) :] if conv.frames > mark else [])


async def test_rest_paging_filters_and_schemas(simulator_factory: Any) -> None:
    sim = await simulator_factory(
        conversations=7,
        events_per_second=100,
        turns=2,
        seed=5,
        agents=2,
        processing_seconds=0.05,
        ramp_seconds=0.2,
    )
    await wait_for(lambda: len(sim.conversations) == 7)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, str] = {"page_size": "3"}
        if cursor:
            params["cursor"] = cursor
        status, body = await rest(sim, "/v1/convai/conversations", params=params)
        assert status == 200
        openapi("GetConversationsPageResponseModel").validate(body)
        assert len(body["conversations"]) <= 3
        seen += [c["conversation_id"] for c in body["conversations"]]
        pages += 1
        cursor = body["next_cursor"]
        if not body["has_more"]:
            assert cursor is None
            break
    assert pages == 3
    assert sorted(seen) == sorted(c.conversation_id for c in sim.conversations)
    starts = [
        c.start_unix for c in sorted(sim.conversations, key=lambda c: seen.index(c.conversation_id))
    ]
    assert starts == sorted(starts, reverse=True), "newest first"

    agent = sim.conversations[0].agent_id
    status, body = await rest(sim, "/v1/convai/conversations", params={"agent_id": agent})
    assert {c["agent_id"] for c in body["conversations"]} == {agent}

    for bad in ("0", "101", "x"):
        status, body = await rest(sim, "/v1/convai/conversations", params={"page_size": bad})
        assert status == 422
        openapi("HTTPValidationError").validate(body)
        assert body["detail"][0]["loc"] == ["query", "page_size"]
    assert (await rest(sim, "/v1/convai/conversations", params={"cursor": "!!"}))[0] == 422
    status, body = await rest(sim, "/v1/convai/conversations", params={"exclude_statuses": "bogus"})
    assert status == 422

    status, body = await rest(sim, f"/v1/convai/conversations/{seen[0]}")
    assert status == 200
    assert body["status"] == "in-progress"
    openapi("GetConversationResponseModel").validate(body)
    status, body = await rest(sim, "/v1/convai/conversations/conv_unknown")
    assert status == 404

    await sim.wait_finished(10)
    status, body = await rest(
        sim,
        "/v1/convai/conversations",
        params=[
            ("exclude_statuses", "done"),
            ("exclude_statuses", "processing"),
            ("exclude_statuses", "failed"),
        ],
    )
    assert body == {"conversations": [], "next_cursor": None, "has_more": False}
    status, body = await rest(
        sim,
        "/v1/convai/conversations",
        params=[("exclude_statuses", "in-progress"), ("page_size", "100")],
    )
    assert len(body["conversations"]) == 7
    for summary in body["conversations"]:
        assert summary["status"] in ("done", "failed")
        assert summary["message_count"] > 0
        assert summary["call_successful"] in {"success", "failure", "unknown"}
    openapi("GetConversationsPageResponseModel").validate(body)
    for conv in sim.conversations:
        status, body = await rest(sim, f"/v1/convai/conversations/{conv.conversation_id}")
        openapi("GetConversationResponseModel").validate(body)
        assert body["status"] == conv.status
        assert all("source_event_id" in t for t in body["transcript"])
        assert body["transcript"]
    newest = max(int(c.start_unix) for c in sim.conversations)
    status, body = await rest(
        sim, "/v1/convai/conversations", params={"call_start_after_unix": str(newest + 1)}
    )
    assert body["conversations"] == []
    status, body = await rest(sim, "/_sim/status", key=None)
    assert status == 200
    assert body["finished"] is True
    assert body["done"] == 7


async def test_status_moves_from_initiated_through_processing(simulator_factory: Any) -> None:
    sim = await simulator_factory(
        conversations=1,
        events_per_second=300,
        turns=1,
        seed=8,
        processing_seconds=0.5,
        initiated_seconds=0.5,
    )
    await wait_for(lambda: bool(sim.conversations))
    conv = sim.conversations[0]
    async with monitor(sim, conv.conversation_id) as ws:  # not started: refused, not ended
        got = await read_all(ws)
    assert (got.code, got.reason, got.frames) == (1008, "conversation has not started", [])
    assert conv.frames == 0
    seen: list[str] = []
    async with asyncio.timeout(10):
        while conv.status not in ("done", "failed"):
            status = (await rest(sim, f"/v1/convai/conversations/{conv.conversation_id}"))[1]
            if not seen or seen[-1] != status["status"]:
                seen.append(status["status"])
            await asyncio.sleep(0.05)
    # the status may turn "done" between the loop's check and its REST read
    assert seen in (
        ["initiated", "in-progress", "processing"],
        ["initiated", "in-progress", "processing", "done"],
    )
    _, listed = await rest(
        sim, "/v1/convai/conversations", params=[("exclude_statuses", "initiated")]
    )
    assert [c["status"] for c in listed["conversations"]] == [conv.status]


async def test_monitoring_events_selection_per_agent(
    simulator_factory: Any, tmp_path: Path
) -> None:
    """Agent 1 streams two types only; its other frames reach REST, not monitors or the truth."""
    truth = tmp_path / "truth.jsonl"
    sim = await simulator_factory(
        conversations=4,
        agents=2,
        events_per_second=300,
        turns=4,
        seed=5,
        replay_markers=True,
        ground_truth=truth,
        monitoring_events="1=user_transcript,agent_response",
    )
    await wait_for(lambda: any(c.agent_id == sim.agents[0].agent_id for c in sim.conversations))
    conv = next(c for c in sim.conversations if c.agent_id == sim.agents[0].agent_id)
    await wait_for(lambda: conv.live)
    async with monitor(sim, conv.conversation_id) as ws:
        got = await read_all(ws, timeout=20)
    types = {orjson.loads(f)["type"] for f in got.frames}
    assert types <= {"user_transcript", "agent_response", "connected", "history_complete"}
    assert {"user_transcript", "agent_response"} <= types
    await sim.wait_finished(30)
    await sim.stop()
    lines = ground_truth(truth)
    restricted = {orjson.loads(r["frame"])["type"] for r in lines if r["agent_id"] == conv.agent_id}
    others = {orjson.loads(r["frame"])["type"] for r in lines if r["agent_id"] != conv.agent_id}
    assert restricted == {"user_transcript", "agent_response"}
    assert others > restricted  # other agents stream every type
    owed = sum(1 for r in lines if r["conversation_id"] == conv.conversation_id)
    assert conv.frames > owed  # generated, yet never streamed nor owed to the topic


async def test_rest_error_injection(simulator_factory: Any) -> None:
    sim = await simulator_factory(conversations=1, rest_error_rate=0.5, seed=1)
    statuses = [(await rest(sim, "/v1/convai/conversations"))[0] for _ in range(30)]
    assert {200} < set(statuses) <= {200, 429, 503}


async def run_to_ground_truth(sim_factory: Any, path: Path, seed: int) -> bytes:
    sim = await sim_factory(
        conversations=6,
        events_per_second=400,
        turns=5,
        seed=seed,
        ground_truth=path,
        reorder_ms=20,
        duration=0.6,
    )
    await sim.wait_finished(20)
    await sim.stop()
    return await asyncio.to_thread(path.read_bytes)


async def test_same_seed_identical_ground_truth(simulator_factory: Any, tmp_path: Path) -> None:
    a = await run_to_ground_truth(simulator_factory, tmp_path / "a.jsonl", 77)
    b = await run_to_ground_truth(simulator_factory, tmp_path / "b.jsonl", 77)
    c = await run_to_ground_truth(simulator_factory, tmp_path / "c.jsonl", 78)
    assert a == b
    assert a != c
    rows = [orjson.loads(line) for line in a.splitlines()]
    assert len({r["conversation_id"] for r in rows}) > 6, "duration refills slots"
    per_conv: dict[str, list[str]] = {}
    for r in rows:
        per_conv.setdefault(r["conversation_id"], []).append(r["frame"])
        assert list(r) == ["conversation_id", "agent_id", "index", "frame"]
    for frames in per_conv.values():
        assert len(set(frames)) == len(frames)


def cli(*args: str) -> subprocess.Popen[str]:
    code = "from convostream.cli import main; main()"
    env = {**os.environ, "CONVOSTREAM_LOG_FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-c", code, "simulate", *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


async def test_cli_exit_when_done_and_sigint(tmp_path: Path) -> None:
    gt = tmp_path / "gt.jsonl"
    key = "super-secret-key-123"
    proc = cli(
        "--port",
        "0",
        "--api-key",
        key,
        "--conversations",
        "3",
        "--events-per-second",
        "300",
        "--turns",
        "2",
        "--seed",
        "1",
        "--ground-truth",
        str(gt),
        "--exit-when-done",
        "--processing-seconds",
        "0.05",
    )
    out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err
    assert "port" in out
    assert key not in out + err
    assert len(gt.read_bytes().splitlines()) > 30

    proc = cli(
        "--port",
        "0",
        "--api-key",
        key,
        "--conversations",
        "2",
        "--turns",
        "500",
        "--events-per-second",
        "50",
        "--ground-truth",
        str(gt),
    )
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    port = int(line.rsplit("port ", 1)[1].rstrip(")\n"))
    conv_id = await asyncio.to_thread(_first_live, port, key)
    from websockets.asyncio.client import connect

    async with connect(
        f"ws://127.0.0.1:{port}/v1/convai/conversations/{conv_id}/monitor",
        additional_headers={"xi-api-key": key},
    ) as ws:
        await ws.recv()
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        got = await read_all(ws, timeout=10)
    assert got.code == 1001
    _out, err = await asyncio.to_thread(proc.communicate, timeout=10)
    assert proc.returncode == 0, err
    assert key not in err
    assert gt.read_bytes().endswith(b"\n")
    assert len(gt.read_bytes().splitlines()) >= 10


def _first_live(port: int, key: str) -> str:
    import time
    import urllib.request

    for _ in range(100):
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/convai/conversations", headers={"xi-api-key": key}
        )
        with urllib.request.urlopen(req, timeout=5) as response:  # noqa: S310 - loopback
            body = json.loads(response.read())
        live = [c for c in body["conversations"] if c["status"] == "in-progress"]
        if live:  # past "initiated"
            return str(live[0]["conversation_id"])
        time.sleep(0.05)
    pytest.fail("no conversation listed")


async def test_repeats_are_in_the_ground_truth_and_markers_frame_the_replay(
    simulator_factory: Any, tmp_path: Path
) -> None:
    truth = tmp_path / "truth.jsonl"
    sim = await simulator_factory(
        conversations=4, seed=3, events_per_second=200, repeat_ratio=0.2, replay_markers=True,
        ground_truth=truth,
    )  # fmt: skip
    await sim.wait_finished(60)
    lines = [json.loads(line) for line in truth.read_text().splitlines()]
    per_conv: dict[str, list[str]] = {}
    for line in lines:
        per_conv.setdefault(line["conversation_id"], []).append(line["frame"])
    repeats = sum(len(f) - len(set(f)) for f in per_conv.values())
    assert 0.1 * len(lines) < repeats < 0.3 * len(lines)
    assert not any('"history_complete"' in line["frame"] for line in lines)

    live = await simulator_factory(
        conversations=1, seed=4, events_per_second=20, replay_markers=True
    )
    await wait_for(lambda: any(c.frames >= 5 for c in live.live_conversations()))
    conv = next(live.live_conversations())
    async with monitor(live, conv.conversation_id) as ws:
        got = await read_all(ws, limit=conv.frames + 2)
    assert got.frames[0] == '{"type":"connected"}'
    assert '{"type":"history_complete"}' in got.frames[1:]


async def test_some_conversations_end_failed(simulator_factory: Any) -> None:
    sim = await simulator_factory(conversations=60, events_per_second=500, turns=1, seed=8)
    await sim.wait_finished(30)
    statuses = {c.status for c in sim.conversations}
    assert statuses == {"done", "failed"}
