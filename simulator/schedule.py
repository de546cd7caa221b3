"""Sans-I/O timing: one heap of due actions for every conversation and socket.

The server drives a single loop that pops everything due at each tick instead of running a task
and a ``sleep`` per frame, which is what lets one process feed 1,000 sockets. Entries are ordered
by ``(due, priority, key, seq)``; since every action scheduled while processing is due no earlier
than the action being processed, the popped order is the same whatever the tick length or
machine load. That is why the same seed gives the same ground-truth file, line for line.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Priorities at equal due time: start conversations, generate frames, then send, then close.
START, GENERATE, SEND, CLOSE, DONE, DROP = range(6)


@dataclass(frozen=True, slots=True)
class Due:
    due: float
    kind: int
    key: int
    payload: Any


class Timeline:
    """A heap of actions keyed by virtual time (seconds since the simulator started)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, kind: int, key: int, payload: Any) -> None:
        heapq.heappush(self._heap, (due, kind, key, next(self._seq), payload))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> Iterator[Due]:
        """Yield every action due at or before ``now`` in order, including ones pushed meanwhile."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, kind, key, _seq, payload = heapq.heappop(heap)
            yield Due(due, kind, key, payload)


class Reorder:
    """Send time = generation time + uniform[0, max_ms] ms: frames may overtake each other."""

    def __init__(self, max_ms: float, seed: int) -> None:
        self.max_s = max_ms / 1000.0
        self._rng = random.Random(f"{seed}:reorder")

    def send_at(self, generated: float) -> float:
        if self.max_s <= 0:
            return generated
        return generated + self._rng.uniform(0.0, self.max_s)


class Disconnects:
    """When to drop a monitor socket next and how (mean ``every`` seconds, exponential)."""

    KINDS = ("abort", 1011, 1002, "abort", 1011)

    def __init__(self, every: float, seed: int) -> None:
        self.every = every
        self._rng = random.Random(f"{seed}:drops")

    def next_after(self, now: float) -> float | None:
        if self.every <= 0:
            return None
        return now + self._rng.expovariate(1.0 / self.every)

    def how(self) -> str | int:
        """An abrupt TCP drop (``"abort"``) or a close code of the AsyncAPI (1011 internal
        error, 1002 operational error)."""
        kind: str | int = self._rng.choice(self.KINDS)
        return kind
