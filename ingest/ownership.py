"""Which conversations this collector owns, from the partitions the consumer group gave it.

A conversation belongs to the partition its id hashes to on ``convai.conversations`` (murmur2,
like the Kafka default partitioner and aiokafka's), so the group's assignment decides who
monitors it: no coordinator of our own. Per owned partition the :class:`Ledger` folds the
lifecycle records read so far into the set of live conversations, and says which offset to
commit: the first record of the oldest still-live conversation, so that a new owner re-reads
exactly the announcements (and hand-over records) it needs. Sans-I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

from aiokafka.partitioner import murmur2

from ingest.lifecycle import Observed
from ingest.replay import DIGEST_SIZE

ENDED_MEMORY = 4096  # ended conversation ids remembered per partition (announcements can lag)


@lru_cache(maxsize=65536)
def partition_for(conversation_id: str, partitions: int) -> int:
    """The partition the Kafka default partitioner puts this key in."""
    return (int(murmur2(conversation_id.encode("utf-8"))) & 0x7FFFFFFF) % partitions


@dataclass(slots=True)
class Conversation:
    """A live conversation of an owned partition."""

    agent_id: str | None
    first_offset: int | None  # offset of its first record read; None: known from REST only
    history: bytes | None = None  # hand-over or checkpoints of the previous owner, if any
    events_from: int | None = None  # events offset from which ``history`` may lack records
    reading_since: int | None = None  # µs: a collector read it, before any history was written
    lasts: tuple[int, ...] = ()  # frames of ``history`` that ended a connection

    def forget_history(self) -> None:
        """A monitor runs: what a new owner would start from is not needed here."""
        self.history = self.events_from = self.reading_since = None
        self.lasts = ()

    def unrecorded(self) -> Unrecorded | None:
        """Where the records the previous owners published beyond ``history`` begin, if any."""
        began = None if self.reading_since is None else self.reading_since // 1000
        if self.events_from is not None:
            return Unrecorded(offset=self.events_from, letters_since_ms=began)
        if self.history is None and began is not None:
            return Unrecorded(since_ms=began, letters_since_ms=began)
        return None


@dataclass(frozen=True, slots=True)
class Unrecorded:
    """Where to read back a conversation's published records: events from an offset or a time;
    dead letters from the time a collector began reading it (they carry no offset in the
    history records, and those already in the history are told apart by their keys)."""

    offset: int | None = None
    since_ms: int | None = None
    letters_since_ms: int | None = None


@dataclass(slots=True)
class PartitionState:
    live: dict[str, Conversation] = field(default_factory=dict)
    ended: OrderedDict[str, None] = field(default_factory=OrderedDict)
    catch_up_to: int | None = None  # its end offset once known (asked after assignment)
    ready: bool = False  # read up to catch_up_to: its hand-over records are known

    def mark_ended(self, conversation_id: str) -> None:
        self.live.pop(conversation_id, None)
        self.ended[conversation_id] = None
        self.ended.move_to_end(conversation_id)
        while len(self.ended) > ENDED_MEMORY:
            self.ended.popitem(last=False)


def _extended(history: bytes | None, more: bytes, start: int) -> bytes | None:
    """A history with ``more`` put at frame ``start`` (a checkpoint continues a history)."""
    if start == 0:
        return more
    if history is None or len(history) < start * DIGEST_SIZE:
        return history  # the part before is unknown here: keep what we have
    return history[: start * DIGEST_SIZE] + more


class Ledger:
    """Live conversations per owned partition, built from lifecycle records and discovery."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.owned: dict[int, PartitionState] = {}

    def partition(self, conversation_id: str) -> int:
        return partition_for(conversation_id, self.partitions)

    def assign(self, partition: int, end_offset: int | None = None) -> None:
        """A newly owned partition: its monitors start once it is read up to its end offset.

        The end offset may be learnt later (:meth:`catch_up`): ownership never depends on a
        broker call that can fail inside a rebalance callback.
        """
        self.owned[partition] = PartitionState(catch_up_to=end_offset)

    def waiting(self) -> list[int]:
        """Owned partitions whose end offset is still to be asked."""
        return [p for p, s in self.owned.items() if s.catch_up_to is None]

    def catch_up(self, partition: int, end_offset: int) -> None:
        state = self.owned.get(partition)
        if state is not None and state.catch_up_to is None:
            state.catch_up_to = end_offset

    def revoke(self, partition: int) -> None:
        self.owned.pop(partition, None)

    def ready(self, partition: int, position: int) -> bool:
        """Whether the partition was read far enough to know its hand-over records."""
        state = self.owned.get(partition)
        if state is None:
            return False
        if not state.ready and state.catch_up_to is not None and position >= state.catch_up_to:
            state.ready = True
        return state.ready

    def apply(self, partition: int, offset: int, seen: Observed) -> None:
        """Fold one record read from an owned partition."""
        state = self.owned.get(partition)
        if state is None:
            return
        cid = seen.conversation_id
        if seen.ended:
            state.mark_ended(cid)
            return
        if not seen.live or cid in state.ended:
            return
        conv = state.live.get(cid)
        if conv is None:
            conv = state.live[cid] = Conversation(seen.agent_id, offset)
        elif conv.first_offset is None:
            conv.first_offset = offset
        conv.agent_id = conv.agent_id or seen.agent_id
        if seen.history is not None:
            history = _extended(conv.history, seen.history, seen.history_from)
            if history is not conv.history:  # it continued what we hold
                conv.history = history
                conv.events_from = seen.offset  # None (an older record): nothing to read back
                start = seen.history_from
                conv.lasts = (*(p for p in conv.lasts if p < start), *seen.lasts)
        elif seen.reading_since is not None and conv.reading_since is None:
            conv.reading_since = seen.reading_since

    def discovered(self, conversation_id: str, agent_id: str | None) -> bool:
        """A conversation REST says is in progress: True when it is ours and new to us."""
        state = self.owned.get(self.partition(conversation_id))
        if state is None or conversation_id in state.live or conversation_id in state.ended:
            return False
        state.live[conversation_id] = Conversation(agent_id, None)
        return True

    def ended(self, conversation_id: str) -> None:
        state = self.owned.get(self.partition(conversation_id))
        if state is not None:
            state.mark_ended(conversation_id)

    def is_live(self, conversation_id: str) -> bool:
        state = self.owned.get(self.partition(conversation_id))
        return state is not None and conversation_id in state.live

    def commit_offset(self, partition: int, position: int) -> int:
        """Where a new owner should start reading: the oldest live conversation's first record."""
        state = self.owned.get(partition)
        if state is None:
            return position
        firsts = [c.first_offset for c in state.live.values() if c.first_offset is not None]
        return min([position, *firsts])
