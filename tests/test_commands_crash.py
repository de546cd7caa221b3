"""Crash safety of the command worker: SIGKILLed at every crash point, restarted, and still
exactly one frame upstream and exactly one result (fault injection: CONVOSTREAM_COMMANDS_CRASH_AT).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from commands.client import CommandClient
from commands.decide import IN_DOUBT_REASON
from convostream.broker import EmbeddedBroker, create_topics
from schemas.commands import build_command
from simulator.testing import API_KEY
from tests.commands_rig import (
    KEYS,
    commands_log,
    new_prefix,
    results_for,
    start_simulator,
    write_policy,
)

pytestmark = pytest.mark.integration


def worker_env(bootstrap: str, prefix: str, sim_url: str, policy: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CONVOSTREAM_KAFKA_BOOTSTRAP": bootstrap,
        "CONVOSTREAM_TOPIC_PREFIX": prefix,
        "CONVOSTREAM_UPSTREAM_URL": sim_url,
        "CONVOSTREAM_API_KEY": API_KEY,
        "CONVOSTREAM_COMMANDS_POLICY_FILE": str(policy),
        "CONVOSTREAM_COMMANDS_KEYS": json.dumps(KEYS),
        "CONVOSTREAM_COMMANDS_GROUP_ID": f"{prefix}workers",
        "CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS": "2000",
        "CONVOSTREAM_LOG_FORMAT": "json",
    }


async def start_worker(env: dict[str, str], log: Path, crash_at: str | None) -> Any:
    env = dict(env)
    if crash_at is not None:
        env["CONVOSTREAM_COMMANDS_CRASH_AT"] = crash_at
    out = log.open("ab")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "convostream", "command-worker", env=env, stdout=out, stderr=out
    )


async def crash(env: dict[str, str], log: Path, crash_at: str) -> None:
    """Run a worker until the fault injection kills it at ``crash_at``."""
    proc = await start_worker(env, log, crash_at)
    assert await asyncio.wait_for(proc.wait(), 90) == -signal.SIGKILL, crash_at


async def test_worker_killed_at_every_crash_point_delivers_once_and_answers_once(
    kafka_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    prefix = new_prefix()
    await create_topics(bootstrap, prefix=prefix)
    sim_log = tmp_path / "commands.jsonl"
    sim = await start_simulator(sim_log)
    env = worker_env(bootstrap, prefix, sim.url, write_policy(tmp_path / "policy.json"))
    worker_log = tmp_path / "worker.log"
    conv = next(c for c in sim.conversations if c.live).conversation_id

    def frames() -> list[dict[str, Any]]:
        return [r for r in commands_log(sim_log) if r["conversation_id"] == conv]

    client = CommandClient(bootstrap, issuer="svc", key=KEYS["svc"], topic_prefix=prefix)
    await client.start()
    try:
        first = build_command(
            "contextual_update", conv, issuer="svc", key=KEYS["svc"], text="crash", ttl=300
        )
        pending = asyncio.create_task(client.send_record(first, timeout=180))
        # 1. killed right after receiving: nothing written anywhere.
        # 2. the restart delivers the command and is killed after the socket write.
        # 3. the next one finds an intent without a result: `failed` (in doubt), never a second
        #    write, and is killed after writing that result, before committing the offset.
        # 4. later ones find the result and skip the command.
        for crash_at, frames_after in (
            ("after_receive", 0),
            ("after_write", 1),
            ("after_result", 1),
        ):
            await crash(env, worker_log, crash_at)
            assert len(frames()) == frames_after, crash_at
        result = await pending
        assert result["status"] == "failed"
        assert result["reason"] == IN_DOUBT_REASON
        # 5. a second command: killed right after its intent, before the frame; the restart
        #    finds the intent without a result: `failed` (in doubt), and still no frame.
        second = build_command(
            "contextual_update", conv, issuer="svc", key=KEYS["svc"], text="crash-2", ttl=300
        )
        pending = asyncio.create_task(client.send_record(second, timeout=180))
        await crash(env, worker_log, "after_intent")
        assert len(frames()) == 1
        proc = await start_worker(env, worker_log, None)
        try:
            result = await pending
            assert (result["status"], result["reason"]) == ("failed", IN_DOUBT_REASON)
            # 6. command ids survive restarts: a copy of the first command, whose intent an
            #    earlier process wrote, is a duplicate for this one.
            again = await client.send_record(first, timeout=90)
            assert again["status"] == "duplicate", again
            last = await client.send("end_call", conv, timeout=90)
            assert last["status"] == "delivered", last
        finally:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert [json.loads(f["frame"])["command_type"] for f in frames()] == [
            "contextual_update",
            "end_call",
        ]
        topic = f"{prefix}convai.command-results"
        for sent, statuses in ((first, ["failed", "duplicate"]), (second, ["failed"])):
            results = await results_for(bootstrap, topic, sent["command_id"])
            assert [r["status"] for r in results] == statuses
    finally:
        await client.close()
        await sim.stop()


def test_worker_refuses_to_start_without_a_policy_and_never_prints_keys(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CONVOSTREAM_COMMANDS_KEYS": json.dumps(KEYS),
        "CONVOSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    env.pop("CONVOSTREAM_COMMANDS_POLICY_FILE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "convostream", "command-worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "CONVOSTREAM_COMMANDS_POLICY_FILE" in proc.stderr
    for key in KEYS.values():
        assert key not in proc.stderr + proc.stdout
