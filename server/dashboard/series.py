"""Chart series from event lists (pure: no I/O, no SQL).

uPlot draws aligned data: one list of x values (epoch seconds) and, per
series, one y value for every x.  These functions replay events into such
step series: devices per update state over time, and cumulative bytes per
group (rollout, network tag); and a rollout's model-quality figures (issue 18)
from the API's ``quality`` object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from protocol.errors import MalformedMessage
from protocol.quality import parse_gate
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


# -- model quality (issue 18) -------------------------------------------------------------------------------
def _gate_lines(gates: Iterable[str], metric: str) -> list[dict]:
    """Horizontal lines for the gates on ``metric``: ``{"value", "label"}`` (unparseable gates are skipped:
    the registry parsed them when the rollout was created, this only draws them)."""
    lines = []
    for text in gates:
        try:
            g = parse_gate(text)
        except MalformedMessage:
            continue
        if g.metric == metric:
            lines.append({"value": g.threshold, "label": f"gate {g}"})
    return lines


def quality_history(history: Iterable[dict], metric: str) -> Series:
    """One series per kind (``shadow``, ``live``) of ``metric`` over time, from the API's ``quality.history``
    points (``{"at": ISO, "kind", metric: value|None, ...}``); a kind has None where it has no point."""
    rows = []
    for p in history:
        at = p.get("at")
        try:
            x = float(int(datetime.fromisoformat(str(at).replace("Z", "+00:00")).timestamp()))
        except ValueError:
            continue
        rows.append((x, str(p.get("kind")), p.get(metric)))
    rows.sort(key=lambda r: r[0])
    kinds = [k for k in ("shadow", "live") if any(r[1] == k for r in rows)]
    xs: list[float] = []
    ys: dict[str, list] = {k: [] for k in kinds}
    for x, kind, value in rows:
        if kind not in ys:
            continue
        if not xs or xs[-1] != x:
            xs.append(x)
            for k in kinds:
                ys[k].append(None)
        ys[kind][-1] = value
    return Series(xs, ys)


def quality_charts(quality: dict, labels: Sequence[str]) -> dict:
    """What the rollout page draws of a rollout's ``quality`` object: agreement and latency-ratio over time
    with each gate's threshold as a line, and the class distribution of candidate vs baseline as bars
    (the shadow comparison when there is one, else the live one)."""
    gates = list(quality.get("gates") or [])
    history = list(quality.get("history") or [])
    out: dict = {}
    for metric, unit in (("agreement", "ratio"), ("latency_p99_ratio", "ratio"), ("class_shift", "ratio")):
        s = quality_history(history, metric)
        if s.xs:
            out[metric] = {"series": {**s.as_chart(unit), "linear": True}, "thresholds": _gate_lines(gates, metric)}
    summaries = quality.get("summaries") or {}
    summary = summaries.get("shadow") or summaries.get("live")
    counts = (summary or {}).get("class_counts") or {}
    cand, base = list(counts.get("candidate") or []), list(counts.get("baseline") or [])
    n = max(len(cand), len(base))
    names = [labels[i] if i < len(labels) else f"class {i}" for i in range(n)]
    other = (summary or {}).get("class_other") or {}
    if other.get("candidate") or other.get("baseline"):  # the classes folded out of the cars' summaries
        cand, base = cand + [0] * (n - len(cand)), base + [0] * (n - len(base))
        cand.append(int(other.get("candidate") or 0))
        base.append(int(other.get("baseline") or 0))
        names.append("other classes")
        n += 1
    if n:
        pad = lambda v: [float(v[i]) if i < len(v) else 0.0 for i in range(n)]  # noqa: E731
        out["classes"] = {"series": {"unit": "frames", "names": ["candidate", "baseline"],
                                     "data": [[float(i) for i in range(n)], pad(cand), pad(base)],
                                     "bars": names}}
    return out
