"""What the worker knows about past commands, rebuilt from Kafka on partition assignment.

Two logs feed it, both with the source command's partition and offset in record headers:
- ``convai.command-results``: a source offset with a result is *answered* (never answered again,
  even when the worker crashed before committing it);
- ``convai.command-intents``: written just before the socket write, so an intent without a
  result is *in doubt* (the frame may or may not have reached the upstream: never retried), and
  its (conversation_id, command_id) is *taken* (a later copy is a duplicate) until it expires.

Sans-I/O: the worker feeds it records and asks questions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

SOURCE_PARTITION = "source-partition"
SOURCE_OFFSET = "source-offset"
# A copy of a command arriving this long after its expiry is still reported as a duplicate
# rather than as expired, which hides nothing: both are never delivered.
EXPIRY_SLACK_MICROS = 60 * 1_000_000

State = Literal["new", "answered", "in_doubt"]
CommandKey = tuple[str, str]  # (conversation_id, command_id)


def source_headers(partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Headers naming the command a result or intent belongs to."""
    return [(SOURCE_PARTITION, str(partition).encode()), (SOURCE_OFFSET, str(offset).encode())]


def read_source(headers: Iterable[tuple[str, bytes]]) -> tuple[int, int] | None:
    """(partition, offset) from :func:`source_headers`, or None if absent or malformed."""
    found = dict(headers)
    try:
        return int(found[SOURCE_PARTITION]), int(found[SOURCE_OFFSET])
    except (KeyError, ValueError):
        return None


@dataclass
class _Partition:
    answered: set[int] = field(default_factory=set)
    intents: dict[int, CommandKey] = field(default_factory=dict)
    taken: dict[CommandKey, int] = field(default_factory=dict)  # -> expires_at (micros)


class Ledger:
    """Answered offsets, intents and taken command ids, per assigned partition."""

    def __init__(self) -> None:
        self._parts: dict[int, _Partition] = {}

    def _part(self, partition: int) -> _Partition:
        return self._parts.setdefault(partition, _Partition())

    def note_result(self, partition: int, offset: int) -> None:
        self._part(partition).answered.add(offset)

    def note_intent(self, partition: int, offset: int, key: CommandKey, expires_at: int) -> None:
        part = self._part(partition)
        part.intents[offset] = key
        part.taken[key] = expires_at

    def state(self, partition: int, offset: int) -> State:
        part = self._parts.get(partition)
        if part is None:
            return "new"
        if offset in part.answered:
            return "answered"
        if offset in part.intents:
            return "in_doubt"
        return "new"

    def taken(self, partition: int, key: CommandKey) -> bool:
        part = self._parts.get(partition)
        return part is not None and key in part.taken

    def committed(self, partition: int, offset: int) -> None:
        """Offsets below ``offset`` are never read again by the group: forget them."""
        part = self._parts.get(partition)
        if part is None:
            return
        part.answered = {o for o in part.answered if o >= offset}
        part.intents = {o: k for o, k in part.intents.items() if o >= offset}

    def prune(self, now_micros: int) -> None:
        """Forget command ids whose copies would now be rejected as expired anyway."""
        horizon = now_micros - EXPIRY_SLACK_MICROS
        for part in self._parts.values():
            part.taken = {k: e for k, e in part.taken.items() if e >= horizon}

    def forget(self, partition: int) -> None:
        """The partition was revoked: its next owner rebuilds this from Kafka."""
        self._parts.pop(partition, None)

    def size(self) -> int:
        return sum(len(p.taken) + len(p.answered) for p in self._parts.values())
