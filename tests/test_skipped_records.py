"""Undecodable records met while rebuilding state are warned about per topic, not per record."""

from __future__ import annotations

import pytest
import structlog

from convostream import topic_reader
from convostream.topic_reader import Skips, decoded
from schemas.serde import Serde


def test_first_skip_is_logged_then_counted_until_the_interval_passes() -> None:
    skips = Skips(interval=10.0)
    assert skips.skipped("a", now=100.0) == 1
    assert [skips.skipped("a", now=100.0 + i) for i in range(1, 5)] == [0, 0, 0, 0]
    assert skips.skipped("b", now=101.0) == 1  # topics are counted apart
    assert skips.skipped("a", now=110.0) == 5  # the four held back and this one
    assert skips.skipped("a", now=111.0) == 0


async def test_a_topic_of_foreign_records_logs_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topic_reader, "_skips", Skips(interval=3600.0))
    serde = Serde()
    with structlog.testing.capture_logs() as logs:
        found = [await decoded(serde, "t", b"\x02not the wire format") for _ in range(1000)]
    assert found == [None] * 1000
    warned = [e for e in logs if e["event"] == "undecodable records skipped"]
    assert len(warned) == 1
    assert warned[0]["topic"] == "t"
    assert warned[0]["records"] == 1
    assert "magic byte" in warned[0]["error"]
