"""Reading back what earlier owners of conversations published, when a collector takes them over.

A hand-over or checkpoint record holds the digests of the frames published up to some events
offset; a collector that died published more after its last checkpoint (up to two checkpoint
intervals' worth). Its successor reads the conversations' records from that offset (or, before
any checkpoint, from when the first collector started reading) up to the end, and appends their
digests to the history in publish order: it then holds everything that was published, so nothing
is published twice and every later copy of a repeated text gets the occurrence (and event key)
the dead owner would have given it, however far the upstream's replay window has moved on.

Unreadable frames went to the DLQ, whose offsets the history records do not carry: the DLQ is
read from when a collector began reading the conversation, and a letter is kept only if its
``event_key`` is not that of an occurrence the history already holds (nor of a letter kept
already). Kept letters join the events in ``received_at`` order, which is publish order for one
owner. A letter without a key (an older collector's) or of an oversize frame (kept only in part,
so its digest is unknown) is not read back: that frame may reach the DLQ once more, under the
same key.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from aiokafka.errors import KafkaError

from convostream.kafka_security import KafkaSecurity
from convostream.logs import get_logger
from convostream.topic_reader import Span, decoded, read_range
from ingest.frames import DLQ_RAW_LIMIT
from ingest.ownership import Unrecorded, partition_for
from ingest.publisher import offer_again
from ingest.replay import DIGEST_SIZE, event_key, frame_digest
from schemas.serde import Serde

log = get_logger("ingest.recovery")

# Seconds a read-back may take before the monitors start with what was read (a slow broker).
# Tansu 0.6 (the embedded broker) puts a partition's end at its last batch's base offset + 1
# until another batch arrives, so there the last records a dead collector published in one
# batch are not read back: they are published again, with the same event keys.
READ_BACK_TIMEOUT = 10.0
# A ``monitoring`` record's ``at`` and the records after it come from one collector's clock, but
# a topic with message.timestamp.type=LogAppendTime stamps them with the broker's.
CLOCK_SLACK_MS = 10_000


@dataclass(slots=True)
class ReadBack:
    """One conversation's records beyond its history: their digests, and how far they reach."""

    digests: bytearray
    events_to: int  # every record of the conversation below this offset is accounted for
    lasts: list[int]  # records (counted from the first read back) that ended their connection


@dataclass(frozen=True, slots=True)
class _Published:
    """One record read back: when its frame arrived, its digest, and its connection."""

    received_at: int
    digest: bytes
    connection_id: str


def recorded_keys(conversation_id: str, digest: bytes, history: bytes | None) -> set[str]:
    """The event keys of the copies of ``digest`` that ``history`` holds."""
    if not history:
        return set()
    view = memoryview(history)
    copies = sum(
        1 for at in range(0, len(history), DIGEST_SIZE) if view[at : at + DIGEST_SIZE] == digest
    )
    return {event_key(conversation_id, digest, n) for n in range(copies)}


class Tails:
    """Folds events records, in offset order per partition, and dead letters into
    :class:`ReadBack` s (sans-I/O). ``histories``: what each wanted conversation's history
    already holds (a letter of an occurrence it holds is not read back)."""

    def __init__(
        self,
        wanted: Mapping[str, Unrecorded],
        partitions: int,
        dlq_partitions: int = 1,
        histories: Mapping[str, bytes | None] | None = None,
    ) -> None:
        self.partitions = partitions
        self.dlq_partitions = dlq_partitions
        self.histories = histories or {}
        self.wanted = {cid.encode("utf-8"): (cid, w) for cid, w in wanted.items()}
        self._events: dict[str, list[_Published]] = {cid: [] for cid in wanted}
        self._letters: dict[str, list[_Published]] = {cid: [] for cid in wanted}
        self._letter_keys: dict[str, set[str]] = {cid: set() for cid in wanted}

    def span(self) -> Span:
        """Where to read events: per partition, the lowest offset and the earliest time wanted."""
        starts: dict[int, int | None] = {}
        since: dict[int, int] = {}
        for cid, want in self.wanted.values():
            p = partition_for(cid, self.partitions)
            if want.offset is not None:
                held = starts.get(p)
                starts[p] = want.offset if held is None else min(held, want.offset)
            elif want.since_ms is not None:
                ms = want.since_ms - CLOCK_SLACK_MS
                since[p] = min(since.get(p, ms), ms)
        return Span(starts, since)

    def letters_span(self) -> Span:
        """Where to read the DLQ: per partition, the earliest time a collector began reading."""
        since: dict[int, int] = {}
        for cid, want in self.wanted.values():
            if want.letters_since_ms is not None:
                p = partition_for(cid, self.dlq_partitions)
                ms = want.letters_since_ms - CLOCK_SLACK_MS
                since[p] = min(since.get(p, ms), ms)
        return Span({}, since)

    def needs(self, key: bytes | None, offset: int) -> str | None:
        """The conversation an events record at ``offset`` with ``key`` adds to, if any."""
        hit = self.wanted.get(key) if key is not None else None
        if hit is None:
            return None
        cid, want = hit
        return cid if want.offset is None or offset >= want.offset else None

    def needs_letter(self, key: bytes | None) -> str | None:
        """The conversation a dead letter with ``key`` may add to, if any."""
        hit = self.wanted.get(key) if key is not None else None
        return hit[0] if hit is not None and hit[1].letters_since_ms is not None else None

    def add(self, conversation_id: str, raw: str, connection_id: str, received_at: int) -> None:
        digest = frame_digest(raw.encode("utf-8", "surrogatepass"))
        self._events[conversation_id].append(_Published(received_at, digest, connection_id))

    def add_letter(self, conversation_id: str, letter: Mapping[str, Any]) -> None:
        """A DeadLetter record: kept if it is of a frame beyond the history (module docstring)."""
        key, raw = letter.get("event_key"), letter["raw"]
        if key is None or (letter["reason"] == "oversize" and len(raw) >= DLQ_RAW_LIMIT):
            return
        kept = self._letter_keys[conversation_id]
        if key in kept:
            return  # a copy (published twice before)
        digest = frame_digest(raw)
        if key in recorded_keys(conversation_id, digest, self.histories.get(conversation_id)):
            return
        kept.add(key)
        connection = letter.get("connection_id") or ""
        self._letters[conversation_id].append(_Published(letter["received_at"], digest, connection))

    def results(self, span: Span) -> dict[str, ReadBack]:
        out = {}
        for cid, _ in self.wanted.values():
            found = bytearray()
            lasts: list[int] = []
            connection: str | None = None
            merged = heapq.merge(
                self._events[cid], self._letters[cid], key=attrgetter("received_at")
            )
            for n, published in enumerate(merged):
                if connection is not None and published.connection_id != connection:
                    lasts.append(n - 1)
                connection = published.connection_id
                found += published.digest
            if found:  # the dead owner's last record may have ended its last connection too
                lasts.append(len(found) // DIGEST_SIZE - 1)
            reached = span.reached[partition_for(cid, self.partitions)]
            out[cid] = ReadBack(found, reached, lasts)
        return out


async def read_back(
    bootstrap: str,
    security: KafkaSecurity,
    events: tuple[str, int],
    dlq: tuple[str, int],
    serde: Serde,
    wanted: Mapping[str, Unrecorded],
    histories: Mapping[str, bytes | None],
) -> dict[str, ReadBack]:
    """The records of the ``wanted`` conversations beyond their ``histories``, read from the
    events and DLQ topics (each a name and partition count) up to their current ends. Raises the
    client's error when the events topic cannot be read; a DLQ refused for good is logged and
    left out (its letters may then be published again)."""
    tails = Tails(wanted, events[1], dlq[1], histories)
    span = tails.span()
    read = 0
    async for message in read_range(bootstrap, events[0], span, security, READ_BACK_TIMEOUT):
        cid = tails.needs(message.key, message.offset)
        if cid is None or message.value is None:
            continue
        record = await decoded(serde, events[0], message.value)
        if record is not None and record.schema_name == "MonitorEvent":
            value = record.record
            tails.add(cid, value["raw"], value["connection_id"], value["received_at"])
            read += 1
    letters = 0
    try:
        async for message in read_range(
            bootstrap, dlq[0], tails.letters_span(), security, READ_BACK_TIMEOUT
        ):
            cid = tails.needs_letter(message.key)
            if cid is None or message.value is None:
                continue
            record = await decoded(serde, dlq[0], message.value)
            if record is not None and record.schema_name == "DeadLetter":
                tails.add_letter(cid, record.record)
                letters += 1
    except KafkaError as exc:
        if offer_again(exc):
            raise
        log.error(
            "dead letters cannot be read back; unreadable frames published after the last "
            "checkpoint may reach the DLQ again",
            topic=dlq[0],
            error=type(exc).__name__,
        )
    results = tails.results(span)
    log.info(
        "published records read back", conversations=len(wanted), records=read, letters=letters
    )
    return results
