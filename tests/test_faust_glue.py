"""The Faust and aiokafka internals the processor and producers rely on fail loudly, by version."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import faust
import pytest

from convostream import kafka_compat
from processors import faust_glue


def test_installed_versions_pass_the_checks() -> None:
    faust_glue.check_versions()
    kafka_compat.install()
    kafka_compat.install()  # idempotent
    import aiokafka.producer.sender as sender

    assert sender.InitProducerIdRequest is kafka_compat.InitProducerIdRequest


def test_unknown_versions_are_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {"faust-streaming": "0.16.0", "aiokafka": "0.15.1"}
    monkeypatch.setattr(faust_glue, "version", fake.__getitem__)
    monkeypatch.setattr(kafka_compat, "version", fake.__getitem__)
    with pytest.raises(
        faust_glue.FaustGlueError, match=r"faust-streaming 0\.16\.0, aiokafka 0\.15\.1"
    ):
        faust_glue.check_versions()
    with pytest.raises(kafka_compat.KafkaCompatError, match=r"aiokafka 0\.15\.1"):
        kafka_compat.install()


def test_importing_the_patch_installs_nothing() -> None:
    code = (
        "import aiokafka.producer.sender as s; before = s.InitProducerIdRequest; "
        "import convostream.kafka_compat; assert s.InitProducerIdRequest is before"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_internal_is_named(tmp_path: Any) -> None:
    app = faust.App("glue-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
    with pytest.raises(faust_glue.FaustGlueError, match="_fetcher has no _fetch_max_wait_ms"):
        faust_glue.shorten_fetch_wait(app.consumer, 50)  # not started: no fetcher yet
    table = faust_glue.raw_table(app, "t", 2)
    assert (table.key_serializer, table.value_serializer) == ("raw", "raw")


def test_table_writes_follow_the_given_event() -> None:
    class Message:
        partition = 5

    class Event:
        message = Message()

    current: Any = faust.streams._current_event
    before = current.get(None)
    event = Event()
    with faust_glue.in_partition_of(event):
        assert current.get()() is event
    assert current.get(None) is before


async def _buffer_with_slow_sends(tmp_path: Any, seconds: float) -> tuple[Any, list[int]]:
    """A real Faust producer buffer whose sends to Kafka (the stand-in) take ``seconds``."""
    app = faust.App("glue-flush", broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
    buffer: Any = app.producer.buffer
    sent: list[int] = []

    async def send_to_kafka(message: int) -> None:
        await asyncio.sleep(seconds)
        sent.append(message)

    buffer._send_pending = send_to_kafka
    return buffer, sent


async def _sent_by_flush(buffer: Any, sent: list[int]) -> list[int]:
    """Three writes buffered, then one flush: what the stand-in had sent when it returned."""
    await buffer.start()
    try:
        for message in range(3):
            buffer.put(message)
        await buffer.flush()
        return list(sent)
    finally:
        buffer.pending = asyncio.Queue()  # stopping must not flush what is left
        await buffer.stop()


async def test_fausts_own_flush_returns_with_table_writes_unsent(tmp_path: Any) -> None:
    """The defect :func:`faust_glue.complete_flush` exists for: a send slower than 0.1 s."""
    buffer, sent = await _buffer_with_slow_sends(tmp_path, 0.3)
    assert len(await _sent_by_flush(buffer, sent)) < 3


async def test_complete_flush_returns_once_every_write_is_sent(tmp_path: Any) -> None:
    buffer, sent = await _buffer_with_slow_sends(tmp_path, 0.3)
    faust_glue.complete_flush(buffer)
    assert await _sent_by_flush(buffer, sent) == [0, 1, 2]


async def test_complete_flush_refuses_a_stopped_producer_with_writes_left(tmp_path: Any) -> None:
    buffer, _ = await _buffer_with_slow_sends(tmp_path, 0.3)
    faust_glue.complete_flush(buffer)
    buffer.put(0)  # never started: nothing will send it
    with pytest.raises(faust_glue.FaustGlueError, match="1 table writes unsent"):
        await buffer.flush()
