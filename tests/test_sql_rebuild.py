"""docs/sql.md's rebuild procedure: a processor under a new application id, pointed at a fresh
database, rebuilds the same rows from the topics after another group has consumed them."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bench.process import prefill
from convostream.broker import create_topics
from schemas.topics import MONITOR_EVENTS
from tests.processor_harness import ProcessorProcess, processor_env, sqlite_rows

pytestmark = pytest.mark.integration

EVENTS, CONVERSATIONS = 1_500, 15


async def processed(bootstrap: str, prefix: str, tmp_path: Path, app_id: str) -> dict[str, Any]:
    """Run one processor until its SQLite rows hold every event; its rows."""
    db = tmp_path / f"{app_id}.db"
    proc = ProcessorProcess(
        processor_env(
            bootstrap,
            prefix,
            f"sqlite:///{db}",
            tmp_path / app_id,
            CONVOSTREAM_PROCESSOR_APP_ID=app_id,
        ),
        tmp_path,
        name=app_id,
    )
    proc.start()
    try:
        deadline = time.monotonic() + 120
        rows: dict[str, Any] = {}
        while sum(r["events_total"] for r in rows.values()) < EVENTS:
            assert time.monotonic() < deadline, proc.failure_text()
            assert proc.alive(), proc.failure_text()
            await asyncio.sleep(1.0)
            rows = sqlite_rows(db)
    finally:
        assert proc.stop() == 0, proc.failure_text()
    return rows


async def test_a_new_app_id_rebuilds_the_same_rows(kafka_broker: Any, tmp_path: Path) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}."
    await create_topics(kafka_broker.bootstrap, prefix=prefix)
    await prefill(
        kafka_broker.bootstrap, MONITOR_EVENTS.full_name(prefix), EVENTS, CONVERSATIONS, 3
    )
    original = await processed(kafka_broker.bootstrap, prefix, tmp_path, "production")
    rebuilt = await processed(kafka_broker.bootstrap, prefix, tmp_path, "rebuild-1")
    assert len(original) == CONVERSATIONS
    assert rebuilt == original
