"""Replay alignment, stable event keys and gap detection for one conversation (sans-I/O).

The upstream replays about the last ``replay_size`` frames on every (re)connect, in generation
order, then streams live frames (which may arrive out of order). Frames carry no unique id and
some legitimately repeat (chat deltas, status and metadata frames), so:

* **Identity** is (conversation, exact text, occurrence), where occurrence counts the earlier
  copies of that text in the *whole* conversation. ``event_key`` = hash of the three, so the
  n-th copy of a text gets the same key from every collector, however far apart the copies
  are. Identical copies are interchangeable, so the labels 0..n-1 may be handed out in any
  arrival order: what matters is that each copy gets one label and no label two copies.
  The counts live in the history (every digest seen, in arrival order), which a hand-over or
  a periodic checkpoint passes to the next owner (:meth:`ReplayFilter.history`,
  :meth:`ReplayFilter.seed`).
* **Replay bursts are buffered and aligned as a whole.** The burst ends at the upstream's
  ``history_complete`` marker when the connection announced markers (``connected``), else
  after ``replay_size`` frames or a quiet spell of ``burst_gap`` seconds (seen by
  :meth:`ReplayFilter.tick`, called by a reader that found the socket empty: time its event
  loop spent elsewhere is no quiet spell). A burst shorter than ``replay_size`` that ended on
  the marker is the whole conversation: exact. Otherwise the
  window's start in our history is estimated from *anchors* (burst frames whose text we hold
  exactly once, in the recent history): each gives "history position minus burst position",
  and the median of the densest run of them is taken (new copies of older frames pass for
  anchors, but scatter). Held copies from ``slack`` frames past that start on were generated
  within the window, so when more than ``slack`` anchors agree on it, the burst's copies of
  their text are theirs by count, wherever they sit (bursty generation reorders further than
  any fixed slack). Nearer the start, a burst copy is a duplicate only if a copy we hold sits
  at the same place in the window, give or take ``slack`` frames, so a new frame identical to
  an older one is never taken for a replay unless the two are less than ``slack`` frames apart
  at the window's edge: that case is undecidable without upstream sequence numbers and is
  counted (:attr:`ReplayFilter.ambiguous`).
* **Frames that overtook others.** The upstream may write an ``error`` frame ahead of frames
  generated before it that its closing socket never wrote; the next replay brings them in
  generation order, so the error frame sits far later in the window than in the history. The
  last frame of each closed connection is remembered (and passed on with the history): held
  once and generated within the window, it is matched wherever the burst has it, and its
  place in the window's order is kept for the next alignment. Where it sits too near the
  window's start to tell whether it belongs to the window, it is published and counted.
* **Replays cut short.** A socket may drop part-way through its replay: the burst is then
  the window's head only, so the window is taken as long as it may be when placing it, and a
  head of more than ``slack`` frames that overlaps nothing we hold starts past all of it.
* **Gaps.** A full replay window that matches nothing we hold, or a full window with no
  history at all (a take-over without a hand-over or checkpoint, or a conversation found
  late), or a head cut short as above, may have missed frames: reported, never hidden. A
  full window that overlaps what we hold by no more than ``slack`` frames, when texts
  repeat, is reported too (``thin_overlap``): a repeat may have passed for a replay there.
* Frames that arrive live are never matched against the history.

Time is passed in (monotonic seconds), so every rule is testable without a clock.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import median_low

REPLAY_SIZE = 100
DIGEST_SIZE = 16
ALIGN_SLACK = 8  # how far out of order live frames may arrive, in frames
BURST_CAP = 4  # with markers, a burst longer than this many replay windows is closed anyway


def _densest(estimates: list[int], width: int) -> tuple[int, int]:
    """The median of the densest run of ``estimates`` no wider than ``width``, and how many it
    holds: anchors that are really new copies of older frames scatter, while the window's own
    agree within the reordering."""
    ordered = sorted(estimates)
    lo, best = 0, (0, 0)
    for hi, value in enumerate(ordered):
        while value - ordered[lo] > width:
            lo += 1
        if hi - lo > best[1] - best[0]:
            best = (lo, hi)
    return median_low(ordered[best[0] : best[1] + 1]), best[1] - best[0] + 1


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


class History:
    """Every digest of a conversation in arrival order, and how many copies of each it holds.

    Occurrences count over the whole conversation, so this grows with it, and per collector it
    is the largest state there is: a ``dict`` of 16-byte keys costs about 100 bytes per frame.
    Here a frame costs its 16 bytes in one ``bytearray`` plus about 8 bytes of index: an
    open-addressing table (4-byte slots, at most half full) of the position of each text's first
    copy, checked against the bytes in the history, so a lookup is exact. Texts seen more than
    once, a minority, keep their count in a ``dict``.
    """

    __slots__ = ("_firsts", "_log", "_repeated", "_used")

    def __init__(self) -> None:
        self._log = bytearray()
        self._firsts = array("I", bytes(4 * 16))  # first copy's position + 1; 0: empty slot
        self._used = 0
        self._repeated: dict[bytes, int] = {}  # copies of each text held more than once

    def __len__(self) -> int:
        return len(self._log) // DIGEST_SIZE

    def digest_at(self, pos: int) -> bytes:
        return bytes(self._log[pos * DIGEST_SIZE : (pos + 1) * DIGEST_SIZE])

    def tail(self, start: int) -> bytes:
        """The digests from frame ``start`` on, concatenated."""
        return bytes(self._log[start * DIGEST_SIZE :])

    def first(self, digest: bytes) -> int | None:
        """Where the first copy of ``digest`` sits, if held."""
        at = self._firsts[self._slot(digest)]
        return at - 1 if at else None

    def count(self, digest: bytes) -> int:
        """Copies of ``digest`` held."""
        n = self._repeated.get(digest)
        if n is not None:
            return n
        return 1 if self._firsts[self._slot(digest)] else 0

    def add(self, digest: bytes) -> int:
        """Append one copy; returns the copies held before it (its occurrence)."""
        n = self._repeated.get(digest)
        if n is None:
            slot = self._slot(digest)
            if not self._firsts[slot]:
                self._firsts[slot] = len(self) + 1
                self._log += digest
                self._used += 1
                if 2 * self._used > len(self._firsts):
                    self._grow()
                return 0
            n = 1
        self._repeated[digest] = n + 1
        self._log += digest
        return n

    def _slot(self, digest: bytes) -> int:
        """The slot holding ``digest``'s first copy, or the empty slot where it would go."""
        firsts, log = self._firsts, self._log
        mask = len(firsts) - 1
        i = hash(digest) & mask
        while (at := firsts[i]) and not log.startswith(digest, (at - 1) * DIGEST_SIZE):
            i = (i + 1) & mask
        return i

    def _grow(self) -> None:
        old = self._firsts
        self._firsts = array("I", bytes(8 * len(old)))
        for at in old:
            if at:
                self._firsts[self._slot(self.digest_at(at - 1))] = at


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one frame (verdicts come out in the order the frames went in)."""

    duplicate: bool
    replay: bool
    occurrence: int  # -1 for a duplicate
    connection_seq: int  # position on the connection, from 0


@dataclass(frozen=True, slots=True)
class Gap:
    """A replay that may not cover what was missed: ``reason`` says why."""

    replayed: int
    history: int
    reason: str  # "no_overlap", "no_history" or "thin_overlap" (covered, but not provably)


Outcome = tuple[list[Verdict], Gap | None]
NOTHING: Outcome = ([], None)


class ReplayFilter:
    """Per-conversation state of the collector that owns it."""

    __slots__ = (
        "_burst",
        "_burst_gap",
        "_exact",
        "_from_start",
        "_history",
        "_last_at",
        "_lasts",
        "_markers",
        "_placed",
        "_repeats",
        "_replay_size",
        "_seq",
        "_slack",
        "ambiguous",
        "gaps",
    )

    def __init__(
        self,
        replay_size: int = REPLAY_SIZE,
        burst_gap: float = 0.25,
        slack: int = ALIGN_SLACK,
    ) -> None:
        self._replay_size = replay_size
        self._burst_gap = burst_gap
        self._slack = slack
        self._history = History()  # every digest seen, arrival order
        self._burst: list[tuple[bytes, int]] | None = None  # (digest, connection_seq)
        self._markers = False
        self._exact = False
        self._from_start = True  # the history starts at the conversation's first frame
        self._repeats = False  # some text came more than once
        self._last_at = 0.0
        self._lasts: set[int] = set()  # where the last frame of each closed connection sits
        self._placed: dict[int, int] = {}  # history position -> place in the window's order
        self._seq = 0
        self.gaps = 0
        self.ambiguous = 0

    # ----- connections ------------------------------------------------------------------------
    def connected(self, now: float) -> Outcome:
        """A new connection: what it sends first is its replay burst."""
        out = self._close_burst()
        self._burst = []
        self._markers = False
        self._last_at = now
        self._seq = 0
        return out

    def disconnected(self) -> Outcome:
        out = self._close_burst(cut=True)
        if self._seq and self.size:
            self._lasts.add(self.size - 1)  # it may have overtaken frames the socket lost
        return out

    def discard(self) -> None:
        """Forget the burst held, without adding it to the history."""
        self._burst = None
        self._exact = False

    def marker(self, kind: str, now: float) -> Outcome:
        """A ``connected`` or ``history_complete`` control frame of the upstream."""
        self._last_at = now
        if kind == "connected":
            self._markers = True
            return NOTHING
        if kind == "history_complete" and self._burst is not None:
            self._exact = True
            return self._close_burst()
        return NOTHING

    @property
    def pending(self) -> bool:
        """Frames are held until the burst closes (call :meth:`tick` when the socket is quiet)."""
        return bool(self._burst)

    def tick(self, now: float) -> Outcome:
        """Close a marker-less burst after a quiet spell, without waiting for another frame."""
        if self._burst and not self._markers and now - self._last_at > self._burst_gap:
            return self._close_burst()
        return NOTHING

    def stalled(self, seconds: float) -> None:
        """Stop the quiet-spell clock for ``seconds`` during which nobody read the socket."""
        self._last_at += seconds

    # ----- history ----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Frames in the history."""
        return len(self._history)

    def history(self, start: int = 0) -> bytes:
        """The digests seen from frame ``start`` on, concatenated (what :meth:`seed` takes)."""
        return self._history.tail(start)

    def seed(self, history: bytes, lasts: Iterable[int] = ()) -> None:
        """Continue another collector's history (and :meth:`lasts`, counted from the start of
        ``history``), before the first connection."""
        base = self.size
        for pos in range(0, len(history) - DIGEST_SIZE + 1, DIGEST_SIZE):
            self._remember(history[pos : pos + DIGEST_SIZE])
        self._lasts.update(base + p for p in lasts if 0 <= p < self.size - base)

    def lasts(self, start: int = 0, end: int | None = None) -> list[int]:
        """Where the last frames of closed connections sit, from frame ``start`` to ``end``:
        they may have overtaken frames their socket lost, so the next owner needs them."""
        stop = self.size if end is None else end
        return sorted(p for p in self._lasts if start <= p < stop)

    # ----- frames -----------------------------------------------------------------------------
    def observe(self, digest: bytes, now: float) -> Outcome:
        """One frame: verdicts for it and for any buffered frames it releases, in order.

        Only :meth:`tick` ends a burst on a quiet spell: the time between two frames seen here
        includes any time the reader's event loop was busy elsewhere, while the replay's tail
        was already waiting in the socket."""
        verdicts: list[Verdict] = []
        gap = None
        burst = self._burst
        if burst and not self._markers and len(burst) >= self._replay_size:
            verdicts, gap = self._close_burst()
            burst = None
        self._last_at = now
        seq = self._seq
        self._seq += 1
        if burst is not None:
            burst.append((digest, seq))
            if self._markers and len(burst) >= BURST_CAP * self._replay_size:
                more, gap2 = self._close_burst()
                verdicts.extend(more)
                gap = gap or gap2
            return verdicts, gap
        verdicts.append(Verdict(False, False, self._remember(digest), seq))
        return verdicts, gap

    # ----- alignment --------------------------------------------------------------------------
    def _remember(self, digest: bytes) -> int:
        """Append to the history; returns the occurrence (earlier copies of the same text)."""
        n = self._history.add(digest)
        if n:
            self._repeats = True
        return n

    def _close_burst(self, cut: bool = False) -> Outcome:
        """Align and release the burst; ``cut``: its socket closed, maybe mid-replay."""
        burst, exact = self._burst, self._exact
        self._burst = None
        self._exact = False
        if not burst:
            return NOTHING
        had = self.size
        if exact and len(burst) < self._replay_size:
            matched = self._match_all(burst)
        else:
            matched = self._match_window(burst, cut)
        verdicts = []
        for (digest, seq), dup in zip(burst, matched, strict=True):
            if dup:
                verdicts.append(Verdict(True, True, -1, seq))
            else:
                verdicts.append(Verdict(False, True, self._remember(digest), seq))
        gap = None
        thin = 0 < sum(matched) <= self._slack
        if len(burst) >= self._replay_size and thin and self._repeats:
            # A thin overlap: a repeat may pass for a replay, or a replayed copy for a repeat,
            # so some frame may be lost or doubled: said as a gap, for the post-call repair.
            self.ambiguous += 1
            self.gaps += 1
            gap = Gap(len(burst), had, "thin_overlap")
        # A window's head holds what we hold, if it overlaps it at all: one cut short that
        # overlaps nothing held (beyond frames lost in flight) starts past all of it.
        head = len(burst) >= self._replay_size or (cut and had and len(burst) > self._slack)
        if head and not any(matched):
            self.gaps += 1
            gap = Gap(len(burst), had, "no_overlap" if had else "no_history")
            if not had:
                self._from_start = False
        return verdicts, gap

    def _match_all(self, burst: list[tuple[bytes, int]]) -> list[bool]:
        """The burst is the whole conversation: the first copies of each text are the seen ones."""
        used: dict[bytes, int] = {}
        history = self._history
        out = []
        for b, (digest, _) in enumerate(burst):
            j = used.get(digest, 0)
            used[digest] = j + 1
            held = history.count(digest)
            out.append(j < held)
            if held == 1 and j == 0 and self._from_start:  # the burst's places are the history's
                pos = history.first(digest)
                if pos is not None and abs(pos - b) > self._slack:
                    self._place(pos, b)
        return out

    def _match_window(self, burst: list[tuple[bytes, int]], cut: bool) -> list[bool]:
        """Match burst copies to held copies that sit at the same place in the window (a burst
        ``cut`` short by its socket may lack the window's tail: only places count)."""
        slack = self._slack
        history = self._history
        size = len(history)
        first = max(0, size - self._replay_size - 2 * slack)
        where = self._places(first)
        in_burst: dict[bytes, int] = {}
        for digest, _ in burst:
            in_burst[digest] = in_burst.get(digest, 0) + 1
        # We hold at most the window's frames, and slack; a burst cut short is only its head.
        lowest = size - max(len(burst), self._replay_size if cut else 0) - slack
        if self._from_start:
            lowest = max(lowest, 0)  # the window cannot start before the conversation
        estimates = [
            where[d][0][0] - b
            for b, (d, _) in enumerate(burst)
            if in_burst[d] == 1 and d in where and history.count(d) == 1
        ]
        estimates = [e for e in estimates if lowest <= e <= size]
        anchored = False  # the window's start is known well enough to trust places far from it
        if estimates:
            start, support = _densest(estimates, 2 * slack)
            anchored = support > slack
        elif cut:  # the window's head, nothing to anchor on: the window is as long as may be
            start = max(0, size - self._replay_size)
            if any(d in where for d in in_burst):
                self.ambiguous += 1  # a repeat may pass for a replay
        else:  # only repeated texts overlap: the copies we hold fill the window's head
            held: dict[bytes, int] = {}
            for pos in range(max(0, size - len(burst) - slack), size):
                d = history.digest_at(pos)
                held[d] = held.get(d, 0) + 1
            overlap = sum(min(n, held.get(d, 0)) for d, n in in_burst.items())
            start = size - overlap
            if overlap:
                self.ambiguous += 1  # no text to anchor on: a repeat may pass for a replay
        # Held copies from ``start + slack`` on were generated within the window (for a burst
        # cut short, up to ``slack`` before its end), so the burst holds them wherever they sit
        # in it: bursty generation reorders live frames further than a fixed slack, and an
        # error frame overtakes frames its socket lost. Copies are interchangeable, so those
        # take the burst's first free copies of their text. Nearer the window's start, a held
        # copy may predate the window: only a burst copy at its place, within ``slack``, is it.
        sure_from = start + slack if anchored else size + 1
        sure_to = start + len(burst) - slack if cut else size
        copies: dict[bytes, list[int]] = {}
        for b, (digest, _) in enumerate(burst):
            copies.setdefault(digest, []).append(b)
        out = [False] * len(burst)
        matched: set[int] = set()  # history positions of the held copies matched
        for digest, free in copies.items():
            sure: list[tuple[int, int]] = []
            for at, pos in where.get(digest, ()):
                if sure_from <= at < sure_to:
                    sure.append((at, pos))
                    continue
                place = at - start
                near = next((b for b in free if abs(place - b) <= slack), None)
                if near is None:
                    continue
                b = near
                if place < 0 and (len(free) > 1 or history.count(digest) > 1):
                    self.ambiguous += 1  # a repeated text matched across the window's edge
                free.remove(b)
                out[b] = True
                matched.add(pos)
            for (at, pos), b in zip(sure, free, strict=False):
                out[b] = True
                matched.add(pos)
                if abs(at - start - b) > slack and history.count(digest) == 1:
                    self._place(pos, start + b)  # so the next window finds it in its place
        if estimates:
            self._match_lasts(burst, start, matched, out)
        return out

    def _places(self, first: int) -> dict[bytes, list[tuple[int, int]]]:
        """Where each text's copies from ``first`` on sit in the window's order, ascending, and
        where they sit in the history: at their history position, or where an earlier replay
        showed them to belong."""
        history, placed = self._history, self._placed
        where: dict[bytes, list[tuple[int, int]]] = {}
        for pos in range(first, len(history)):
            where.setdefault(history.digest_at(pos), []).append((placed.get(pos, pos), pos))
        if placed:
            for pos, at in placed.items():
                if pos < first <= at:
                    where.setdefault(history.digest_at(pos), []).append((at, pos))
            for spots in where.values():
                spots.sort()
        return where

    def _place(self, pos: int, at: int) -> None:
        """Remember that the copy held at ``pos`` belongs at ``at`` in the window's order."""
        placed = self._placed
        placed[pos] = at
        if len(placed) > 64:  # one per displaced frame: forget those no window reaches now
            oldest = len(self._history) - 2 * self._replay_size
            for old in [p for p, a in placed.items() if a < oldest]:
                del placed[old]

    def _match_lasts(
        self, burst: list[tuple[bytes, int]], start: int, matched: set[int], out: list[bool]
    ) -> None:
        """Match the last frame of a closed connection (an ``error`` frame that may have
        overtaken frames its socket lost) held once from ``start + slack`` on, wherever the
        burst has it, even where few anchors place the window. Held before that, a copy far
        from its place is it or a new copy of an older frame: undecidable, it is counted."""
        history, placed, lasts = self._history, self._placed, self._lasts
        doubtful = set()
        for b, (digest, _) in enumerate(burst):
            if out[b] or history.count(digest) != 1:
                continue
            pos = history.first(digest)
            if pos is None or pos not in lasts or pos in matched:
                continue
            if placed.get(pos, pos) >= start + self._slack:
                out[b] = True
                matched.add(pos)
                self._place(pos, start + b)  # so the next window finds it in its place
            else:
                doubtful.add(digest)
        self.ambiguous += len(doubtful)
