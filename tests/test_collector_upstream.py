"""Discovery and monitor sockets against the real simulator, in-process (no broker needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from ingest.discovery import RestClient
from ingest.metrics import Metrics
from ingest.monitor import Context, Ending, Monitor
from ingest.publisher import Publisher
from schemas.serde import Serde
from simulator.testing import API_KEY, wait_for

pytestmark = pytest.mark.integration


def _rest(url: str, key: str, metrics: Metrics) -> RestClient:
    return RestClient(
        url, key, metrics, timeout=5, backoff_base=0.01, backoff_max=0.05, attempts=50
    )


async def test_discovery_backs_off_on_429_and_503_and_still_lists_everything(
    simulator_factory: Any,
) -> None:
    sim = await simulator_factory(conversations=25, rest_error_rate=0.4, seed=2)
    metrics = Metrics()
    rest = _rest(sim.url, API_KEY, metrics)
    try:
        found = [c async for c in rest.in_progress(None, page_size=5)]
    finally:
        await rest.close()
    assert {c.conversation_id for c in found} == {c.conversation_id for c in sim.conversations}
    errors = {
        s.labels["status"]: s.value
        for m in metrics.discovery_errors.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert set(errors) <= {"429", "503"}
    assert sum(errors.values()) > 0


async def _monitor_until_end(sim: Any, key: str, conversation_id: str) -> tuple[Ending, list[Any]]:
    metrics = Metrics()
    published: list[dict[str, Any]] = []
    ended: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
    publisher = Publisher(lambda: AIOKafkaProducer(), metrics, 1000, 10**6)  # never started
    rest = _rest(sim.url, key, metrics)
    ctx = Context(
        collector_id="test",
        ws_base=sim.ws_url,
        api_key=key,
        serde=Serde(),
        publisher=publisher,
        metrics=metrics,
        rest=rest,
        events_topic="e",
        events_partitions=12,
        dlq_topic="d",
        dlq_partitions=3,
        lifecycle=published.append,
        connect_timeout=5,
        ping_interval=0,
        backoff_base=0.01,
        backoff_max=0.05,
        max_frame_bytes=1 << 20,
        echo_window=0,
    )
    monitor = Monitor(ctx, conversation_id, None, None, lambda _m, e: ended.set_result(e))
    monitor.start()
    try:
        return await asyncio.wait_for(ended, 20), published
    finally:
        await monitor.stop()
        await rest.close()


async def test_bad_key_gives_up_cleanly_with_the_reason(simulator_factory: Any) -> None:
    sim = await simulator_factory(conversations=1, seed=3)
    await wait_for(lambda: sim.conversations)
    cid = sim.conversations[0].conversation_id
    ending, _ = await _monitor_until_end(sim, "wrong-key", cid)
    assert ending.how == "refused"
    assert ending.status == "unauthorized"
    assert "invalid api key" in ending.detail


async def test_unknown_conversation_is_over_after_1008(simulator_factory: Any) -> None:
    sim = await simulator_factory(conversations=1, seed=3)
    ending, _ = await _monitor_until_end(sim, API_KEY, "conv_does_not_exist")
    assert ending.how == "ended_while_disconnected"
    assert ending.status == "not-found"


async def test_monitor_follows_a_conversation_to_its_end(simulator_factory: Any) -> None:
    sim = await simulator_factory(conversations=1, seed=4, events_per_second=50)
    await wait_for(lambda: sim.conversations)
    cid = sim.conversations[0].conversation_id
    ending, lifecycle = await _monitor_until_end(sim, API_KEY, cid)
    assert ending.how in ("end_call", "status")
    assert [r["state"] for r in lifecycle] == ["monitoring"]
