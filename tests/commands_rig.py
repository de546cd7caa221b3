"""A real command path for tests and the benchmark: topics under a fresh prefix on the embedded
broker, an in-process simulator with a commands log, an in-process worker and a client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from commands.client import CommandClient
from commands.keyring import KeyRing
from commands.metrics import CommandMetrics
from commands.policy import parse_policy
from commands.settings import CommandWorkerSettings
from commands.worker import CommandWorker
from convostream.broker import create_topics
from convostream.topic_reader import read_to_end
from schemas.serde import Serde
from schemas.topics import COMMAND_RESULTS
from simulator.server import Simulator
from simulator.settings import SimulatorSettings
from simulator.state import SimConversation
from simulator.testing import API_KEY, wait_for

KEYS = {"svc": "svc-signing-key-1", "narrow": "narrow-signing-key-2"}
# svc's second active key (rotation): commands name it with key_id.
ROTATED_KEY_ID, ROTATED_KEY = "2026-12", "svc-signing-key-2026-12"
KEYRING = KeyRing.of(KEYS).merged(KeyRing({"svc": {ROTATED_KEY_ID: ROTATED_KEY}}))
POLICY_DOC = {
    "issuers": {
        "svc": {"commands": ["*"], "phone_numbers": ["+1415*"]},
        "narrow": {"commands": ["contextual_update"]},
    }
}


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


def write_policy(path: Path) -> Path:
    path.write_text(json.dumps(POLICY_DOC))
    return path


async def start_simulator(log: Path, live: bool = True, **knobs: Any) -> Simulator:
    """A simulator logging the commands it receives to ``log``; ``live``: return once every
    conversation is live (commands need that), else at once (e.g. conversations held
    'initiated' by ``initiated_seconds`` while the consumers under test start)."""
    values: dict[str, Any] = {
        "sim_api_key": API_KEY,
        "sim_port": 0,
        "sim_conversations": 12,
        "sim_chat_ratio": 0.5,
        "sim_events_per_second": 1.0,
        "sim_turns": 400,
        "sim_seed": 11,
        "sim_commands_log": log,
    }
    values.update({k if k.startswith("sim_") else f"sim_{k}": v for k, v in knobs.items()})
    sim = Simulator(SimulatorSettings(_env_file=None, **values))
    await sim.start()
    n = values["sim_conversations"]
    if live:
        await wait_for(
            lambda: len(sim.conversations) >= n and all(c.live for c in sim.conversations)
        )
    return sim


def worker_settings(
    bootstrap: str, prefix: str, sim: Simulator, policy: Path, **over: Any
) -> CommandWorkerSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topic_prefix": prefix,
        "upstream_url": sim.url,
        "api_key": API_KEY,
        "commands_policy_file": policy,
        "commands_group_id": f"{prefix}workers",
    }
    values.update(over)
    return CommandWorkerSettings(_env_file=None, **values)


async def results_for(bootstrap: str, topic: str, command_id: str) -> list[dict[str, Any]]:
    """Every result with this command_id on the results topic, read from the beginning."""
    serde = Serde()
    return [
        result
        async for record in read_to_end(bootstrap, topic, list(range(COMMAND_RESULTS.partitions)))
        if (result := serde.decode(record.value).record)["command_id"] == command_id
    ]


def commands_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@dataclass
class Rig:
    bootstrap: str
    prefix: str
    sim: Simulator
    log: Path
    workers: list[CommandWorker]
    client: CommandClient
    metrics: CollectorRegistry  # of the first worker
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def worker(self) -> CommandWorker:
        return self.workers[0]

    def conversation(self, kind: str, index: int = 0) -> SimConversation:
        found = [c for c in self.sim.conversations if c.live and c.script.kind == kind]
        return found[index]

    def received(self, conversation_id: str) -> list[dict[str, Any]]:
        """Command frames the simulator received for this conversation."""
        return [r for r in commands_log(self.log) if r["conversation_id"] == conversation_id]


@contextlib.asynccontextmanager
async def running_rig(
    bootstrap: str,
    tmp: Path,
    sim_knobs: dict[str, Any] | None = None,
    sim_live: bool = True,
    workers: int = 1,
    worker_type: type[CommandWorker] = CommandWorker,
    **worker_over: Any,
) -> Any:
    """``workers`` in-process workers (of ``worker_type``) in one consumer group (partitions
    split between them); the client uses the workers' Kafka security settings."""
    prefix = new_prefix()
    log = tmp / "commands.jsonl"
    sim = await start_simulator(log, sim_live, **(sim_knobs or {}))
    policy = write_policy(tmp / "policy.json")
    registries = [CollectorRegistry() for _ in range(workers)]
    settings = [
        worker_settings(
            bootstrap, prefix, sim, policy, commands_worker_id=f"{prefix}w{n}", **worker_over
        )
        for n in range(workers)
    ]
    security = settings[0].kafka_security()
    await create_topics(bootstrap, prefix=prefix, security=security)
    members = [
        worker_type(s, parse_policy(POLICY_DOC), KEYRING, Serde(), CommandMetrics(registry))
        for s, registry in zip(settings, registries, strict=True)
    ]
    client = CommandClient(
        bootstrap, issuer="svc", key=KEYS["svc"], topic_prefix=prefix, security=security
    )
    rig = Rig(bootstrap, prefix, sim, log, members, client, registries[0])
    rig.tasks.extend(asyncio.create_task(worker.run(rig.stop)) for worker in members)
    await client.start()
    try:
        yield rig
    finally:
        rig.stop.set()
        await client.close()
        await asyncio.gather(*rig.tasks, return_exceptions=True)
        await sim.stop()


async def run_send_command(
    rig: Rig,
    *args: str,
    issuer: str = "svc",
    key: str | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """``convostream send-command`` against the rig: exit code, stdout, stderr; ``env`` adds or
    overrides variables."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "convostream",
        "send-command",
        *args,
        "--timeout",
        "60",
        env={
            **os.environ,
            "CONVOSTREAM_KAFKA_BOOTSTRAP": rig.bootstrap,
            "CONVOSTREAM_TOPIC_PREFIX": rig.prefix,
            "CONVOSTREAM_COMMANDS_ISSUER": issuer,
            "CONVOSTREAM_COMMANDS_KEY": key or KEYS[issuer],
            "CONVOSTREAM_LOG_FORMAT": "json",
            **(env or {}),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def send_cli(
    rig: Rig, *args: str, issuer: str = "svc", key: str | None = None
) -> tuple[int, dict[str, Any]]:
    """:func:`run_send_command` and the result it printed."""
    code, out, err = await run_send_command(rig, *args, issuer=issuer, key=key)
    assert out, err
    return code, json.loads(out.strip().splitlines()[-1])
