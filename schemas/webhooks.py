"""The post-call webhook signature (UPSTREAM.md §4), shared by the receiver and the simulator.

``ElevenLabs-Signature: t=<unix seconds>,v0=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``. The
MAC covers the raw body bytes, so a receiver must verify before parsing anything. Several ``v0``
entries are accepted (one per secret during a rotation). Sans-I/O: the caller passes the clock.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "ElevenLabs-Signature"
DEFAULT_TOLERANCE_SECONDS = 30 * 60  # the official SDK rejects older timestamps


class SignatureError(Exception):
    """A delivery whose signature does not prove it came from the holder of the secret.

    ``reason`` is a metric label (``missing``, ``malformed``, ``stale``, ``mismatch``); the
    message never contains the secret or the expected MAC.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The header value upstream sends for ``body`` at ``timestamp``."""
    return f"t={timestamp},v0={_mac(secret, timestamp, body)}"


def verify(
    header: str | None,
    body: bytes,
    secret: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """The signed timestamp when ``header`` signs ``body`` with ``secret`` within ``tolerance``.

    Timestamps too far in the future are refused like stale ones: a clock that far off (or a
    forged time) would otherwise let a captured delivery be replayed for longer.
    """
    if not header:
        raise SignatureError("missing", f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v0":
            macs.append(value.lower())
    if timestamp is None or not macs:
        raise SignatureError("malformed", f"{SIGNATURE_HEADER} needs t=<unix> and v0=<hex>")
    if abs(now - timestamp) > tolerance:
        raise SignatureError(
            "stale",
            f"signed at {timestamp}, {abs(now - timestamp):.0f}s from now (> {tolerance:.0f}s)",
        )
    expected = _mac(secret, timestamp, body).encode()
    # bytes: compare_digest refuses non-ASCII str, and a header may hold anything
    if not any(hmac.compare_digest(expected, mac.encode("utf-8", "replace")) for mac in macs):
        raise SignatureError("mismatch", "signature does not match the body")
    return timestamp
