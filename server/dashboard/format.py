"""Human-readable numbers for the pages (pure: no I/O, no server imports).

The raw value always travels next to the text (``data-value``) so tables
sort on numbers and tests compare against the API's figures; these
functions only decide what a person reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

_UNITS = ("B", "KB", "MB", "GB", "TB")


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KB' (powers of 1024, the unit a cellular bill is read in)."""
    if n is None:
        return "—"
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{int(value)} B"
    return f"{value:.1f} {_UNITS[unit]}" if abs(value) < 100 else f"{value:.0f} {_UNITS[unit]}"


def percent(ratio: float | None, digits: int = 1) -> str:
    """0.9734 -> '97.3%'; None -> '—' (nothing to compare against yet)."""
    if ratio is None:
        return "—"
    return f"{ratio * 100:.{digits}f}%"


def share(part: int, whole: int) -> float:
    """part / whole as a ratio, 0 when there is nothing to divide."""
    return part / whole if whole else 0.0


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """'12 s ago', '5 min ago', '3 h ago', '2 d ago'; 'never' for None."""
    if when is None:
        return "never"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def duration(seconds: float) -> str:
    """90 -> '1 min 30 s', 7200 -> '2 h': how long, for thresholds and soak times."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")


def timestamp(when: datetime | None) -> str:
    """ISO-like UTC time a person can read: '2026-11-29 10:02:03 UTC'."""
    if when is None:
        return "—"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def epoch(when: datetime | None) -> float | None:
    """Seconds since the epoch, for charts (naive datetimes are UTC, as stored)."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def contract_summary(c: dict[str, Any] | None) -> str:
    """A version's input contract in one line: size, layout, resize, channel order, scale, mean/std, output, labels."""
    if not c:
        return "—"

    def nums(values: Any) -> str:
        return "/".join(f"{float(v):g}" for v in values or [])

    labels = len(c.get("labels") or [])
    return (f"{c.get('height')}×{c.get('width')} {c.get('layout')} ({c.get('resize')}), {c.get('channel_order')} "
            f"0..{float(c.get('scale', 1)):g}, mean {nums(c.get('mean'))} std {nums(c.get('std'))} → "
            f"{c.get('output_kind')}, {labels} labels")
