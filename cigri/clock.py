"""The one clock of CiGri: aware UTC datetimes (every timestamp column is UTC)."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
