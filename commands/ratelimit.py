"""Per-conversation token buckets (sans-I/O: the caller passes the time).

A runaway issuer cannot flood one conversation, while a short burst (takeover, a message,
hand-back) goes through. Buckets that are full again are dropped, so memory follows the number
of recently steered conversations, not all conversations ever seen.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``rate`` tokens per second, at most ``burst`` held, one token per command."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str, now: float) -> bool:
        """Take a token for ``key`` at time ``now`` (seconds) if one is available."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def prune(self, now: float) -> None:
        """Forget buckets that would be full by now (they behave like new ones).

        ``now`` must be on the clock ``allow`` was given: on another clock (monotonic against
        wall time) no bucket ever looks old, or every bucket does.
        """
        full_after = self.burst / self.rate
        for key in [k for k, b in self._buckets.items() if now - b.at >= full_after]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
