"""Sans-I/O parts of the collector: ownership ledger, hand-over records, back-off, echoes."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from ingest.backoff import Backoff, retry_after
from ingest.lifecycle import observe, record, released
from ingest.ownership import Ledger, partition_for
from ingest.replay import ReplayFilter, frame_digest


def test_partition_matches_the_default_partitioner() -> None:
    parts = list(range(12))
    for i in range(200):
        cid = f"conv_{i:04d}x"
        assert partition_for(cid, 12) == DefaultPartitioner()(cid.encode(), parts, parts)


def test_ledger_commits_at_the_oldest_live_conversation() -> None:
    ledger = Ledger(1)
    ledger.assign(0, end_offset=3)
    assert not ledger.ready(0, 2)
    ledger.apply(0, 0, observe(record("a", "discovered")))
    ledger.apply(0, 1, observe(record("b", "announced")))
    ledger.apply(0, 2, observe(record("a", "ended")))
    assert ledger.ready(0, 3)
    assert set(ledger.owned[0].live) == {"b"}
    assert ledger.commit_offset(0, position=3) == 1
    ledger.ended("b")
    assert ledger.commit_offset(0, position=3) == 3
    ledger.apply(0, 3, observe(record("b", "discovered")))  # a late announcement
    assert not ledger.is_live("b")


def test_discovery_claims_only_new_conversations_of_owned_partitions() -> None:
    ledger = Ledger(12)
    mine = next(f"c{i}" for i in range(100) if partition_for(f"c{i}", 12) == 3)
    other = next(f"c{i}" for i in range(100) if partition_for(f"c{i}", 12) != 3)
    ledger.assign(3, 0)
    assert ledger.discovered(mine, "agent")
    assert not ledger.discovered(mine, "agent")
    assert not ledger.discovered(other, "agent")


def test_hand_over_record_carries_the_history() -> None:
    history = [frame_digest(f"f{i}".encode()) for i in range(128)]
    seen = observe(released("c", "a", "collector-1", history))
    assert seen.live
    assert seen.history == history
    assert observe(record("c", "monitoring", detail={"released": True})).history is None


def test_seeded_filter_drops_the_replay_of_a_previous_owner() -> None:
    frames = [f'{{"n":{i}}}'.encode() for i in range(150)]
    old = ReplayFilter(window=128)
    old.connected(0.0)
    for i, f in enumerate(frames):
        old.observe(frame_digest(f), 1.0 + i)
    new = ReplayFilter(window=128)
    new.seed(old.history())
    new.connected(500.0)
    verdicts = [new.observe(frame_digest(f), 500.001)[0] for f in frames[-100:]]
    assert all(v.duplicate for v in verdicts)


def test_frame_replayed_while_in_flight_is_dropped_when_it_comes_live() -> None:
    replay = ReplayFilter(echo_window=1.0)
    replay.connected(0.0)
    first, _ = replay.observe(frame_digest(b"x"), 0.001)
    echo, _ = replay.observe(frame_digest(b"x"), 0.5)
    later, _ = replay.observe(frame_digest(b"x"), 5.0)
    assert not first.duplicate
    assert echo.duplicate
    assert not later.duplicate  # outside the window: a genuine repeat


def test_replay_tolerates_live_frames_that_overtook_each_other() -> None:
    replay = ReplayFilter()
    replay.connected(0.0)
    live = [b"a", b"c", b"b", b"d"]  # b and c swapped on the wire
    for i, f in enumerate(live):
        replay.observe(frame_digest(f), 1.0 + i)
    replay.connected(10.0)
    verdicts = [replay.observe(frame_digest(f), 10.001)[0] for f in (b"b", b"c", b"d")]
    assert all(v.duplicate for v in verdicts)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    backoff = Backoff(0.1, 2.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert max(delays[:2]) <= 0.2
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after("3", 0.0, 10.0) == 3.0
    assert retry_after("120", 0.0, 10.0) == 10.0
    assert retry_after("Thu, 01 Jan 1970 00:00:05 GMT", 0.0, 10.0) == 5.0
    assert retry_after("soon", 0.0, 10.0) is None
    assert retry_after(None, 0.0, 10.0) is None
