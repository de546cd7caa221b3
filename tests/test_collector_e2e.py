"""Collectors end to end: real embedded broker, real simulator, ``convostream collect`` processes.

Each test uses its own topic prefix and consumer group on the session broker, so they do not
see each other's records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from convostream.broker import broker_binary, create_topics, free_port, wait_until_ready
from convostream.kafka_dist import KafkaUnavailable
from convostream.kafka_engine import KafkaBroker
from schemas.topics import CONVERSATIONS, MONITOR_DLQ, MONITOR_EVENTS
from tests.collector_harness import (
    CollectorProcess,
    CuttableProxy,
    Record,
    check_events,
    collector_env,
    dump_records,
    ground_truth,
    read_topic,
    unreported_loss,
)
from tests.conftest import KAFKA_TEST_PROPERTIES
from tests.needs import missing_tool

pytestmark = pytest.mark.integration

SECRET = "xi-SECRET-" + uuid.uuid4().hex  # distinctive, so a leak anywhere is found by grep
SIM = {"reorder_ms": 300, "disconnect_every": 5, "events_per_second": 6, "ramp_seconds": 3}


async def _drain(sim: Any, collectors: list[CollectorProcess], timeout: float = 120) -> None:
    """Wait for the simulator to finish, then let the collectors flush and exit. The wait for
    an exit runs in a thread: the loop must keep serving the simulator and the test's proxy,
    or the collector's last calls to the broker hang."""
    await sim.wait_finished(timeout)
    await asyncio.sleep(2.0)
    for collector in collectors:
        assert await asyncio.to_thread(collector.stop) == 0, collector.failure_text()


async def _scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        return await resp.text()


async def _topics(kafka_broker: Any) -> tuple[str, int]:
    """A topic prefix of its own, and the port the simulator will listen on."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    return prefix, free_port()


async def _late_sim(simulator_factory: Any, tmp_path: Path, port: int, **knobs: Any) -> Any:
    """The simulator, started once the collectors run: a conversation over before any
    collector exists is out of every collector's reach (discovery lists in-progress ones)."""
    return await simulator_factory(
        api_key=SECRET,
        seed=11,
        ground_truth=tmp_path / "truth.jsonl",
        port=port,
        **{**SIM, **knobs},
    )


async def test_two_collectors_publish_every_frame_exactly_once(
    kafka_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    # Agent 1 streams three types only (monitoring_events): fewer frames is not loss.
    restricted = "user_transcript,agent_response,agent_chat_response_part"
    prefix, sim_port = await _topics(kafka_broker)
    group = f"g-{uuid.uuid4().hex[:8]}"
    ports = [free_port(), free_port()]
    collectors = [
        CollectorProcess(
            f"c{i}",
            collector_env(
                kafka_broker.bootstrap,
                f"http://127.0.0.1:{sim_port}",
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
    for collector in collectors:
        await collector.joined()
    sim = await _late_sim(
        simulator_factory, tmp_path, sim_port, conversations=60, monitoring_events=f"1={restricted}"
    )
    await sim.wait_finished(120)
    await asyncio.sleep(2.0)
    scraped = [await _scrape(port) for port in ports]
    await _drain(sim, collectors)

    events = await read_topic(kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix))
    lifecycle = await read_topic(kafka_broker.bootstrap, CONVERSATIONS.full_name(prefix))
    check = check_events(ground_truth(tmp_path / "truth.jsonl"), events)
    # A simulated drop that lands in a conversation's last moments loses the frames queued on
    # the socket (an error frame or a plain TCP abort), and the reconnect meets the end (close
    # 1008): a gap record must say so. That is rare.
    assert unreported_loss(check.missing, lifecycle) == []
    cut = {r.value["conversation_id"] for r in lifecycle if r.value["state"] == "gap"}
    assert len(cut) <= 60 // 10, sorted(cut)
    assert check.duplicates == 0, [(k[0], k[1][:40], c) for k, c in check.copies.items()]
    assert check.order_violations == 0
    assert sim.status()["drops"] > 0  # the run did exercise reconnects
    selective = {c.conversation_id for c in sim.conversations if c.streamed is not None}
    assert selective
    streamed = {r.value["type"] for r in events if r.value["conversation_id"] in selective}
    assert streamed <= {*restricted.split(","), "error"}  # and the error frame of an error close
    # Selective streaming must not mislead the replay alignment: no replay gap (a drop at the
    # end, above, is no replay gap).
    assert [
        (r.value["conversation_id"], r.value["detail"])
        for r in lifecycle
        if r.value["conversation_id"] in selective
        and r.value["state"] == "gap"
        and "ended_while_disconnected" not in (r.value["detail"] or "")
    ] == []

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
    """A collector SIGKILLed before it ever wrote a checkpoint, in conversations longer than
    the upstream's replay window: its successor reads back what it had published, so nothing
    is published twice and every copy of a repeated text keeps its key. On Tansu, whose end
    offset leaves out the rest of a partition's last batch, those few records are published
    again, with their keys."""
    prefix, port = await _topics(kafka_broker)
    group = f"g-{uuid.uuid4().hex[:8]}"
    env = collector_env(
        kafka_broker.bootstrap, f"http://127.0.0.1:{port}", SECRET, prefix, group,
        CONVOSTREAM_COLLECTOR_CHECKPOINT_INTERVAL="3600",
    )  # fmt: skip
    collectors = [CollectorProcess(f"k{i}", env, tmp_path) for i in range(2)]
    for collector in collectors:
        collector.start()
    for collector in collectors:
        await collector.joined()
    sim = await _late_sim(
        simulator_factory, tmp_path, port,
        conversations=40, events_per_second=10, turns=14, repeat_ratio=0.2,
    )  # fmt: skip
    await asyncio.sleep(12.0)
    collectors[0].kill()
    await asyncio.sleep(6.0)
    collectors[0].start()
    await _drain(sim, collectors)

    truth = ground_truth(tmp_path / "truth.jsonl")
    per_conversation = Counter(g["conversation_id"] for g in truth)
    assert max(per_conversation.values()) > 150  # longer than the replay window
    events = await read_topic(kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix))
    lifecycle = await read_topic(kafka_broker.bootstrap, CONVERSATIONS.full_name(prefix))
    dump_records(tmp_path / "topics.jsonl", [*events, *lifecycle])
    short, extra = _occurrence_check(truth, events, lifecycle)
    assert extra == []  # no occurrence of a repeated text got a second key
    assert short == []  # nothing lost unless a gap says so
    assert check_events(truth, events).order_violations == 0
    read_back = [  # k1 once k0's session expired, or k0's second life after a rebalance
        json.loads(line)["records"]
        for collector in collectors
        for line in collector.log_text().splitlines()
        if "published records read back" in line
    ]
    assert sum(read_back) > 0, read_back  # the successor did read the dead one's records
    keys = Counter(r.value["event_key"] for r in events)
    twice = sum(n - 1 for n in keys.values())
    if isinstance(kafka_broker, KafkaBroker):
        assert twice == 0
    else:
        assert twice <= MONITOR_EVENTS.partitions * 20


@contextlib.asynccontextmanager
async def _proxied(engine: str) -> AsyncIterator[tuple[CuttableProxy, str]]:
    """A broker of its own that clients reach only through a :class:`CuttableProxy`."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = CuttableProxy(broker_port, proxy_port)
    await proxy.start()
    bootstrap = f"127.0.0.1:{proxy_port}"
    broker: KafkaBroker | subprocess.Popen[bytes]
    try:
        if engine == "kafka":
            broker = KafkaBroker(
                port=broker_port, advertised_port=proxy_port, properties=KAFKA_TEST_PROPERTIES
            )
            try:  # start() runs a loop of its own: a thread, so that this one serves the proxy
                await asyncio.to_thread(broker.start)
            except KafkaUnavailable as exc:
                missing_tool(str(exc))
        else:
            broker = _tansu(broker_port, proxy_port)
            await wait_until_ready(bootstrap)
            await create_topics(bootstrap)
        yield proxy, bootstrap
    finally:
        if isinstance(broker, KafkaBroker):
            await asyncio.to_thread(broker.stop)
        else:
            broker.terminate()
            broker.wait(10)
        await proxy.close()


@pytest.fixture
async def proxied_broker() -> AsyncIterator[tuple[CuttableProxy, str]]:
    """Tansu behind a :class:`CuttableProxy`."""
    async with _proxied("tansu") as proxied:
        yield proxied


@pytest.fixture
async def proxied_session_engine(broker_engine: str) -> AsyncIterator[tuple[CuttableProxy, str]]:
    """The session's engine behind a :class:`CuttableProxy`."""
    async with _proxied(broker_engine) as proxied:
        yield proxied


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
    proxied_session_engine: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    proxy, bootstrap = proxied_session_engine
    sim_port = free_port()
    env = collector_env(
        bootstrap, f"http://127.0.0.1:{sim_port}", SECRET, "", f"g-{uuid.uuid4().hex[:8]}"
    )
    collector = CollectorProcess("o", env, tmp_path)
    collector.start()
    # The outage must find the collector running: with the cut first (its start-up outlasted a
    # fixed wait on a loaded machine), conversations ended before any collector could see them.
    await collector.joined()
    sim = await simulator_factory(
        api_key=SECRET,
        seed=5,
        ground_truth=tmp_path / "truth.jsonl",
        port=sim_port,
        conversations=40,
        **{**SIM, "events_per_second": 3},
    )
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
    assert unreported_loss(check.missing, lifecycle) == []
    assert check.order_violations == 0
    assert check.mismatched_keys == 0


def _unreadable(text: str) -> bool:
    """Whether a ground-truth frame is one the collector must send to the DLQ."""
    try:
        obj = json.loads(text)
    except ValueError:
        return True
    return not isinstance(obj, dict) or not isinstance(obj.get("type"), str)


def _occurrence_check(
    truth: list[dict[str, Any]], records: list[Record], lifecycle: list[Record]
) -> tuple[list[tuple[str, str, int, int]], list[tuple[str, str, int, int]]]:
    """Per (conversation, text): distinct keys in the events and DLQ topics vs occurrences
    generated.

    Returns (too few keys in conversations without a gap record, too many keys anywhere).
    """
    owed: Counter[tuple[str, str]] = Counter((g["conversation_id"], g["frame"]) for g in truth)
    keys: dict[tuple[str, str], set[str]] = {}
    for rec in records:
        v = rec.value
        raw = v["raw"] if isinstance(v["raw"], str) else v["raw"].decode()  # a letter's bytes
        keys.setdefault((v["conversation_id"], raw), set()).add(v["event_key"])
    gapped = {r.value["conversation_id"] for r in lifecycle if r.value["state"] == "gap"}
    short = [
        (c, t[:40], n, len(keys.get((c, t), ())))
        for (c, t), n in owed.items()
        if len(keys.get((c, t), ())) < n and c not in gapped
    ]
    extra = [
        (c, t[:40], owed[(c, t)], len(k)) for (c, t), k in keys.items() if len(k) > owed[(c, t)]
    ]
    return short, extra


# right after discovery, during the rebalance, mid-run; on Kafka the rebalance one (CI time)
@pytest.mark.parametrize(
    "kill_at",
    [
        pytest.param(1.5, marks=pytest.mark.tansu_only),
        4.0,
        pytest.param(9.0, marks=pytest.mark.tansu_only),
    ],
)
async def test_sigkill_with_repeats_markers_reorder_and_drops_keeps_one_key_per_occurrence(
    kill_at: float, kafka_broker: Any, simulator_factory: Any, tmp_path: Path
) -> None:
    prefix, port = await _topics(kafka_broker)
    group = f"g-{uuid.uuid4().hex[:8]}"
    env = collector_env(
        kafka_broker.bootstrap, f"http://127.0.0.1:{port}", SECRET, prefix, group,
        CONVOSTREAM_COLLECTOR_CHECKPOINT_INTERVAL="1",
    )  # fmt: skip
    collectors = [CollectorProcess(f"s{i}", env, tmp_path) for i in range(2)]
    collectors[0].start()
    await collectors[0].joined()
    sim = await _late_sim(
        simulator_factory,
        tmp_path,
        port,
        conversations=30,
        repeat_ratio=0.2,
        malformed_ratio=0.03,
        replay_markers=True,
        reorder_ms=100,
        disconnect_every=4,
        turns=8,
    )
    await asyncio.sleep(1.0)
    collectors[1].start()  # joins while the first owns everything: a rebalance
    await asyncio.sleep(kill_at)
    collectors[0].kill()
    await _drain(sim, collectors[1:], timeout=180)

    truth = ground_truth(tmp_path / "truth.jsonl")
    assert len(truth) > len({(g["conversation_id"], g["frame"]) for g in truth})  # repeats
    assert any(_unreadable(g["frame"]) for g in truth)
    events = await read_topic(kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix))
    letters = await read_topic(kafka_broker.bootstrap, MONITOR_DLQ.full_name(prefix))
    lifecycle = await read_topic(kafka_broker.bootstrap, CONVERSATIONS.full_name(prefix))
    dump_records(tmp_path / "topics.jsonl", [*events, *letters, *lifecycle])
    assert {r.value["reason"] for r in letters} == {"invalid_json", "not_an_object", "missing_type"}
    if isinstance(kafka_broker, KafkaBroker):  # Tansu may hide a batch's tail from the read-back
        assert len({r.value["event_key"] for r in letters}) == len(letters)  # read back: no copy
    short, extra = _occurrence_check(truth, [*events, *letters], lifecycle)
    assert extra == []  # no occurrence ever got two keys
    assert short == []  # nothing lost unless a gap says so
    gapped = {r.value["conversation_id"] for r in lifecycle if r.value["state"] == "gap"}
    conversations = {g["conversation_id"] for g in truth}
    assert len(gapped) <= len(conversations) // 3, sorted(gapped)  # the check above has teeth
