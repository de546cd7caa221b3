"""Sans-I/O parts of the collector: ownership ledger, hand-overs, checkpoints, back-off."""

from __future__ import annotations

import random
from typing import Any

from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    ProducerFenced,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner

from convostream.topic_reader import Span
from ingest.frames import DLQ_RAW_LIMIT
from ingest.lifecycle import checkpoint, observe, record, released
from ingest.ownership import Ledger, Unrecorded, partition_for
from ingest.publisher import offer_again
from ingest.recovery import CLOCK_SLACK_MS, Tails
from ingest.replay import DIGEST_SIZE, ReplayFilter, Verdict, event_key, frame_digest
from upstream.backoff import Backoff, retry_after


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


def test_a_partition_whose_end_offset_is_unknown_waits_for_it_and_stays_owned() -> None:
    """Ownership never hangs on a broker answer given inside the rebalance callback."""
    ledger = Ledger(1)
    ledger.assign(0)
    ledger.apply(0, 0, observe(record("a", "monitoring")))
    assert ledger.waiting() == [0]
    assert not ledger.ready(0, 10**6)  # not ready on a guess
    assert ledger.is_live("a")  # but its records are folded in meanwhile
    ledger.catch_up(0, 1)
    assert ledger.waiting() == []
    assert ledger.ready(0, 1)


def test_discovery_claims_only_new_conversations_of_owned_partitions() -> None:
    ledger = Ledger(12)
    mine = next(f"c{i}" for i in range(100) if partition_for(f"c{i}", 12) == 3)
    other = next(f"c{i}" for i in range(100) if partition_for(f"c{i}", 12) != 3)
    ledger.assign(3, 0)
    assert ledger.discovered(mine, "agent")
    assert not ledger.discovered(mine, "agent")
    assert not ledger.discovered(other, "agent")


def test_hand_over_record_carries_the_history() -> None:
    history = b"".join(frame_digest(f"f{i}".encode()) for i in range(128))
    seen = observe(released("c", "a", "collector-1", history, 77, [3, 90, 500]))
    assert seen.live
    assert seen.history == history
    assert seen.offset == 77
    assert seen.lasts == (3, 90)  # connection ends beyond the history are nonsense: dropped
    assert observe(record("c", "monitoring", detail={"released": True})).history is None


def test_checkpoints_extend_the_history_a_new_owner_starts_from() -> None:
    ledger = Ledger(1)
    ledger.assign(0, end_offset=0)
    digests = [frame_digest(f"f{i}".encode()) for i in range(30)]
    ledger.apply(0, 0, observe(record("c", "discovered")))
    ledger.apply(0, 1, observe(checkpoint("c", None, "k0", 0, b"".join(digests[:10]), 40, [4])))
    ledger.apply(
        0, 2, observe(checkpoint("c", None, "k0", 10, b"".join(digests[10:30]), 90, [12, 29]))
    )
    conv = ledger.owned[0].live["c"]
    assert conv.history == b"".join(digests)
    assert conv.lasts == (4, 12, 29)
    assert conv.unrecorded() == Unrecorded(offset=90)
    ledger.apply(0, 3, observe(released("c", None, "k0", b"".join(digests[:5]), 95, [4])))
    assert conv.history == b"".join(digests[:5])
    assert conv.lasts == (4,)
    assert conv.unrecorded() == Unrecorded(offset=95)


def test_what_a_new_owner_reads_back_follows_the_records_it_continues() -> None:
    """A checkpoint says which events offset its history reaches; before any, the first
    collector's ``monitoring`` record says when reading began; an older record without an
    offset, or a checkpoint that does not continue the history held, asks for no read-back."""
    ledger = Ledger(1)
    ledger.assign(0, end_offset=0)
    digests = b"".join(frame_digest(f"f{i}".encode()) for i in range(20))
    ledger.apply(0, 0, observe(record("c", "discovered", source="rest", collector_id="k0")))
    conv = ledger.owned[0].live["c"]
    assert conv.unrecorded() is None  # nobody read it yet: nothing was published
    ledger.apply(0, 1, observe(record("c", "monitoring", collector_id="k0", at=5_000_000)))
    ledger.apply(0, 2, observe(record("c", "monitoring", collector_id="k1", at=9_000_000)))
    assert conv.unrecorded() == Unrecorded(since_ms=5_000, letters_since_ms=5_000)
    ledger.apply(0, 3, observe(checkpoint("c", None, "k0", 4, digests[:64], 70)))
    assert conv.history is None
    assert conv.unrecorded() == Unrecorded(since_ms=5_000, letters_since_ms=5_000)
    ledger.apply(0, 4, observe(checkpoint("c", None, "k0", 0, digests, 70)))
    # dead letters carry no offset in the history records: read from when reading began
    assert conv.unrecorded() == Unrecorded(offset=70, letters_since_ms=5_000)
    legacy = record("c", "monitoring", collector_id="k0", detail={"released": True})
    legacy["detail"] = legacy["detail"].replace("}", ',"history":""}')
    ledger.apply(0, 5, observe(legacy))
    assert conv.history == b""
    assert conv.unrecorded() is None
    conv.forget_history()
    assert conv.history is None
    assert conv.unrecorded() is None


def _close(replay: ReplayFilter, frames: list[bytes], now: float) -> list[Verdict]:
    """Send ``frames`` as a replay burst closed by ``history_complete``."""
    replay.connected(now)
    replay.marker("connected", now)
    held = [v for f in frames for v in replay.observe(frame_digest(f), now)[0]]
    return held + replay.marker("history_complete", now)[0]


def test_seeded_filter_drops_the_replay_of_a_previous_owner() -> None:
    frames = [f'{{"n":{i}}}'.encode() for i in range(150)]
    old = ReplayFilter()
    _close(old, [], 0.0)
    for i, f in enumerate(frames):
        old.observe(frame_digest(f), 1.0 + i)
    new = ReplayFilter()
    new.seed(old.history())
    assert all(v.duplicate for v in _close(new, frames[-100:], 500.0))


def test_checkpoint_then_crash_recovers_what_the_replay_holds_with_the_same_keys() -> None:
    ping = b'{"type":"agent_response_complete"}'
    frames = [ping if i % 10 == 0 else f'{{"n":{i}}}'.encode() for i in range(150)]
    old = ReplayFilter()
    _close(old, [], 0.0)
    published = [old.observe(frame_digest(f), 1.0 + i)[0][0] for i, f in enumerate(frames)]
    new = ReplayFilter()
    new.seed(old.history()[: 120 * DIGEST_SIZE])  # its last checkpoint covered 120 frames
    verdicts = _close(new, frames[-100:], 500.0)
    assert [v.duplicate for v in verdicts] == [True] * 70 + [False] * 30
    assert [v.occurrence for v in verdicts[70:]] == [v.occurrence for v in published[120:]]
    assert new.gaps == 0


def test_crash_take_over_past_the_replay_window_reports_a_gap() -> None:
    frames = [f'{{"n":{i}}}'.encode() for i in range(250)]
    new = ReplayFilter()
    new.seed(b"".join(frame_digest(f) for f in frames[:100]))  # checkpoint: 100 frames
    _close(new, frames[-100:], 1.0)  # 50 frames in between are nowhere
    fresh = ReplayFilter()  # no checkpoint at all
    _close(fresh, frames[-100:], 1.0)
    assert (new.gaps, fresh.gaps) == (1, 1)


def test_replay_tolerates_live_frames_that_overtook_each_other() -> None:
    replay = ReplayFilter()
    _close(replay, [], 0.0)
    live = [b"a", b"c", b"b", b"d"]  # b and c swapped on the wire
    for i, f in enumerate(live):
        replay.observe(frame_digest(f), 1.0 + i)
    assert all(_close(replay, [b"b", b"c", b"d"], 10.0))


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


def test_the_publisher_offers_a_batch_again_only_after_errors_that_pass() -> None:
    assert offer_again(KafkaTimeoutError())  # retriable is False on it in aiokafka
    assert offer_again(UnknownTopicOrPartitionError())  # metadata not yet known
    assert offer_again(KafkaConnectionError())
    assert not offer_again(ProducerFenced())
    assert not offer_again(AuthenticationFailedError())


def test_read_back_spans_each_partition_from_its_lowest_offset_or_earliest_time() -> None:
    by_partition: dict[int, list[str]] = {}
    for i in range(200):
        by_partition.setdefault(partition_for(f"c{i}", 4), []).append(f"c{i}")
    a, b = by_partition[0][:2]
    c, d = by_partition[1][:2]
    e = by_partition[2][0]
    wanted = {
        a: Unrecorded(offset=50),
        b: Unrecorded(offset=0),
        c: Unrecorded(since_ms=90_000),
        d: Unrecorded(since_ms=60_000),
        e: Unrecorded(offset=7),
    }
    span = Tails(wanted, 4).span()
    assert span.starts == {0: 0, 2: 7}
    assert span.since_ms == {1: 60_000 - CLOCK_SLACK_MS}


def test_read_back_keeps_the_wanted_records_in_offset_order() -> None:
    """And says which records ended a connection of the dead owner (the last one included):
    such a frame may have overtaken frames its socket lost, which the next replay brings."""
    wanted = {"a": Unrecorded(offset=10), "b": Unrecorded(since_ms=1), "c": Unrecorded(offset=0)}
    tails = Tails(wanted, 1)
    span = tails.span()
    frames = [
        ("a", 9, "old", "k1"),
        ("b", 9, "b0", "k1"),
        ("x", 10, "other", "k1"),
        ("a", 11, "a1", "k1"),
        ("a", 12, "a0", "k2"),
        ("a", 13, "a2", "k2"),
    ]
    for n, (cid, offset, raw, connection) in enumerate(frames):
        hit = tails.needs(cid.encode(), offset)
        if hit is not None:
            assert hit == cid
            tails.add(hit, raw, connection, n)
    assert tails.needs(None, 20) is None
    span.reached[0] = 14
    back = tails.results(span)
    assert bytes(back["a"].digests) == b"".join(frame_digest(t) for t in (b"a1", b"a0", b"a2"))
    assert bytes(back["b"].digests) == frame_digest(b"b0")
    assert back["a"].events_to == back["b"].events_to == 14
    assert (back["a"].lasts, back["b"].lasts, back["c"].lasts) == ([0, 2], [0], [])


def _letter(
    conversation: str, raw: bytes, at: int, connection: str, occurrence: int = 0
) -> dict[str, Any]:
    """A DeadLetter record as a collector writes it."""
    return {
        "conversation_id": conversation,
        "reason": "invalid_json",
        "detail": "cut short",
        "raw": raw,
        "received_at": at,
        "collector_id": "k0",
        "connection_id": connection,
        "connection_seq": 0,
        "event_key": event_key(conversation, frame_digest(raw), occurrence),
    }


def test_dead_letters_beyond_the_history_join_the_events_in_arrival_order() -> None:
    """Letters already in the history (by key), copies, keyless and cut-short ones stay out;
    the rest take their place among the events by ``received_at``."""
    history = frame_digest(b"e0") + frame_digest(b"[bad") + frame_digest(b"e1")
    wanted = {"a": Unrecorded(offset=5, letters_since_ms=70_000), "b": Unrecorded(offset=5)}
    tails = Tails(wanted, 1, 3, {"a": history})
    assert tails.letters_span() == Span({}, {partition_for("a", 3): 70_000 - CLOCK_SLACK_MS})
    assert tails.needs_letter(b"b") is None  # nothing says from when: no letter is read for it
    tails.add("a", "e2", "k1", 10)
    tails.add("a", "e3", "k2", 40)
    for letter in (
        _letter("a", b"[bad", 1, "k0"),  # the history's copy: recorded already
        _letter("a", b"[bad", 20, "k1", occurrence=1),  # a second copy, after the checkpoint
        _letter("a", b"[bad", 20, "k1", occurrence=1),  # ... published twice (Tansu's tail)
        {**_letter("a", b"{x", 30, "k1"), "event_key": None},  # an older collector's
        {**_letter("a", b"x" * DLQ_RAW_LIMIT, 35, "k1"), "reason": "oversize"},
        _letter("a", b"nope", 50, "k2"),
    ):
        assert tails.needs_letter(b"a") == "a"
        tails.add_letter("a", letter)
    span = tails.span()
    span.reached[0] = 9
    back = tails.results(span)["a"]
    order = [b"e2", b"[bad", b"e3", b"nope"]
    assert bytes(back.digests) == b"".join(frame_digest(t) for t in order)
    assert back.lasts == [1, 3]  # k1 ended at the second letter, k2 with the last record
