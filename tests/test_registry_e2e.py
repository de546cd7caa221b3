"""Registry mode end to end: Apicurio Registry as its own process, and the collector, the
processors, the command worker, ``send-command`` and ``tail`` as ``convostream`` processes
with ``CONVOSTREAM_SCHEMA_REGISTRY_URL`` set. Only the collector registers schemas; the other
components run lookup-only. SQL rows must equal an independent computation from the events
topic, six commands (one of each type) must be delivered, and ``tail`` must decode.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from convostream.broker import EmbeddedBroker, create_topics
from schemas.registry import PINNED_ID_BASE
from schemas.serde import RegistryError, Serde, open_serde
from schemas.topics import (
    ALERTS,
    CATALOGUE,
    COMMAND_RESULTS,
    METRICS_CONVERSATIONS,
)
from simulator.testing import API_KEY
from tests.cli_process import CliProcess
from tests.collector_harness import CollectorProcess, collector_env, read_topic
from tests.commands_rig import KEYS, commands_log, new_prefix, start_simulator, write_policy
from tests.processor_harness import (
    ProcessorProcess,
    expected_from_topics,
    processor_env,
    wait_for_rows,
)
from tests.registry_server import apicurio_registry

pytestmark = pytest.mark.integration

SIX = [  # (conversation kind, send-command arguments)
    ("chat", ["contextual_update", "--text", "VIP customer"]),
    ("chat", ["enable_human_takeover"]),
    ("chat", ["send_human_message", "--text", "Hello from a human"]),
    ("chat", ["disable_human_takeover"]),
    ("chat", ["end_call"]),
    ("voice", ["transfer_to_number", "--phone-number", "+14155550100"]),  # phone calls only
]


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with apicurio_registry(tmp_path_factory.mktemp("apicurio") / "apicurio.log") as url:
        yield url


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "convostream",
        *args,
        env={**os.environ, "CONVOSTREAM_LOG_FORMAT": "json", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def _registered(url: str, prefix: str, collector: CollectorProcess) -> Serde:
    """A lookup-only serde, once the collector has registered the whole catalogue."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return await open_serde(url, CATALOGUE, prefix, lookup_only=True)
        except RegistryError:
            assert time.monotonic() < deadline, collector.failure_text()
            assert collector.alive(), collector.failure_text()
            await asyncio.sleep(0.5)


async def test_pipeline_in_registry_mode(
    kafka_broker: EmbeddedBroker, registry_url: str, tmp_path: Path
) -> None:
    prefix = new_prefix()
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    # Conversations long enough to outlive the six commands (each a `send-command` process):
    # with 40 turns the chat target ended before the fourth on a loaded machine.
    sim = await start_simulator(
        tmp_path / "commands.jsonl", conversations=6, events_per_second=4.0, turns=400
    )
    common = {
        "CONVOSTREAM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "CONVOSTREAM_TOPIC_PREFIX": prefix,
        "CONVOSTREAM_SCHEMA_REGISTRY_URL": registry_url,
    }
    readers = {**common, "CONVOSTREAM_SCHEMA_REGISTRY_LOOKUP_ONLY": "true"}
    collector = CollectorProcess(
        "c0",
        collector_env(kafka_broker.bootstrap, sim.url, API_KEY, prefix, f"g-{prefix}", **common),
        tmp_path,
    )
    db = tmp_path / "metrics.db"
    processor = ProcessorProcess(
        processor_env(
            kafka_broker.bootstrap, prefix, f"sqlite:///{db}", tmp_path / "state", **readers
        ),
        tmp_path,
    )
    worker = CliProcess(
        "command-worker",
        {
            **readers,
            "CONVOSTREAM_UPSTREAM_URL": sim.url,
            "CONVOSTREAM_API_KEY": API_KEY,
            "CONVOSTREAM_COMMANDS_POLICY_FILE": str(write_policy(tmp_path / "policy.json")),
            "CONVOSTREAM_COMMANDS_KEYS": json.dumps(KEYS),
            "CONVOSTREAM_COMMANDS_GROUP_ID": f"{prefix}workers",
            "CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS": "2000",
        },
        tmp_path,
    )
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        "rules:\n  - name: every-call\n"
        "    when: {type: conversation_initiation_metadata}\n    then: {alert: info}\n"
    )
    rules = CliProcess(
        "rules",
        {
            **readers,
            "CONVOSTREAM_UPSTREAM_URL": sim.url,
            "CONVOSTREAM_API_KEY": API_KEY,
            "CONVOSTREAM_RULES_FILE": str(rules_file),
            "CONVOSTREAM_RULES_GROUP_ID": f"{prefix}rules",
            "CONVOSTREAM_COMMANDS_ISSUER": "svc",
            "CONVOSTREAM_COMMANDS_KEY": KEYS["svc"],
            "CONVOSTREAM_GROUP_SESSION_TIMEOUT_MS": "2000",
        },
        tmp_path,
    )
    started = [collector, processor, worker, rules]
    serde: Serde | None = None
    collector.start()
    try:
        # the collector registers the catalogue; lookup-only components need it there first
        serde = await _registered(registry_url, prefix, collector)
        processor.start()
        worker.start()
        rules.start()
        sender = {**readers, "CONVOSTREAM_COMMANDS_ISSUER": "svc"}
        sender["CONVOSTREAM_COMMANDS_KEY"] = KEYS["svc"]
        targets = {
            kind: next(c for c in sim.conversations if c.live and c.script.kind == kind)
            for kind in ("chat", "voice")
        }
        for kind, args in SIX:
            cid = targets[kind].conversation_id
            code, out, err = await _cli(
                sender, "send-command", *args, "--conversation", cid, "--timeout", "90"
            )
            assert out, err[-3000:]
            result = json.loads(out.strip().splitlines()[-1])
            assert (code, result["status"]) == (0, "delivered"), (result, worker.failure_text())
        log = commands_log(tmp_path / "commands.jsonl")
        received = [json.loads(r["frame"])["command_type"] for r in log]
        assert sorted(received) == sorted(args[0] for _, args in SIX)

        await asyncio.sleep(3.0)  # some more events after the commands
        assert collector.stop() == 0, collector.failure_text()
        expected, raw = await expected_from_topics(kafka_broker.bootstrap, prefix, serde)
        assert raw, "the collector published nothing"
        assert all(0 < int.from_bytes(value[1:5], "big") < PINNED_ID_BASE for value in raw)
        actual = await wait_for_rows(db, expected, processor)
        assert actual == expected
        assert any(r["status"] == "ended" for r in actual.values())
        # outputs carry registry ids too, and a lookup-only reader decodes them
        for topic in (METRICS_CONVERSATIONS, COMMAND_RESULTS):
            written = await read_topic(kafka_broker.bootstrap, topic.full_name(prefix), serde)
            assert written
            assert all(0 < int.from_bytes(r.raw[1:5], "big") < PINNED_ID_BASE for r in written)

        # the rules engine reads registry ids and writes its alerts with registry ids
        deadline = time.monotonic() + 90
        while True:
            alerts = await read_topic(kafka_broker.bootstrap, ALERTS.full_name(prefix), serde)
            if {a.value["conversation_id"] for a in alerts} >= set(expected):
                break
            assert time.monotonic() < deadline, rules.failure_text()
            assert rules.alive(), rules.failure_text()
            await asyncio.sleep(1.0)
        assert all(0 < int.from_bytes(a.raw[1:5], "big") < PINNED_ID_BASE for a in alerts)
        assert len({a.value["alert_id"] for a in alerts}) == len(alerts)  # once per conversation

        # tail: a reader that only ever GETs ids
        code, out, err = await _cli(
            readers,
            "tail",
            METRICS_CONVERSATIONS.name,
            "--no-follow",
            "--max",
            "1000",
        )
        assert code == 0, err[-3000:]
        lines = [json.loads(line) for line in out.splitlines()]
        lines = [line for line in lines if not line.get("_tombstone")]  # read_topic's fences
        assert lines
        assert all(line["_schema"] == "ConversationMetrics" for line in lines), lines[:3]
        assert {line["conversation_id"] for line in lines} >= set(expected)
    finally:
        if serde is not None:
            await serde.close()
        for component in started:
            if component.proc is not None and component.alive():
                component.stop()
        await sim.stop()
