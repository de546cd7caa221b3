"""Jittered exponential back-off and ``Retry-After`` parsing (sans-I/O).

Full jitter (a uniform delay between 0 and the exponential cap) spreads the reconnects of
thousands of sockets dropped at once, instead of having them hit the upstream in waves.
"""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime

# One generator for every Backoff that is given none: a random.Random holds 2.5 KB of state,
# which per monitor socket (one Backoff each) adds up to megabytes.
_SHARED = random.Random()


class Backoff:
    """Delays for successive failures: uniform in [base/2, min(max, base * 2**n)]."""

    __slots__ = ("_rng", "base", "failures", "maximum")

    def __init__(self, base: float, maximum: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.maximum = maximum
        self.failures = 0
        self._rng = rng or _SHARED

    def next_delay(self) -> float:
        cap = min(self.maximum, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return self._rng.uniform(min(self.base / 2, cap), cap)

    def reset(self) -> None:
        self.failures = 0


def retry_after(value: str | None, now_unix: float, maximum: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), maximum)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(0.0, when - now_unix), maximum)
