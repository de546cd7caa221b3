"""Record timestamps: Avro ``timestamp-micros``, microseconds since the Unix epoch in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_micros() -> int:
    """The current time as a record timestamp."""
    return to_micros(datetime.now(UTC))


def to_micros(moment: datetime) -> int:
    """A timezone-aware datetime as a record timestamp."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: record timestamps are UTC, give a timezone")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def micros_to_iso(micros: int) -> str:
    """A record timestamp as ISO-8601 UTC, e.g. ``2026-11-21T06:08:00.123456Z``."""
    moment = _EPOCH + timedelta(microseconds=micros)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
