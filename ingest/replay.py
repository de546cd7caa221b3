"""Replay de-duplication, stable event keys and gap detection for one conversation (sans-I/O).

The upstream replays about the last 100 frames on every (re)connect, with no marker between
replay and live frames, and frames carry no unique id. So:

* A frame's identity is its exact text plus its *occurrence*: how many identical texts this
  conversation already had within the retained window. Two identical frames are two events;
  ``event_key`` = hash(conversation, text, occurrence) is the same whichever collector computes
  it, as long as both saw the earlier copies (always true for copies within one replay window).
* After a reconnect, frames of the *replay burst* (the first ``replay_size`` frames, sent
  back-to-back) that match an entry of the history still owed by the replay window are
  duplicates. Only burst frames may consume that budget, so an identical frame that arrives
  live is never mistaken for a replay.
* The replay window is aligned on the first replayed frame when the history holds it; otherwise
  the last ``replay_size`` frames are assumed to be the overlap.
* If a burst overlaps nothing we had seen, frames between our last one and the oldest replayed
  one may be lost: that is a gap, reported once per connection, never hidden.
* A frame generated just before a reconnect but still in flight (the upstream sends
  asynchronously, out of order) can come twice on the new connection: in the replay and live.
  With ``echo_window`` > 0, a later frame identical to a frame the burst brought *new* is that
  frame's echo if it arrives within ``echo_window`` seconds, once per such frame (the price: a
  genuine repeat of such a frame inside that window is taken for an echo).
* The history can be exported and seeded (:meth:`ReplayFilter.history`,
  :meth:`ReplayFilter.seed`), so a collector taking a conversation over from another keeps
  de-duplicating the replay against what the previous owner published.

Time is passed in (monotonic seconds), so every rule is testable without a clock.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from dataclasses import dataclass

REPLAY_SIZE = 100
DIGEST_SIZE = 16
ALIGN_SLACK = 16  # how far out of order live frames may arrive, in frames


def frame_digest(raw: bytes) -> bytes:
    """A 16-byte digest of the frame text: what the history keeps instead of the text."""
    return hashlib.blake2b(raw, digest_size=DIGEST_SIZE).digest()


def event_key(conversation_id: str, digest: bytes, occurrence: int) -> str:
    """The stable de-duplication key of one event."""
    h = hashlib.blake2b(digest_size=16)
    h.update(conversation_id.encode())
    h.update(b"\x00")
    h.update(digest)
    h.update(occurrence.to_bytes(4, "big"))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one frame."""

    duplicate: bool
    replay: bool
    occurrence: int
    connection_seq: int  # position on the connection, from 0


@dataclass(frozen=True, slots=True)
class Gap:
    """A reconnect whose replay did not reach back to the frames we already had."""

    replayed: int
    history: int


class ReplayFilter:
    """Per-conversation state of the collector that owns it."""

    __slots__ = (
        "_budget",
        "_burst_gap",
        "_counts",
        "_echo",
        "_echo_until",
        "_echo_window",
        "_history",
        "_in_burst",
        "_last_at",
        "_matched",
        "_replay_size",
        "_replayed",
        "_seq",
        "_window",
        "gaps",
    )

    def __init__(
        self,
        window: int = 256,
        replay_size: int = REPLAY_SIZE,
        burst_gap: float = 0.25,
        echo_window: float = 0.0,
    ) -> None:
        if window < replay_size + ALIGN_SLACK:
            raise ValueError("window must hold at least one replay and the alignment slack")
        self._window = window
        self._echo_window = echo_window
        self._echo: Counter[bytes] | None = None
        self._echo_until = 0.0
        self._replay_size = replay_size
        self._burst_gap = burst_gap
        self._history: deque[bytes] = deque()
        self._counts: Counter[bytes] = Counter()
        self._budget: Counter[bytes] | None = None
        self._in_burst = False
        self._last_at = 0.0
        self._seq = 0
        self._replayed = 0
        self._matched = 0
        self.gaps = 0

    def connected(self, now: float) -> Gap | None:
        """A new connection: its burst starts with the first frame, however long that takes."""
        gap = self._close_burst()
        self._echo = None
        self._in_burst = True
        self._budget = None
        self._last_at = now
        self._seq = 0
        self._replayed = 0
        self._matched = 0
        return gap

    def disconnected(self) -> Gap | None:
        return self._close_burst()

    def history(self) -> list[bytes]:
        """Digests of the retained frames, oldest first (what :meth:`seed` takes)."""
        return list(self._history)

    def seed(self, digests: list[bytes]) -> None:
        """Start from another collector's history, before the first connection."""
        for digest in digests[-self._window :]:
            self._remember(digest)

    def tick(self, now: float) -> Gap | None:
        """Close the burst after a quiet spell, so a gap is reported without another frame."""
        if self._in_burst and self._replayed and now - self._last_at > self._burst_gap:
            return self._close_burst()
        return None

    def observe(self, digest: bytes, now: float) -> tuple[Verdict, Gap | None]:
        """Classify one frame (by its digest) that arrived at ``now``."""
        gap = None
        if (
            self._in_burst
            and self._replayed
            and (now - self._last_at > self._burst_gap or self._replayed >= self._replay_size)
        ):
            gap = self._close_burst()
        self._last_at = now
        seq = self._seq
        self._seq += 1
        replay = self._in_burst
        echo = self._echo
        if echo is not None:
            if now > self._echo_until:
                self._echo = None
            elif echo[digest] > 0:
                echo[digest] -= 1
                return Verdict(True, False, -1, seq), gap
        if replay:
            self._replayed += 1
            if self._budget is None:
                self._budget = self._align(digest)
            if self._budget[digest] > 0:
                self._budget[digest] -= 1
                self._matched += 1
                return Verdict(True, True, -1, seq), gap
        occurrence = self._counts[digest]
        self._remember(digest)
        if replay and self._echo_window > 0:
            if self._echo is None:
                self._echo = Counter()
            self._echo[digest] += 1
            self._echo_until = now + self._echo_window
        return Verdict(False, replay, occurrence, seq), gap

    def _align(self, first: bytes) -> Counter[bytes]:
        """The history entries the replay window still owes us.

        The replay comes in generation order, the history in arrival order: frames that
        overtook each other live sit up to ``ALIGN_SLACK`` places apart, so the window opens
        that much before the first replayed frame.
        """
        size = len(self._history)
        start = max(0, size - self._replay_size)
        for pos in range(start, size):  # earliest copy inside the last replay_size frames
            if self._history[pos] == first:
                start = pos
                break
        start = max(0, start - ALIGN_SLACK)
        return Counter(self._history[i] for i in range(start, size))

    def _remember(self, digest: bytes) -> None:
        self._history.append(digest)
        self._counts[digest] += 1
        if len(self._history) > self._window:
            old = self._history.popleft()
            left = self._counts[old] - 1
            if left:
                self._counts[old] = left
            else:
                del self._counts[old]

    def _close_burst(self) -> Gap | None:
        if not self._in_burst:
            return None
        self._in_burst = False
        self._budget = None
        had = len(self._history) - (self._replayed - self._matched)
        if self._replayed and had > 0 and self._matched == 0:
            self.gaps += 1
            return Gap(replayed=self._replayed, history=had)
        return None
