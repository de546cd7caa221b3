"""The Faust and aiokafka internals the processor and producers rely on fail loudly, by version."""

from __future__ import annotations

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
