"""Times as the store keeps them: integer microseconds since the Unix epoch
(UTC), which SQLite and PostgreSQL compare and order the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def to_micros(time: datetime) -> int:
    """``time`` (timezone-aware) as microseconds since the epoch."""
    if time.utcoffset() is None:
        raise ValueError("the key store takes timezone-aware datetimes only")
    return (time - EPOCH) // MICROSECOND


def from_micros(micros: int) -> datetime:
    """The UTC datetime ``micros`` microseconds after the epoch."""
    return EPOCH + timedelta(microseconds=micros)
