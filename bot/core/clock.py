"""Time helpers: the clock every flow is given, and ISO-8601 text to and from datetimes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def days_left(end_at: datetime, now: datetime) -> int:
    seconds = (end_at - now).total_seconds()
    return int(seconds // 86400) if seconds >= 0 else -int((-seconds) // 86400) - 1


def iso_utc(value: Any) -> str | None:
    if not value:
        return None
    try:
        return (
            datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            .astimezone(UTC)
            .isoformat(timespec="seconds")
        )
    except ValueError:
        return None
