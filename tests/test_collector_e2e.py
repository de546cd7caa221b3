"""Collectors end to end: real embedded broker, real simulator, ``convostream collect`` processes.

Each test uses its own topic prefix and consumer group on the session broker, so they do not
see each other's records.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from convostream.broker import broker_binary, create_topics, free_port, wait_until_ready
from schemas.topics import CONVERSATIONS, MONITOR_DLQ, MONITOR_EVENTS
from tests.collector_harness import (
    CollectorProcess,
    CuttableProxy,
    Record,
    check_events,
    collector_env,
    ground_truth,
    read_topic,
)

pytestmark = pytest.mark.integration

SECRET = "xi-SECRET-" + uuid.uuid4().hex  # distinctive, so a leak anywhere is found by grep
SIM = {"reorder_ms": 300, "disconnect_every": 5, "events_per_second": 6, "ramp_seconds": 3}


async def _setup(kafka_broker: Any, simulator_factory: Any, tmp_path: Path, **knobs: Any) -> Any:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    sim = await simulator_factory(
        api_key=SECRET, seed=11, ground_truth=tmp_path / "truth.jsonl", **{**SIM, **knobs}
    )
    return prefix, sim


async def _drain(sim: Any, collectors: list[CollectorProcess], timeout: float = 120) -> None:
    """Wait for the simulator to finish, then let the collectors flush and exit."""
    await sim.wait_finished(timeout)
    await asyncio.sleep(2.0)
    for collector in collectors:
        assert collector.stop() == 0, collector.log_text()[-3000:]


def _unreported(missing: list[tuple[str, str]], lifecycle: list[Record]) -> list[str]:
    """Conversations with missing frames and no gap record saying why.

    A conversation that ends while no collector holds its socket (its owner was killed, or the
    broker outage held the collector back) refuses the reconnect with 1008: frames sent after
    the last replay are gone for good, and the collector must say so with a gap record.
    """
    reported = {
        r.value["conversation_id"]
        for r in lifecycle
        if r.value["state"] == "gap" and "ended_while_disconnected" in (r.value["detail"] or "")
    }
    return sorted({cid for cid, _ in missing} - reported)


async def _scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        return await resp.text()


async def test_two_collectors_publish_every_frame_exactly_once(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    prefix, sim = await _setup(kafka_broker, simulator_factory, tmp_path, conversations=60)
    group = f"g-{uuid.uuid4().hex[:8]}"
    ports = [free_port(), free_port()]
    collectors = [
        CollectorProcess(
            f"c{i}",
            collector_env(
                kafka_broker.bootstrap,
                sim.url,
                SECRET,
                prefix,
                group,
                CONVOSTREAM_METRICS_PORT=str(port),
            ),
            tmp_path,
        )
        for i, port in enumerate(ports)
    ]
    for collector in collectors:
        collector.start()
    await sim.wait_finished(120)
    await asyncio.sleep(2.0)
    scraped = [await _scrape(port) for port in ports]
    await _drain(sim, collectors)

    events = await read_topic(kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix))
    lifecycle = await read_topic(kafka_broker.bootstrap, CONVERSATIONS.full_name(prefix))
    check = check_events(ground_truth(tmp_path / "truth.jsonl"), events)
    assert check.missing == []
    assert check.duplicates == 0, [(k[0], k[1][:40], c) for k, c in check.copies.items()]
    assert check.order_violations == 0
    assert sim.status()["drops"] > 0  # the run did exercise reconnects

    states: dict[str, set[str]] = {}
    for rec in lifecycle:
        states.setdefault(rec.value["conversation_id"], set()).add(rec.value["state"])
    assert len(states) == 60
    incomplete = {c: s for c, s in states.items() if not {"discovered", "monitoring", "ended"} <= s}
    assert incomplete == {}, [
        (
            r.value["state"],
            r.value["collector_id"],
            r.value["detail"][:200] if r.value["detail"] else None,
        )
        for r in lifecycle
        if r.value["conversation_id"] in incomplete
    ]

    # both collectors did work, and nothing anywhere carries the API key
    for text in scraped:
        assert "convostream_collector_frames_total" in text
        assert SECRET not in text
    monitored = [
        sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("convostream_collector_frames_total{")
        )
        for text in scraped
    ]
    assert all(n > 0 for n in monitored)
    for collector in collectors:
        assert SECRET not in collector.log_text()
    dlq = await read_topic(kafka_broker.bootstrap, MONITOR_DLQ.full_name(prefix))
    for rec in [*events, *lifecycle, *dlq]:
        assert SECRET.encode() not in rec.raw


async def test_killed_collector_loses_nothing(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    prefix, sim = await _setup(kafka_broker, simulator_factory, tmp_path, conversations=60)
    group = f"g-{uuid.uuid4().hex[:8]}"
    env = collector_env(kafka_broker.bootstrap, sim.url, SECRET, prefix, group)
    collectors = [CollectorProcess(f"k{i}", env, tmp_path) for i in range(2)]
    for collector in collectors:
        collector.start()
    await asyncio.sleep(7.0)
    collectors[0].kill()
    await asyncio.sleep(6.0)
    collectors[0].start()
    await _drain(sim, collectors)

    events = await read_topic(kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix))
    lifecycle = await read_topic(kafka_broker.bootstrap, CONVERSATIONS.full_name(prefix))
    check = check_events(ground_truth(tmp_path / "truth.jsonl"), events)
    assert _unreported(check.missing, lifecycle) == []
    assert check.mismatched_keys == 0, [(k[0], k[1][:40], c) for k, c in check.copies.items()]
    assert check.order_violations == 0


@pytest.fixture
async def proxied_broker() -> Any:
    """A broker of its own that clients reach only through a :class:`CuttableProxy`."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = CuttableProxy(broker_port, proxy_port)
    await proxy.start()
    proc = _tansu(broker_port, proxy_port)
    bootstrap = f"127.0.0.1:{proxy_port}"
    try:
        await wait_until_ready(bootstrap)
        await create_topics(bootstrap)
        yield proxy, bootstrap
    finally:
        proc.terminate()
        proc.wait(10)
        await proxy.close()


def _tansu(broker_port: int, proxy_port: int) -> subprocess.Popen[bytes]:
    """Tansu listening on ``broker_port`` but telling clients to come through the proxy."""
    return subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{broker_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{proxy_port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )


async def test_broker_outage_loses_nothing_and_keeps_order(
    proxied_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    proxy, bootstrap = proxied_broker
    sim = await simulator_factory(
        api_key=SECRET,
        seed=5,
        ground_truth=tmp_path / "truth.jsonl",
        conversations=40,
        **{**SIM, "events_per_second": 3},
    )
    env = collector_env(bootstrap, sim.url, SECRET, "", f"g-{uuid.uuid4().hex[:8]}")
    collector = CollectorProcess("o", env, tmp_path)
    collector.start()
    await asyncio.sleep(6.0)
    frames_before = sim.status()["frames_generated"]
    await proxy.cut()
    await asyncio.sleep(20.0)
    assert sim.status()["frames_generated"] > frames_before + 500  # frames kept coming
    await proxy.restore()
    await _drain(sim, [collector])

    events = await read_topic(bootstrap, MONITOR_EVENTS.name)
    lifecycle = await read_topic(bootstrap, CONVERSATIONS.name)
    check = check_events(ground_truth(tmp_path / "truth.jsonl"), events)
    assert _unreported(check.missing, lifecycle) == []
    assert check.order_violations == 0
    assert check.mismatched_keys == 0
