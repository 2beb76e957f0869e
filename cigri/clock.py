"""The one clock of CiGri: aware UTC datetimes (every timestamp column is UTC), and the two
ways the API writes them (epoch seconds, ISO 8601 in the server's time zone)."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def iso(value: datetime | None) -> str | None:
    """ISO-8601 with offset, in the server's local time zone (CiGri3's format)."""
    return value.astimezone().isoformat(timespec="seconds") if value is not None else None
