"""Maintenance windows of a rollout (issue 21): when its stages may advance and it may make new offers (pure).

A window is a recurring span of local wall-clock time in a time zone: ``{"days": "mon-fri", "start": "01:00",
"end": "05:00", "tz": "Europe/Berlin"}``.  ``days`` names the days the window *opens* on (``mon``..``sun``,
ranges such as ``mon-fri`` or ``fri-mon``, lists ``sat,sun``, or ``daily``); ``start`` and ``end`` are
``HH:MM`` (``end`` may be ``24:00``); an ``end`` at or before ``start`` crosses midnight and closes on the next
day.  Times are the clock on the wall in ``tz``, so around a DST change a window lasts what the clock says:
on the spring-forward night a 01:00-05:00 Berlin window is open three real hours and one inside the missing
hour (02:00-03:00) not at all; on the fall-back night 01:00-05:00 is open five.

A rollout with no windows is always open.  ``is_open`` and ``next_open`` take aware datetimes and do no I/O:
the poll decision calls ``is_open`` on every poll (the poll cache holds the windows, not the answer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOWS = 16
_SEARCH_DAYS = 15  # a week, twice: a window killed by a DST change one week opens the next


class WindowError(ValueError):
    """A window does not parse; the message names the field (``days``, ``start``, ``end``, ``tz``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # weekdays (Monday 0) the window opens on
    start: time
    end: time | None  # None: 24:00
    tz: ZoneInfo

    @property
    def crosses_midnight(self) -> bool:
        return self.end is not None and self.end <= self.start

    def contains(self, at: datetime) -> bool:
        """Whether the aware instant ``at`` falls inside this window."""
        local = at.astimezone(self.tz)
        t = local.time().replace(tzinfo=None)
        today = local.weekday() in self.days
        if not self.crosses_midnight:
            return today and self.start <= t and (self.end is None or t < self.end)
        assert self.end is not None
        yesterday = (local.weekday() - 1) % 7 in self.days
        return (today and t >= self.start) or (yesterday and t < self.end)


def _days(text: str) -> frozenset[int]:
    text = text.strip().lower()
    if text in ("daily", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        ends = [p.strip() for p in part.split("-")]
        if len(ends) > 2 or any(e not in DAYS for e in ends):
            raise WindowError("days", f"{text!r} is not a day list: use mon..sun, ranges (mon-fri, fri-mon), "
                                      "commas (sat,sun) or daily")
        a, b = DAYS.index(ends[0]), DAYS.index(ends[-1])
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(out)


def _clock(field: str, text: str) -> time | None:
    """``HH:MM`` as a time (``24:00``: None, only for ``end``)."""
    parts = text.strip().split(":")
    if len(parts) != 2 or not all(p.isdigit() and len(p) == 2 for p in parts):
        raise WindowError(field, f"{text!r} is not a time HH:MM")
    h, m = int(parts[0]), int(parts[1])
    if field == "end" and (h, m) == (24, 0):
        return None
    if h > 23 or m > 59:
        raise WindowError(field, f"{text!r} is not a time of day (00:00..23:59{', or 24:00' if field == 'end' else ''})")
    return time(h, m)


def _zone(name: str) -> ZoneInfo:
    if not name or len(name) > 64 or name.startswith("/") or ".." in name:
        raise WindowError("tz", f"{name!r} is not an IANA time zone name such as Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise WindowError("tz", f"{name!r} is not an IANA time zone name such as Europe/Berlin") from e


def parse(d: Mapping[str, Any]) -> Window:
    """One window from its stored or posted form.

    Raises:
        WindowError: naming the bad field.
    """
    for key in ("days", "start", "end", "tz"):
        if not isinstance(d.get(key), str) or len(d[key]) > 64:
            raise WindowError(key, "missing, not a string, or longer than 64 characters")
    extra = set(d) - {"days", "start", "end", "tz"}
    if extra:
        raise WindowError(sorted(extra)[0], "unknown field (a window has days, start, end, tz)")
    start = _clock("start", d["start"])
    assert start is not None
    end = _clock("end", d["end"])
    if end == start:
        raise WindowError("end", "equals start: an empty window (00:00-24:00 is a whole day)")
    return Window(_days(d["days"]), start, end, _zone(d["tz"]))


def parse_text(text: str) -> dict[str, str]:
    """``"mon-fri 01:00-05:00 Europe/Berlin"`` (the CLI's ``--window``) as the API's form; checked.

    Raises:
        WindowError: naming the bad part.
    """
    parts = text.split()
    if len(parts) != 3 or parts[1].count("-") != 1:
        raise WindowError("window", f"{text!r} is not 'DAYS HH:MM-HH:MM ZONE', e.g. 'mon-fri 01:00-05:00 Europe/Berlin'")
    start, end = parts[1].split("-")
    d = {"days": parts[0], "start": start, "end": end, "tz": parts[2]}
    parse(d)
    return d


def is_open(windows: Sequence[Window], at: datetime) -> bool:
    """Whether ``at`` (aware) is inside one of the windows; no windows: always."""
    return not windows or any(w.contains(at) for w in windows)


def _starts(w: Window, around: date) -> Iterable[tuple[datetime, datetime]]:
    """(earliest, latest) reading of each local opening time from the day before ``around`` on: one instant
    normally, two apart around a DST change (the opening is somewhere between them)."""
    for i in range(-1, _SEARCH_DAYS):
        day = around + timedelta(days=i)
        if day.weekday() not in w.days:
            continue
        a = datetime.combine(day, w.start, tzinfo=w.tz).astimezone(UTC)
        b = datetime.combine(day, w.start, tzinfo=w.tz).replace(fold=1).astimezone(UTC)
        yield min(a, b), max(a, b)


def next_open(windows: Sequence[Window], at: datetime) -> datetime | None:
    """The first instant at or after ``at`` inside a window (``at`` itself when open; to the second around a
    DST gap); None when none opens within two weeks (windows that only ever fall into a skipped hour)."""
    if is_open(windows, at):
        return at
    best: datetime | None = None
    for w in windows:
        for early, late in _starts(w, at.astimezone(w.tz).date()):
            found = _first_open_between(w, max(early, at), late) if late >= at else None
            if found is not None and (best is None or found < best):
                best = found
    return best


def _first_open_between(w: Window, lo: datetime, hi: datetime) -> datetime | None:
    """The first instant in [lo, hi] the window contains, if ``hi`` is inside it (bisection to the second:
    a start time inside a skipped hour opens when the clock jumps past it)."""
    if w.contains(lo):
        return lo
    if not w.contains(hi):
        return None
    while (hi - lo) > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if w.contains(mid):
            hi = mid
        else:
            lo = mid
    return hi


def parse_all(stored: Sequence[Mapping[str, Any]] | None) -> tuple[Window, ...]:
    """A rollout's stored windows (checked when posted; an unreadable one now, e.g. a zone the machine lacks,
    raises rather than silently opening the rollout).

    Raises:
        WindowError: naming the field.
    """
    return tuple(parse(d) for d in stored or ())


def describe(w: Mapping[str, Any]) -> str:
    """A window as the CLI writes it."""
    return f"{w['days']} {w['start']}-{w['end']} {w['tz']}"
