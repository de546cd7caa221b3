"""Discovery and monitor sockets against the real simulator, in-process (no broker needed)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
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
    await wait_for(lambda: sum(1 for _ in sim.live_conversations()) == 25)  # past "initiated"
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


def _context(sim: Any, key: str, metrics: Metrics, lifecycle: list[dict[str, Any]]) -> Context:
    """A monitor context whose publisher is never started: offered records stay counted."""
    publisher = Publisher(lambda: AIOKafkaProducer(), metrics, 1000, 10**6)
    return Context(
        collector_id="test",
        ws_base=sim.ws_url,
        api_key=key,
        serde=Serde(),
        publisher=publisher,
        metrics=metrics,
        rest=_rest(sim.url, key, metrics),
        events_topic="e",
        events_partitions=12,
        dlq_topic="d",
        dlq_partitions=3,
        lifecycle=lifecycle.append,
        connect_timeout=5,
        ping_interval=0,
        backoff_base=0.01,
        backoff_max=0.05,
        max_frame_bytes=1 << 20,
    )


async def _monitor_until_end(
    sim: Any, key: str, conversation_id: str, until_gap: bool = False
) -> tuple[Ending | None, list[Any]]:
    metrics = Metrics()
    published: list[dict[str, Any]] = []
    ended: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
    ctx = _context(sim, key, metrics, published)
    monitor = Monitor(ctx, conversation_id, None, None, lambda _m, e: ended.set_result(e))
    monitor.start()
    try:
        if until_gap:
            await wait_for(lambda: any(r["state"] == "gap" for r in published), 20)
            await asyncio.sleep(0.5)  # more refusals: still one gap, and no end
            assert not ended.done()
            assert metrics.refused._value.get() >= 2
            return None, published
        return await asyncio.wait_for(ended, 20), published
    finally:
        await monitor.stop()
        await ctx.rest.close()


async def test_refused_monitor_is_a_gap_and_an_alarm_not_an_end(simulator_factory: Any) -> None:
    """A 1008 while the conversation is not over (here: a bad key) never ends it."""
    sim = await simulator_factory(conversations=1, seed=3)
    await wait_for(lambda: sim.conversations)
    cid = sim.conversations[0].conversation_id
    ending, lifecycle = await _monitor_until_end(sim, "wrong-key", cid, until_gap=True)
    assert ending is None
    gaps = [r for r in lifecycle if r["state"] == "gap"]
    assert len(gaps) == 1
    assert "refused" in gaps[0]["detail"]
    assert "invalid api key" in gaps[0]["detail"]
    assert "wrong-key" not in str(lifecycle)


async def test_unknown_conversation_is_over_after_1008(simulator_factory: Any) -> None:
    sim = await simulator_factory(conversations=1, seed=3)
    ending, _ = await _monitor_until_end(sim, API_KEY, "conv_does_not_exist")
    assert ending is not None
    assert ending.how == "ended_while_disconnected"
    assert ending.status == "not-found"


async def test_monitor_follows_a_conversation_to_its_end(simulator_factory: Any) -> None:
    sim = await simulator_factory(conversations=1, seed=4, events_per_second=50)
    await wait_for(lambda: sim.conversations)
    cid = sim.conversations[0].conversation_id
    ending, lifecycle = await _monitor_until_end(sim, API_KEY, cid)
    assert ending is not None
    assert ending.how in ("end_call", "status")
    assert [r["state"] for r in lifecycle] == ["monitoring"]


async def test_paused_monitor_hands_on_nothing_not_even_a_held_replay_burst(
    simulator_factory: Any,
) -> None:
    """A hand-over sends the history as of the pause: a replay burst released after it (the
    socket went quiet) would be published again by the next owner."""
    sim = await simulator_factory(conversations=1, seed=4, events_per_second=1)
    await wait_for(lambda: sim.conversations)
    await asyncio.sleep(2.0)  # a few frames to replay on connect
    ctx = _context(sim, API_KEY, Metrics(), [])
    monitor = Monitor(ctx, sim.conversations[0].conversation_id, None, None, lambda _m, _e: None)
    monitor.start()
    try:
        await wait_for(lambda: monitor.reader.pending, 10, interval=0.001)
        monitor.pause()
        history = monitor.reader.history()
        await asyncio.sleep(1.0)  # far longer than the quiet spell that closes a burst
        assert ctx.publisher.records == 0
        assert monitor.reader.history() == history
        monitor.resume()
        await wait_for(lambda: ctx.publisher.records > 0, 10)
    finally:
        await monitor.stop()
        await ctx.rest.close()


async def test_a_handshake_refused_for_good_asks_rest_at_once_and_is_an_alarm() -> None:
    """A 403 on the monitor handshake is not retriable: each one asks REST right away (not
    after several failures), and while REST says in progress it is a gap, like a 1008."""
    statuses = ["in-progress", "done"]
    handshakes: list[str] = []

    async def monitor(request: web.Request) -> web.Response:
        handshakes.append(request.match_info["cid"])
        return web.Response(status=403)

    async def conversation(request: web.Request) -> web.Response:
        return web.json_response({"status": statuses.pop(0)})

    app = web.Application()
    app.router.add_get("/v1/convai/conversations/{cid}/monitor", monitor)
    app.router.add_get("/v1/convai/conversations/{cid}", conversation)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    lifecycle: list[dict[str, Any]] = []
    metrics = Metrics()
    ctx = _context(SimpleNamespace(url=url, ws_url=url), API_KEY, metrics, lifecycle)
    ended: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
    refused = Monitor(ctx, "c1", None, None, lambda _m, e: ended.set_result(e))
    refused.start()
    try:
        ending = await asyncio.wait_for(ended, 20)
    finally:
        await refused.stop()
        await ctx.rest.close()
        await runner.cleanup()
    assert handshakes == ["c1", "c1"]
    assert (ending.how, ending.status) == ("ended_while_disconnected", "done")
    assert "HTTP 403" in ending.detail
    [gap] = [r for r in lifecycle if r["state"] == "gap"]
    assert "refused" in gap["detail"]
    assert "HTTP 403" in gap["detail"]
    assert metrics.refused._value.get() == 1
