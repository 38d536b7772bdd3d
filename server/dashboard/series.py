"""Chart series from event lists (pure: no I/O, no SQL).

uPlot draws aligned data: one list of x values (epoch seconds) and, per
series, one y value for every x.  These functions replay events into such
step series: devices per update state over time, and cumulative bytes per
group (rollout, network tag).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from server.dashboard.format import epoch


@dataclass(frozen=True)
class Series:
    """Aligned chart data: ``xs`` in epoch seconds, one list of ys per named series."""

    xs: list[float]
    ys: dict[str, list[float]]

    def as_chart(self, unit: str = "", stacked: bool = False) -> dict:
        """The JSON the page's chart script reads (names and values in a fixed order).

        ``stacked``: the script stacks the series bottom-up in this order (raw values stay in the legend).
        """
        names = list(self.ys)
        return {"unit": unit, "stacked": stacked, "names": names, "data": [self.xs] + [self.ys[n] for n in names]}


def _extend_to(series: Series, until: datetime | None) -> Series:
    """Carry the last values on to ``until`` (now), so the chart shows the present state too."""
    end = epoch(until)
    if series.xs and end is not None and int(end) > series.xs[-1]:
        series.xs.append(float(int(end)))
        for ys in series.ys.values():
            ys.append(ys[-1])
    return series


def state_counts_over_time(events: Iterable[tuple[datetime, int, str]], states: Sequence[str],
                           until: datetime | None = None) -> Series:
    """Replay (time, update id, new state) events into the number of updates in each state.

    Events at the same second are merged into one point (the last count wins)
    so a burst of reports draws one step, not a comb.
    """
    current: dict[int, str] = {}
    counts = dict.fromkeys(states, 0)
    xs: list[float] = []
    ys: dict[str, list[float]] = {s: [] for s in states}
    for at, update_id, state in events:
        old = current.get(update_id)
        if old in counts:
            counts[old] -= 1
        current[update_id] = state
        if state in counts:
            counts[state] += 1
        x = float(int(epoch(at) or 0))
        if xs and xs[-1] == x:
            for s in states:
                ys[s][-1] = counts[s]
        else:
            xs.append(x)
            for s in states:
                ys[s].append(counts[s])
    return _extend_to(Series(xs, ys), until)


def cumulative_by_group(points: Iterable[tuple[datetime, str, int]], until: datetime | None = None) -> Series:
    """Cumulative sum per group of (time, group, amount) points, merged per second."""
    rows = sorted(points, key=lambda p: p[0])
    groups = sorted({g for _, g, _ in rows})
    totals = dict.fromkeys(groups, 0)
    xs: list[float] = []
    ys: dict[str, list[float]] = {g: [] for g in groups}
    for at, group, amount in rows:
        totals[group] += amount
        x = float(int(epoch(at) or 0))
        if xs and xs[-1] == x:
            for g in groups:
                ys[g][-1] = totals[g]
        else:
            xs.append(x)
            for g in groups:
                ys[g].append(totals[g])
    return _extend_to(Series(xs, ys), until)
