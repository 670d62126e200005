"""Timestamps as the job records keep them: ISO 8601, UTC, milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def iso(timestamp: float) -> str:
    """A Unix time as a record's timestamp."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def seconds_since(stamp: str, now: float) -> float:
    """Seconds from a record's timestamp to the Unix time ``now``."""
    return now - datetime.fromisoformat(stamp).timestamp()
