"""Failover on a real 3-broker KRaft cluster (replication 3, ``min.insync.replicas=2``).

Three collectors, two processor workers and two command workers run against the simulator while
commands are sent; mid-run one broker, one collector and one processor worker are SIGKILLed.
Every frame published is in the events topic under one ``event_key``, and every generated frame
is there unless its conversation ended while its collector was dead (a gap record says so), the
SQL rows equal an independent computation from the topics, and every command gets one result.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from commands.client import CommandClient
from convostream.broker import free_port
from convostream.kafka_engine import KafkaBroker
from schemas.topics import COMMAND_RESULTS, CONVERSATIONS, MONITOR_EVENTS
from tests.cli_process import CliProcess
from tests.collector_harness import (
    CollectorProcess,
    check_events,
    collector_env,
    ground_truth,
    read_topic,
    unreported_loss,
)
from tests.commands_rig import KEYS, write_policy
from tests.conftest import KAFKA_TEST_PROPERTIES, running
from tests.processor_harness import ProcessorProcess, expected_rows, processor_env, sqlite_rows
from tests.test_commands_crash import worker_env

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only, pytest.mark.cluster]

KEY = "sim-key-" + uuid.uuid4().hex
SIM = {
    "reorder_ms": 300,
    "disconnect_every": 8,
    "events_per_second": 4,
    "ramp_seconds": 2,
    "conversations": 18,
    "agents": 3,
    "chat_ratio": 0.5,
}


@pytest.fixture(scope="module")
def cluster() -> Any:
    broker = KafkaBroker(nodes=3, heap="-Xmx384m", properties=KAFKA_TEST_PROPERTIES)
    with running(broker, timeout=240):
        yield broker


async def _send_commands(client: CommandClient, conversations: list[str]) -> list[dict[str, Any]]:
    """One contextual update per conversation, a second apart, through the outages."""
    results = []
    for i, cid in enumerate(conversations):
        results.append(
            await client.send("contextual_update", cid, text=f"failover {i}", timeout=120)
        )
        await asyncio.sleep(1.0)
    return results


async def _live_states(processors: list[ProcessorProcess], cid: str) -> dict[str, Any]:
    """What each running processor worker holds for ``cid`` (its lookup page): tells a state
    short of the events from SQL rows that fell behind their state."""
    states: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for processor in processors:
            port = processor.env["CONVOSTREAM_PROCESSOR_WEB_PORT"]
            try:
                async with session.get(f"http://127.0.0.1:{port}/conversations/{cid}/") as resp:
                    body = await resp.json()
            except aiohttp.ClientError as exc:
                body = repr(exc)
            states[processor.name] = {
                k: body[k]
                for k in ("events_total", "status")
                if isinstance(body, dict) and k in body
            } or body
    return states


async def test_broker_collector_and_processor_killed_mid_run(
    cluster: KafkaBroker, simulator_factory: Any, tmp_path: Path
) -> None:
    bootstrap = cluster.bootstrap
    prefix = ""  # the catalogue the cluster fixture created, with three replicas
    sim_port = free_port()  # the simulator starts once the collectors run
    sim_url = f"http://127.0.0.1:{sim_port}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    collectors = [
        CollectorProcess(f"c{i}", collector_env(bootstrap, sim_url, KEY, prefix, group), tmp_path)
        for i in range(3)
    ]
    db = tmp_path / "metrics.db"
    processors = [
        ProcessorProcess(
            processor_env(
                bootstrap,
                prefix,
                f"sqlite:///{db}",
                tmp_path / f"state-{i}",
                # the production default: 2 s sessions (processor_env) evict live workers
                # when three JVMs share two cores, and an evicted worker that is still
                # processing can overwrite a state its successor has read (README, failover)
                CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS="10000",
            ),
            tmp_path,
            name=f"processor{i}",
        )
        for i in range(2)
    ]
    policy = write_policy(tmp_path / "policy.json")
    workers = [
        CliProcess(
            "command-worker",
            {
                **worker_env(bootstrap, prefix, sim_url, policy),
                "CONVOSTREAM_COMMANDS_WORKER_ID": f"w{i}",
                "CONVOSTREAM_API_KEY": KEY,
                "CONVOSTREAM_METRICS_PORT": str(free_port()),
                # 2 s sessions (worker_env) evict members every few seconds when three JVMs
                # share two cores, before anything is killed
                "CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS": "6000",
            },
            tmp_path,
            name=f"worker{i}",
        )
        for i in range(2)
    ]
    everything: list[CliProcess] = [*processors, *workers, *collectors]
    for process in everything:
        process.start()
    client = CommandClient(bootstrap, issuer="svc", key=KEYS["svc"], topic_prefix=prefix)
    await client.start()
    try:
        for collector in collectors:
            await collector.joined()
        sim = await simulator_factory(
            api_key=KEY, seed=17, ground_truth=tmp_path / "truth.jsonl", port=sim_port, **SIM
        )
        await asyncio.sleep(8.0)
        live = [c.conversation_id for c in sim.conversations if c.live]
        sending = asyncio.create_task(_send_commands(client, live[:8]))
        await asyncio.sleep(4.0)
        cluster.node(1).kill()  # a broker, a collector and a processor worker vanish at once
        collectors[0].kill()
        processors[0].kill()
        await asyncio.sleep(8.0)
        collectors[0].start()
        processors[0].start()
        results = await sending
        await sim.wait_finished(240)
        await asyncio.sleep(3.0)
        for collector in collectors:
            assert await asyncio.to_thread(collector.stop) == 0, collector.failure_text()

        truth = ground_truth(tmp_path / "truth.jsonl")
        events = await read_topic(bootstrap, MONITOR_EVENTS.full_name(prefix))
        lifecycle = await read_topic(bootstrap, CONVERSATIONS.full_name(prefix))
        check = check_events(truth, events)
        # A conversation that ended while its collector was dead lost its last frames, and a
        # gap record says so; everything else arrived.
        assert unreported_loss(check.missing, lifecycle) == []
        gapped = {r.value["conversation_id"] for r in lifecycle if r.value["state"] == "gap"}
        assert len(gapped) <= len({g["conversation_id"] for g in truth}) // 2, sorted(gapped)
        assert len(check.missing) <= len(truth) // 5
        # Exactly once by event_key: one key per frame published, and nothing but frames.
        published = {(r.value["conversation_id"], r.value["raw"]) for r in events}
        assert published <= {(g["conversation_id"], g["frame"]) for g in truth}
        assert check.mismatched_keys == 0
        assert len({r.value["event_key"] for r in events}) == len(published)

        assert len(results) == 8
        sent = {r["command_id"] for r in results}
        answers = Counter(
            r.value["command_id"]
            for r in await read_topic(bootstrap, COMMAND_RESULTS.full_name(prefix))
            if r.value["command_id"] in sent
        )
        assert answers == Counter(dict.fromkeys(sent, 1))
        assert all(r["status"] in {"delivered", "failed", "rejected"} for r in results), results

        expected = expected_rows([r.value for r in events], [r.value for r in lifecycle])
        deadline = time.monotonic() + 180
        actual = sqlite_rows(db)
        while actual != expected and time.monotonic() < deadline:
            await asyncio.sleep(2.0)
            actual = sqlite_rows(db)
        differing = sorted(c for c in expected if actual.get(c) != expected[c])
        assert not differing, [
            (
                c,
                {
                    k: (v, actual.get(c, {}).get(k))
                    for k, v in expected[c].items()
                    if v != actual.get(c, {}).get(k)
                },
                await _live_states(processors, c),
            )
            for c in differing
        ]
    finally:
        await client.close()
        for process in everything:
            if process.alive():
                process.stop()
