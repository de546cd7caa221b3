"""Reading back what earlier owners of conversations published, when a collector takes them over.

A hand-over or checkpoint record holds the digests of the frames published up to some events
offset; a collector that died published more after its last checkpoint (up to two checkpoint
intervals' worth). Its successor reads the conversations' records from that offset (or, before
any checkpoint, from when the first collector started reading) up to the end, and appends their
digests to the history in offset order, which is publish order: it then holds everything that
was published, so nothing is published twice and every later copy of a repeated text gets the
occurrence (and event key) the dead owner would have given it, however far the upstream's replay
window has moved on. Frames sent to the DLQ are not read back: a malformed frame published after
the last checkpoint may reach the DLQ once more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from convostream.kafka_security import KafkaSecurity
from convostream.logs import get_logger
from convostream.topic_reader import Span, decoded, read_range
from ingest.ownership import Unrecorded, partition_for
from ingest.replay import DIGEST_SIZE, frame_digest
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


class Tails:
    """Folds events records, in offset order per partition, into :class:`ReadBack` s (sans-I/O)."""

    def __init__(self, wanted: Mapping[str, Unrecorded], partitions: int) -> None:
        self.partitions = partitions
        self.wanted = {cid.encode("utf-8"): (cid, w) for cid, w in wanted.items()}
        self.found: dict[str, bytearray] = {cid: bytearray() for cid in wanted}
        self.lasts: dict[str, list[int]] = {cid: [] for cid in wanted}
        self._connection: dict[str, str] = {}

    def span(self) -> Span:
        """Where to read: per partition, the lowest offset and the earliest time wanted."""
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

    def needs(self, key: bytes | None, offset: int) -> str | None:
        """The conversation a record at ``offset`` with ``key`` adds to, if any."""
        hit = self.wanted.get(key) if key is not None else None
        if hit is None:
            return None
        cid, want = hit
        return cid if want.offset is None or offset >= want.offset else None

    def add(self, conversation_id: str, raw: str, connection_id: str) -> None:
        found = self.found[conversation_id]
        if self._connection.setdefault(conversation_id, connection_id) != connection_id:
            self._connection[conversation_id] = connection_id
            self.lasts[conversation_id].append(len(found) // DIGEST_SIZE - 1)
        found += frame_digest(raw.encode("utf-8", "surrogatepass"))

    def results(self, span: Span) -> dict[str, ReadBack]:
        out = {}
        for cid, _ in self.wanted.values():
            found, lasts = self.found[cid], self.lasts[cid]
            if found:  # the dead owner's last record may have ended its last connection too
                lasts.append(len(found) // DIGEST_SIZE - 1)
            reached = span.reached[partition_for(cid, self.partitions)]
            out[cid] = ReadBack(found, reached, lasts)
        return out


async def read_back(
    bootstrap: str,
    security: KafkaSecurity,
    events_topic: str,
    partitions: int,
    serde: Serde,
    wanted: Mapping[str, Unrecorded],
) -> dict[str, ReadBack]:
    """The records of the ``wanted`` conversations beyond their histories, read from the events
    topic up to its current end. Raises the client's error when the broker cannot be read."""
    tails = Tails(wanted, partitions)
    span = tails.span()
    read = 0
    async for message in read_range(bootstrap, events_topic, span, security, READ_BACK_TIMEOUT):
        cid = tails.needs(message.key, message.offset)
        if cid is None or message.value is None:
            continue
        record = await decoded(serde, events_topic, message.value)
        if record is not None and record.schema_name == "MonitorEvent":
            tails.add(cid, record.record["raw"], record.record["connection_id"])
            read += 1
    results = tails.results(span)
    log.info("published records read back", conversations=len(wanted), records=read)
    return results
