"""The rules engine end to end: simulator (reorder, socket drops, escalating users) → collector
→ convai.monitor.events → two ``convostream rules`` processes (one SIGKILLed and restarted
mid-run) → convai.commands → a real command worker → the simulator's commands log.

Every conversation whose user asked for a human must receive exactly one
``enable_human_takeover`` (chat) or ``transfer_to_number`` (voice) at the upstream, and no
other conversation any."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from convostream.broker import create_topics
from schemas.clock import now_micros
from schemas.serde import Serde
from schemas.topics import ALERTS, COMMAND_RESULTS, COMMANDS, MONITOR_EVENTS
from simulator.testing import API_KEY
from tests.collector_harness import CollectorProcess, collector_env, fence, read_topic
from tests.commands_rig import KEYS, ROTATED_KEY, ROTATED_KEY_ID, Rig, commands_log, running_rig
from tests.rules_harness import TAKEOVER, RulesProcess, escalated, received_types, rules_env

pytestmark = pytest.mark.integration

SIM = {
    "conversations": 14,
    # conversations wait until the engines and the collector are up (about 8 s on Kafka), and
    # the escalation (in the first half of the turns) leaves each one at least 13 s: longer
    # than a SIGKILLed engine's partitions wait for its session to expire and their state to
    # be restored, so every escalation is acted on while its conversation is live
    "initiated_seconds": 8,
    "turns": 24,
    "events_per_second": 5,
    "chat_ratio": 0.5,
    "escalation_ratio": 0.5,
    "reorder_ms": 150,
    "disconnect_every": 5,
    "ramp_seconds": 3,
    "seed": 21,
}


async def _get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _ready(engine: RulesProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert engine.alive(), engine.failure_text()
        try:
            status, _ = await _get(engine.metrics_port, "/readyz")
        except aiohttp.ClientError:
            status = 0
        if status == 200:
            return
        await asyncio.sleep(0.3)
    raise AssertionError("rules engine not ready: " + engine.failure_text())


async def test_every_escalation_gets_exactly_one_takeover_or_transfer(
    kafka_broker: Any, tmp_path: Path
) -> None:
    truth = tmp_path / "truth.jsonl"
    async with running_rig(
        kafka_broker.bootstrap, tmp_path, sim_knobs={**SIM, "ground_truth": truth}, sim_live=False
    ) as rig:
        rig_: Rig = rig
        prefix = rig_.prefix
        # the engine signs with svc's rotated key, named by key_id, as send-command would
        env = rules_env(
            kafka_broker.bootstrap,
            prefix,
            rig_.sim.url,
            API_KEY,
            "svc",
            ROTATED_KEY,
            CONVOSTREAM_COMMANDS_KEY_ID=ROTATED_KEY_ID,
        )
        engines = [RulesProcess(f"rules-{n}", env, tmp_path) for n in ("a", "b")]
        collector = CollectorProcess(
            "c1",
            collector_env(
                kafka_broker.bootstrap, rig_.sim.url, API_KEY, prefix, f"{prefix}collectors"
            ),
            tmp_path,
        )
        try:
            for engine in engines:
                engine.start()
            await asyncio.gather(*(_ready(e) for e in engines))
            collector.start()
            # SIGKILL one engine once the first command has reached the upstream, then restart it
            await _until(lambda: commands_log(rig_.log), 60, "a first command upstream")
            engines[0].kill()
            await asyncio.sleep(1.0)
            engines[0].start()
            await _ready(engines[0])
            await rig_.sim.wait_finished(180)
            expected = escalated(truth)
            kinds = {c.conversation_id: c.script.kind for c in rig_.sim.conversations}
            assert {kinds[c] for c in expected} == {"chat", "voice"}, "seed must cover both"
            want = {(c, TAKEOVER[kinds[c]]) for c in expected}
            await _until(
                lambda: want <= set(received_types(commands_log(rig_.log))),
                120,
                "every escalation's command upstream",
            )
            await asyncio.sleep(3.0)  # a late duplicate would show up now
            got = received_types(commands_log(rig_.log))
            assert got == dict.fromkeys(want, 1), engines[0].failure_text(2000)

            status, text = await _get(engines[1].metrics_port, "/metrics")
            assert status == 200
            assert "convostream_rules_fires_total" in text
            assert (await _get(engines[1].metrics_port, "/healthz"))[0] == 200
        finally:
            for proc in (collector, *engines):
                if proc.alive():
                    proc.stop()
        # what the topics say: one id per escalation, duplicates answered as such
        commands = await read_topic(kafka_broker.bootstrap, COMMANDS.full_name(prefix))
        ids = {r.value["command_id"] for r in commands}
        assert len(ids) == len(want)
        assert all(r.value["issued_by"] == "svc" for r in commands)
        results = await read_topic(kafka_broker.bootstrap, COMMAND_RESULTS.full_name(prefix))
        statuses = {
            (r.value["command_id"], r.value["status"])
            for r in results
            if r.value["command_id"] in ids  # not the answers to read_topic's fence records
        }
        assert {s for _, s in statuses} <= {"delivered", "duplicate"}, statuses
        assert sum(1 for _, s in statuses if s == "delivered") == len(want)
        for engine in engines:
            assert ROTATED_KEY not in engine.log_text()


def _event(
    key: str,
    conversation: str,
    kind: str,
    connection: str = "conn",
    seq: int = 0,
    text: str = "",
    source: str = "live",
) -> dict[str, Any]:
    """A MonitorEvent record as a collector (or, with ``source`` backfill, the post-call
    backfill, which also uses ``backfill`` as collector_id and connection_id) writes it."""
    raw = json.dumps({"type": kind, "n": seq, "text": text})
    backfill = source == "backfill"
    return {
        "event_key": key,
        "conversation_id": conversation,
        "agent_id": "agent_1",
        "type": kind,
        "upstream_event_id": None,
        "received_at": now_micros(),
        "collector_id": "backfill" if backfill else "test",
        "connection_id": "backfill" if backfill else connection,
        "connection_seq": seq,
        "replay": connection != "conn0" and not backfill,
        "raw": raw,
        "payload": ("convostream.RawPayload", {"type": "g", "data": raw, "reason": None}),
        "source": source,
    }


async def _produce(bootstrap: str, prefix: str, events: list[dict[str, Any]]) -> None:
    serde = Serde()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                MONITOR_EVENTS.full_name(prefix),
                serde.encode("MonitorEvent", event),
                key=event["conversation_id"].encode(),
            )
    finally:
        await producer.stop()
    await fence(bootstrap, MONITOR_EVENTS.full_name(prefix))


async def _topics_and_rules(bootstrap: str, tmp_path: Path, rules: str) -> tuple[str, Path]:
    """Topics under a fresh prefix, and a rules file holding ``rules``."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    await create_topics(bootstrap, prefix=prefix)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    return prefix, rules_file


def _offline_env(bootstrap: str, prefix: str, rules_file: Path, **extra: str) -> dict[str, str]:
    """An engine with ``rules_file`` whose upstream is unreachable (no rule needs a lookup)."""
    more = {f"CONVOSTREAM_{name}": value for name, value in extra.items()}
    return rules_env(
        bootstrap,
        prefix,
        "http://127.0.0.1:9",
        API_KEY,
        "svc",
        KEYS["svc"],
        CONVOSTREAM_RULES_FILE=str(rules_file),
        **more,
    )


async def test_backfilled_events_alert_but_send_no_command_and_silence_fires_by_clock(
    kafka_broker: Any, tmp_path: Path
) -> None:
    """A command rule completed by a backfilled event sends nothing (the call is over) while
    an alert rule on it fires; a user turn left unanswered fires its silence rule by the wall
    clock, with no later event of its conversation."""
    prefix, rules_file = await _topics_and_rules(
        kafka_broker.bootstrap,
        tmp_path,
        "rules:\n"
        "  - name: note\n"
        "    when: {type: user_transcript, match: human}\n"
        "    then: {command: contextual_update, contextual_update: escalate}\n"
        "  - name: human-alert\n"
        "    when: {type: user_transcript, match: human}\n"
        "    then: {alert: warning}\n"
        "  - name: quiet\n"
        "    when: {silence: 1}\n"
        "    then: {alert: critical}\n",
    )
    await _produce(
        kafka_broker.bootstrap,
        prefix,
        [
            _event("b1", "conv_backfilled", "user_transcript", text="a human", source="backfill"),
            _event("b2", "conv_backfilled", "agent_response", seq=1, source="backfill"),
            _event("l1", "conv_live", "user_transcript", text="a human please"),
        ],
    )
    env = _offline_env(kafka_broker.bootstrap, prefix, rules_file, RULES_SILENCE_GRACE="0")
    engine = RulesProcess("rules", env, tmp_path)
    try:
        engine.start()
        await _until(lambda: engine.log_text().count('"rule fired"') >= 4, 60, "the fires")
        _, metrics = await _get(engine.metrics_port, "/metrics")
        assert 'convostream_rules_skipped_total{reason="backfill",rule="note"} 1.0' in metrics
        assert engine.stop() == 0
    finally:
        if engine.alive():
            engine.stop()
    commands = await read_topic(kafka_broker.bootstrap, COMMANDS.full_name(prefix))
    assert [c.value["conversation_id"] for c in commands] == ["conv_live"]
    alerts = await read_topic(kafka_broker.bootstrap, ALERTS.full_name(prefix))
    assert sorted((a.value["rule"], a.value["conversation_id"]) for a in alerts) == [
        ("human-alert", "conv_backfilled"),
        ("human-alert", "conv_live"),
        ("quiet", "conv_live"),
    ]


async def test_dry_run_alerts_and_rules_check(kafka_broker: Any, tmp_path: Path) -> None:
    """Alerts reach convai.alerts once per (rule, conversation); --dry-run writes nothing."""

    prefix, rules_file = await _topics_and_rules(
        kafka_broker.bootstrap,
        tmp_path,
        "rules:\n"
        "  - name: guardrail\n"
        "    when: {type: guardrail_triggered}\n"
        "    then: {alert: critical}\n",
    )
    await _produce(
        kafka_broker.bootstrap,
        prefix,
        [  # a duplicate of every event, as after a collector crash
            _event(f"k{n}", f"conv_{n % 2}", "guardrail_triggered", f"conn{copy}", n)
            for n in range(3)
            for copy in range(2)
        ],
    )
    env = _offline_env(kafka_broker.bootstrap, prefix, rules_file)
    dry = RulesProcess("dry", {**env, "CONVOSTREAM_RULES_DRY_RUN": "true"}, tmp_path)
    live = RulesProcess("live", env, tmp_path)
    try:
        dry.start()
        await _until(lambda: dry.log_text().count("rule would fire") >= 2, 60, "dry-run fires")
        # SIGHUP: a broken file keeps the rules in force, a good one replaces them
        good = rules_file.read_text()
        rules_file.write_text("rules: [{name: broken, when: {type: x, count: 0}}]")
        assert dry.proc is not None
        dry.proc.send_signal(signal.SIGHUP)
        await _until(lambda: "rules reload failed" in dry.log_text(), 30, "a failed reload")
        assert "rule 'broken' when.count" in dry.log_text()
        _, metrics = await _get(dry.metrics_port, "/metrics")
        assert 'convostream_rules_reloads_total{result="error"} 1.0' in metrics
        rules_file.write_text(good)
        dry.proc.send_signal(signal.SIGHUP)
        await _until(lambda: "rules reloaded" in dry.log_text(), 30, "a reload")
        assert dry.stop() == 0
        assert await read_topic(kafka_broker.bootstrap, ALERTS.full_name(prefix)) == []
        live.start()
        await _until(lambda: live.log_text().count('"rule fired"') >= 2, 60, "live fires")
        await asyncio.sleep(1.0)
        assert live.stop() == 0
    finally:
        for proc in (dry, live):
            if proc.alive():
                proc.stop()
    alerts = await read_topic(kafka_broker.bootstrap, ALERTS.full_name(prefix))
    assert sorted(a.value["conversation_id"] for a in alerts) == ["conv_0", "conv_1"]
    assert {a.value["severity"] for a in alerts} == {"critical"}
    assert len({a.value["alert_id"] for a in alerts}) == 2
