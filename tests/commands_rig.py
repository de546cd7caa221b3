"""A real command path for tests and the benchmark: topics under a fresh prefix on the embedded
broker, an in-process simulator with a commands log, an in-process worker and a client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from convostream.broker import create_topics
from ingest.commands.client import CommandClient
from ingest.commands.metrics import CommandMetrics
from ingest.commands.policy import parse_policy
from ingest.commands.settings import CommandWorkerSettings
from ingest.commands.worker import CommandWorker
from schemas.serde import Serde
from simulator.server import Simulator
from simulator.settings import SimulatorSettings
from simulator.state import Conversation
from simulator.testing import API_KEY, wait_for

KEYS = {"svc": "svc-signing-key-1", "narrow": "narrow-signing-key-2"}
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


async def start_simulator(log: Path, **knobs: Any) -> Simulator:
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
    await wait_for(lambda: len(sim.conversations) >= values["sim_conversations"])
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
        "commands_worker_id": f"{prefix}w1",
    }
    values.update(over)
    return CommandWorkerSettings(_env_file=None, **values)


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
    worker: CommandWorker
    client: CommandClient
    metrics: CollectorRegistry
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def conversation(self, kind: str, index: int = 0) -> Conversation:
        found = [c for c in self.sim.conversations if c.live and c.script.kind == kind]
        return found[index]

    def received(self, conversation_id: str) -> list[dict[str, Any]]:
        """Command frames the simulator received for this conversation."""
        return [r for r in commands_log(self.log) if r["conversation_id"] == conversation_id]


@contextlib.asynccontextmanager
async def running_rig(
    bootstrap: str, tmp: Path, sim_knobs: dict[str, Any] | None = None, **worker_over: Any
) -> Any:
    prefix = new_prefix()
    await create_topics(bootstrap, prefix=prefix)
    log = tmp / "commands.jsonl"
    sim = await start_simulator(log, **(sim_knobs or {}))
    settings = worker_settings(
        bootstrap, prefix, sim, write_policy(tmp / "policy.json"), **worker_over
    )
    registry = CollectorRegistry()
    worker = CommandWorker(
        settings, parse_policy(POLICY_DOC), KEYS, Serde(), CommandMetrics(registry)
    )
    client = CommandClient(bootstrap, issuer="svc", key=KEYS["svc"], topic_prefix=prefix)
    rig = Rig(bootstrap, prefix, sim, log, worker, client, registry)
    rig.tasks.append(asyncio.create_task(worker.run(rig.stop)))
    await client.start()
    try:
        yield rig
    finally:
        rig.stop.set()
        await client.close()
        await asyncio.gather(*rig.tasks, return_exceptions=True)
        await sim.stop()
