"""What the worker knows about past commands: rebuilt from Kafka, shared by every worker.

Two logs feed it, both with the source command's partition and offset in record headers:
- ``convai.command-results`` (same partition number as the command): a source offset with a
  result is *answered* (never answered again, even when the worker crashed before committing
  it). Read per assigned partition when the partition is assigned.
- ``convai.command-intents``, keyed by ``command_id``: written just before the socket write.
  Every worker reads **all** its partitions, continuously, so each one knows every command id
  any worker is about to deliver, whichever partition the command came from. An intent without
  a result is *in doubt* (the frame may or may not have reached the upstream: never retried).

Claims: the first intent for an (issuer, command_id) in log order owns it. Since intents are
keyed by command_id, all copies of one command (another partition, another conversation key,
a replay after a restart) put their intents in one partition, so every worker sees the same
first one. A worker writes its intent, reads the intents partition up to it, and writes the
frame only if no earlier intent claimed the id (compared by intent position, not by source, so
even two workers holding the same source record for a moment give one delivery).

Memory is bounded by time: a claim is kept until its command's ``expires_at`` plus a slack;
later copies are then ``expired`` anyway. An intent of a partition nobody committed past is
forgotten at the same horizon, after which its command (expired by then) is answered
``expired`` instead of ``failed``: either way it is never written again.

Sans-I/O: the worker feeds it records and asks questions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

SOURCE_PARTITION = "source-partition"
SOURCE_OFFSET = "source-offset"
# A copy of a command arriving this long after its expiry is still reported as a duplicate
# rather than as expired, which hides nothing: both are never delivered.
EXPIRY_SLACK_MICROS = 60 * 1_000_000

State = Literal["new", "answered", "in_doubt"]
CommandKey = tuple[str, str]  # (issued_by, command_id)
Source = tuple[int, int]  # (partition, offset) of the command record
Position = tuple[int, int]  # (partition, offset) of an intent record


def source_headers(partition: int, offset: int) -> list[tuple[str, bytes]]:
    """Headers naming the command a result or intent belongs to."""
    return [(SOURCE_PARTITION, str(partition).encode()), (SOURCE_OFFSET, str(offset).encode())]


def read_source(headers: Iterable[tuple[str, bytes]]) -> Source | None:
    """(partition, offset) from :func:`source_headers`, or None if absent or malformed."""
    found = dict(headers)
    try:
        return int(found[SOURCE_PARTITION]), int(found[SOURCE_OFFSET])
    except (KeyError, ValueError):
        return None


def claim_horizon_micros(max_ttl_micros: int, max_clock_skew_micros: int) -> int:
    """How far back intents can still matter: a deliverable command's ``expires_at`` is at most
    skew + lifetime after the worker's clock when it was decided, then the slack."""
    return max_ttl_micros + max_clock_skew_micros + EXPIRY_SLACK_MICROS


@dataclass(frozen=True, slots=True)
class _Intent:
    key: CommandKey
    expires_at: int


class CommandLedger:
    """Answered offsets of assigned partitions; intents and claims of all partitions."""

    def __init__(self) -> None:
        self._answered: dict[int, set[int]] = {}
        self._intents: dict[int, dict[int, _Intent]] = {}  # source partition -> offset
        self._claims: dict[CommandKey, tuple[Position, int]] = {}  # -> first intent, expiry

    def note_result(self, partition: int, offset: int) -> None:
        self._answered.setdefault(partition, set()).add(offset)

    def note_intent(self, at: Position, source: Source, key: CommandKey, expires_at: int) -> None:
        """The intent record at ``at``, in the log order of its intents partition."""
        self._intents.setdefault(source[0], {})[source[1]] = _Intent(key, expires_at)
        self._claims.setdefault(key, (at, expires_at))

    def state(self, partition: int, offset: int) -> State:
        if offset in self._answered.get(partition, ()):
            return "answered"
        if offset in self._intents.get(partition, ()):
            return "in_doubt"
        return "new"

    def claim(self, key: CommandKey) -> Position | None:
        """Where the first intent for ``key`` is, or None."""
        claim = self._claims.get(key)
        return None if claim is None else claim[0]

    def committed(self, partition: int, offset: int) -> None:
        """Offsets below ``offset`` are never read again by the group: forget them."""
        answered = self._answered.get(partition)
        if answered is not None:
            self._answered[partition] = {o for o in answered if o >= offset}
        intents = self._intents.get(partition)
        if intents is not None:
            self._intents[partition] = {o: i for o, i in intents.items() if o >= offset}

    def prune(self, now_micros: int) -> None:
        """Forget claims and intents whose commands would now be rejected as expired anyway."""
        horizon = now_micros - EXPIRY_SLACK_MICROS
        self._claims = {k: c for k, c in self._claims.items() if c[1] >= horizon}
        for partition, intents in self._intents.items():
            self._intents[partition] = {o: i for o, i in intents.items() if i.expires_at >= horizon}

    def forget(self, partition: int) -> None:
        """The partition was revoked: its next owner reads its results again."""
        self._answered.pop(partition, None)

    def size(self) -> int:
        intents = sum(map(len, self._intents.values()))
        return len(self._claims) + intents + sum(map(len, self._answered.values()))
