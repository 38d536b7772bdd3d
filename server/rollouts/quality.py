"""Model-quality telemetry of rollouts (issue 18): store the cars' summaries, merge and judge them, keep a history.

A car sends its cumulative :class:`protocol.quality.QualitySummary` with its reports; :func:`record` keeps,
per (device, rollout, candidate version, kind), the one with the highest ``seq``.  A rollout's figures are
the merge of its cars' summaries (:func:`merged`), judged by its gates (:func:`protocol.quality.judge`):
``service.evaluate`` promotes a shadow stage whose gates pass and halts a rollout whose gate fails.
:func:`note_history` appends a point to the rollout's "agreement over time" when the figures changed, at most
:data:`HISTORY_MAX` per rollout.  :func:`describe` is the API's ``quality`` object.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from protocol.quality import KINDS, Gate, ModelStats, QualitySummary, Verdict, judge, parse_gate
from server.db import as_utc, utcnow
from server.errors import Conflict, NotFound
from server.orm import Line, QualityHistory, Rollout
from server.orm import QualitySummary as SummaryRow
from server.registry import store as registry_store
from server.rollouts import stages as staging
from server.rollouts import store

HISTORY_MAX = 500  # points per rollout


class JudgeThrottle:
    """How often a rollout that only quality summaries touched is judged on ingest, per server process.

    Judging merges every car's summary of the rollout (and tallies its cars): at 10,000 cars each reporting
    every 30 s, judging on every summary was hundreds of whole-rollout merges a second.  A summary is stored
    at once; the rollout is judged on the first summary, then at most every ``every_s`` on ingest, and on
    every rollout tick whatever arrives.  Install reports are still judged at once (error thresholds).
    """

    #: Rollouts remembered at most (the oldest forgotten first: a forgotten one is simply judged again).
    MAX_ROLLOUTS = 10_000

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._last: OrderedDict[int, float] = OrderedDict()
        self._lock = threading.Lock()

    def due(self, rollout_id: int) -> bool:
        """True (and noted) when the rollout was not judged on ingest in the last ``every_s``."""
        if self.every_s <= 0:
            return True
        now = self._clock()
        with self._lock:
            last = self._last.get(rollout_id)
            if last is not None and now - last < self.every_s:
                return False
            self._last[rollout_id] = now
            self._last.move_to_end(rollout_id)
            while len(self._last) > self.MAX_ROLLOUTS:
                self._last.popitem(last=False)
            return True


def gates_of(r: Rollout) -> list[Gate]:
    """The rollout's gates (checked when it was created)."""
    return [parse_gate(str(g)) for g in (r.gates or [])]


def record(session: Session, device_pk: int, device_id: str, s: QualitySummary) -> bool:
    """Store ``s`` unless a summary with an equal or higher ``seq`` is stored; True when it was stored.

    Raises:
        NotFound: the rollout or the version does not exist, or the rollout never offered this device anything.
        Conflict: the summary's line or candidate version is not the rollout's.
    """
    if s.rollout_id is None:
        raise NotFound("quality summaries are kept per rollout: this one names no rollout_id")
    r = store.rollout(session, s.rollout_id)
    if r is None:
        raise NotFound(f"rollout {s.rollout_id} does not exist")
    line = session.get(Line, r.line_id)
    if line is None or line.name != s.line:
        raise Conflict(f"rollout {r.id} is on line {line.name if line else '?'!r}, not {s.line!r}")
    if registry_store.version(session, r.line_id, s.candidate_version) is None:
        raise NotFound(f"line {s.line!r} has no version {s.candidate_version}")
    if s.candidate_version != r.target_version:
        raise Conflict(f"rollout {r.id} ships version {r.target_version}, not {s.candidate_version}")
    if not store.was_offered(session, device_pk, r.id):
        raise NotFound(f"rollout {r.id} made no offer to this device")
    row = store.quality_row(session, device_pk, r.id, s.candidate_version, s.kind)
    if row is not None and row.seq >= s.seq:
        return False  # re-sent or older: acknowledged, ignored
    percents = [st.percent for st in store.stages(session, r.id)]
    stage = staging.stage_of(r.id, device_id, percents)
    if row is None:
        row = SummaryRow(device_pk=device_pk, rollout_id=r.id, candidate_version=s.candidate_version, kind=s.kind,
                         seq=s.seq, stage=stage, frames=s.frames, agree=s.agree, summary=s.to_dict(),
                         updated_at=utcnow())
        session.add(row)
    else:
        row.seq, row.stage, row.frames, row.agree = s.seq, stage, s.frames, s.agree
        row.summary, row.updated_at = s.to_dict(), utcnow()
    session.flush()
    return True


@dataclass(frozen=True)
class Merged:
    """A rollout's figures of one kind: the merge of its cars' latest summaries (None: none yet)."""

    summary: QualitySummary | None
    cars: int


#: One side of a summary as nested tuples of ints: (errors, nonfinite, other, confidence, latency, classes as
#: (index, count) pairs).  Why tuples: the collector stops tracking a tuple of ints, so ten thousand cars'
#: summaries held here cost a full collection nothing; as dataclasses with lists they were ~100,000 tracked
#: objects, and each full collection stopped the serving process for 100-160 ms (polls' p99, bench/load.py).
_Side = tuple[int, int, int, tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]
_Flat = tuple[int, int, int, int, _Side, _Side]
_Parsed = tuple[int, _Flat, str, int]  # a summary as held here: (seq, counts, line, baseline version)


def _parsed_summary(s: QualitySummary) -> _Parsed:
    return s.seq, flatten(s), s.line, s.baseline_version


def _flat_side(m: ModelStats) -> _Side:
    return (m.errors, m.nonfinite, m.other, tuple(m.confidence), tuple(m.latency),
            tuple((i, n) for i, n in enumerate(m.class_counts) if n))


def flatten(s: QualitySummary) -> _Flat:
    """A summary's counts as nested tuples (see _Side)."""
    return (s.frames, s.agree, s.sampled, s.dropped, _flat_side(s.candidate), _flat_side(s.baseline))


def _add_side(m: ModelStats, side: _Side, sign: int) -> None:
    errors, nonfinite, other, confidence, latency, classes = side
    m.errors += sign * errors
    m.nonfinite += sign * nonfinite
    m.other += sign * other
    for i, n in enumerate(confidence):
        m.confidence[i] += sign * n
    for i, n in enumerate(latency):
        m.latency[i] += sign * n
    counts = m.class_counts
    for i, n in classes:
        if i >= len(counts):
            counts.extend([0] * (i + 1 - len(counts)))
        counts[i] += sign * n


def _add_flat(total: QualitySummary, f: _Flat, sign: int) -> None:
    total.frames += sign * f[0]
    total.agree += sign * f[1]
    total.sampled += sign * f[2]
    total.dropped += sign * f[3]
    _add_side(total.candidate, f[4], sign)
    _add_side(total.baseline, f[5], sign)


@dataclass
class _Total:
    """Running sum of the summaries of one stage's cars, and how many cars it holds."""

    summary: QualitySummary
    cars: int


class _Totals:
    """One (rollout, kind, candidate version)'s summaries as they stood when last read, and their sums by stage."""

    def __init__(self, kind: str, rollout_id: int, candidate_version: int) -> None:
        self.rows: dict[int, tuple[int, int | None, _Flat]] = {}  # row id -> (seq, stage, summary's counts)
        self.by_stage: dict[int | None, _Total] = {}
        self.meta = (kind, rollout_id, candidate_version)
        self.line, self.baseline_version = "", 0

    def take(self, row_id: int) -> None:
        seq, stage, f = self.rows.pop(row_id)
        t = self.by_stage[stage]
        t.cars -= 1
        if t.cars == 0:
            del self.by_stage[stage]
        else:
            _add_flat(t.summary, f, -1)

    def counts_of(self, s: _Parsed) -> _Flat:
        """A parsed summary's counts (its line and baseline label the sums)."""
        _seq, f, self.line, self.baseline_version = s
        return f

    def put(self, row_id: int, seq: int, stage: int | None, f: _Flat) -> None:
        self.rows[row_id] = (seq, stage, f)
        t = self.by_stage.get(stage)
        if t is None:
            kind, rollout_id, version = self.meta
            t = self.by_stage[stage] = _Total(QualitySummary(kind=kind, line=self.line, rollout_id=rollout_id,
                                                             candidate_version=version,
                                                             baseline_version=self.baseline_version), 0)
        _add_flat(t.summary, f, 1)
        t.cars += 1


class ParsedSummaries:
    """Per database, every judged rollout's cars' summaries parsed, and their running sums by stage.

    Judging a rollout merges every car's summary: reading and parsing each stored JSON was ~0.1 ms, and merging
    one more ~20 µs (more for a 1000-class model), so at 10,000 cars a judgement (on every rollout tick, and on
    ingest every ``OTA_QUALITY_JUDGE_S``) held the GIL for a large part of a second and the poll path's p99
    paid for it (bench/load.py --quality-cars).  A row's summary changes only with a higher ``seq`` (``record``
    and the group commit both keep the highest), so (id, seq) names its content: a judgement reads the ids,
    seqs and stages, the JSON of only the rows that changed since, and moves each changed car's summary out of
    its stage's sum and the new one in (integer counts: the sums stay exact).

    The group commit (devices/summaries.py) hands over the summaries it just stored, parsed (:meth:`prime`):
    a judgement in the same process takes those instead of reading and parsing their JSON again, which was
    most of a judgement's cost with 300 summaries a second arriving.  A primed summary is used only when its
    ``seq`` is the stored row's; otherwise the row's JSON is read as before.
    """

    MAX_ROWS = 200_000  # past this the cache starts over (a bound on memory: ~2 KB each parsed)
    MAX_PRIMED = 50_000  # primed summaries not yet taken by a judgement; past this they start over
    FETCH = 500  # rows whose JSON is read per statement

    def __init__(self) -> None:
        self._totals: dict[tuple[int, str, int], _Totals] = {}
        self._held = 0
        self._primed: dict[tuple[int, str, int], dict[int, _Parsed]] = {}
        self._primed_count = 0
        self._lock = threading.Lock()
        self.rows_read = 0  # summaries whose JSON a judgement read and parsed (tests read it)

    def prime(self, stored: Iterable[tuple[int, int, str, int, QualitySummary]]) -> None:
        """Summaries just committed: (device_pk, rollout_id, kind, candidate_version, summary) each."""
        with self._lock:
            for device_pk, rollout_id, kind, version, s in stored:
                if self._primed_count >= self.MAX_PRIMED:
                    self._primed.clear()
                    self._primed_count = 0
                per = self._primed.setdefault((rollout_id, kind, version), {})
                held = per.get(device_pk)
                if held is None:
                    self._primed_count += 1
                elif held[0] >= s.seq:
                    continue
                per[device_pk] = _parsed_summary(s)

    def by_stage(self, session: Session, rollout_id: int, kind: str, candidate_version: int
                 ) -> dict[int | None, Merged]:
        """Per stage, the sum of its cars' stored summaries of this rollout, kind and version (copies)."""
        keys = store.quality_keys(session, rollout_id, kind, candidate_version)
        at = (rollout_id, kind, candidate_version)
        with self._lock:
            held = self._totals.get(at)
            rows = held.rows if held is not None else {}
            primed = dict(self._primed.get(at, {}))
        fresh: dict[int, _Parsed] = {}
        stale = []
        for row_id, device_pk, seq, _stage in keys:
            if rows.get(row_id, (None,))[0] == seq:
                continue
            got = primed.get(device_pk)
            if got is not None and got[0] == seq:
                fresh[row_id] = got
            else:
                stale.append(row_id)
        for i in range(0, len(stale), self.FETCH):
            for row_id, seq, summary in store.quality_summaries(session, stale[i:i + self.FETCH]):
                _own_seq, counts, line, baseline = _parsed_summary(QualitySummary.from_dict(summary))
                fresh[row_id] = (seq, counts, line, baseline)  # (the row's seq: the one ``keys`` compare)
                self.rows_read += 1
        with self._lock:
            if self._held + len(fresh) > self.MAX_ROWS:
                self._totals.clear()
                self._held = 0
            totals = self._totals.get(at)
            if totals is None:
                totals = self._totals[at] = _Totals(kind, rollout_id, candidate_version)
            before = len(totals.rows)
            per = self._primed.get(at)
            if per:  # what the stored rows hold now or newer is of no more use (a newer one waits its turn)
                for _row_id, device_pk, seq, _stage in keys:
                    got = per.get(device_pk)
                    if got is not None and got[0] <= seq:
                        del per[device_pk]
                        self._primed_count -= 1
            seen: set[int] = set()
            for row_id, _device_pk, seq, stage in keys:
                seen.add(row_id)
                cur = totals.rows.get(row_id)
                if cur is not None and cur[0] == seq and cur[1] == stage:
                    continue
                got = fresh.get(row_id)  # (read after ``keys``: may be newer still, never older)
                if got is not None and (cur is None or got[0] > cur[0]):
                    new_seq, counts = got[0], totals.counts_of(got)
                elif cur is not None and cur[0] == seq:
                    new_seq, counts = cur[0], cur[2]  # the same summary, another stage
                else:
                    continue  # another judgement holds a newer one, or it changed again since: the next reads it
                if cur is not None:
                    totals.take(row_id)
                totals.put(row_id, new_seq, stage, counts)
            for row_id in [r for r in totals.rows if r not in seen]:  # deleted since
                totals.take(row_id)
            self._held += len(totals.rows) - before
            return {stage: Merged(t.summary.copy(), t.cars) for stage, t in totals.by_stage.items()}


_PARSED: weakref.WeakKeyDictionary[Pool, ParsedSummaries] = weakref.WeakKeyDictionary()
_PARSED_LOCK = threading.Lock()


def parsed_for(engine: Engine) -> ParsedSummaries:
    """The database's parsed summaries (one per connection pool: the read-only engine shares its writer's)."""
    with _PARSED_LOCK:
        cache = _PARSED.get(engine.pool)
        if cache is None:
            cache = _PARSED[engine.pool] = ParsedSummaries()
        return cache


def _parsed(session: Session) -> ParsedSummaries:
    bind = session.get_bind()
    return parsed_for(bind if isinstance(bind, Engine) else bind.engine)


def merged(session: Session, r: Rollout, kind: str, stages: set[int] | None = None) -> Merged:
    """Merge the rollout's stored summaries of ``kind`` for its version (of cars in ``stages``; None: all)."""
    total: QualitySummary | None = None
    cars = 0
    for stage, m in _parsed(session).by_stage(session, r.id, kind, r.target_version).items():
        if m.summary is None or (stages is not None and stage not in stages):
            continue
        total = m.summary if total is None else total.merge(m.summary)
        cars += m.cars
    return Merged(total, cars)


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return f"{metric} not measured"
    return f"{metric} {value:.4g}"


def frames_text(v: Verdict) -> str:
    return f"{int(v.values.get('frames') or 0):,} frames"


def failed_reason(where: str, v: Verdict) -> str:
    """``shadow gate agreement>=0.97 failed: agreement 0.83 on 5,210 frames``."""
    assert v.failing is not None
    return f"{where} gate {v.failing} failed: {_fmt(v.failing.metric, v.values.get(v.failing.metric))} on {frames_text(v)}"


def passed_reason(gates: list[Gate], v: Verdict) -> str:
    """``shadow gates passed: agreement 0.991 on 5,210 frames, latency_p99_ratio 1.02``."""
    named = [g.metric for g in gates if g.metric != "frames"]
    if not named:
        return f"shadow gates passed on {frames_text(v)}"
    first, rest = named[0], named[1:]
    tail = "".join(f", {_fmt(m, v.values.get(m))}" for m in dict.fromkeys(rest))
    return f"shadow gates passed: {_fmt(first, v.values.get(first))} on {frames_text(v)}{tail}"


def _figures(m: Merged) -> dict[str, Any] | None:
    if m.summary is None:
        return None
    f = m.summary.metrics()
    return {"frames": int(f["frames"] or 0), "agreement": f["agreement"], "class_shift": f["class_shift"],
            "latency_p50_ms": f["latency_p50_ms"], "latency_p99_ms": f["latency_p99_ms"],
            "baseline_latency_p99_ms": f["baseline_latency_p99_ms"], "latency_p99_ratio": f["latency_p99_ratio"],
            "confidence_mean": f["confidence_mean"], "baseline_confidence_mean": f["baseline_confidence_mean"],
            "confidence_ratio": f["confidence_ratio"], "error_rate": f["error_rate"], "cars": m.cars,
            "class_counts": {"candidate": m.summary.candidate.class_counts,
                             "baseline": m.summary.baseline.class_counts},
            # answers in classes the cars' folded summaries did not name (protocol.quality.WIRE_CLASSES)
            "class_other": {"candidate": m.summary.candidate.other, "baseline": m.summary.baseline.other}}


def note_history(session: Session, r: Rollout, now: datetime | None = None) -> None:
    """Append a point per kind whose merged figures changed since its last point (bounded)."""
    points = store.history(session, r.id)
    added = False
    for kind in KINDS:
        m = merged(session, r, kind)
        if m.summary is None:
            continue
        f = m.summary.metrics()
        point = (int(f["frames"] or 0), f["agreement"], f["latency_p99_ratio"], f["class_shift"])
        last = next((p for p in reversed(points) if p.kind == kind), None)
        if last is not None and (last.frames, last.agreement, last.latency_p99_ratio, last.class_shift) == point:
            continue
        session.add(QualityHistory(rollout_id=r.id, at=now or utcnow(), kind=kind, frames=point[0],
                                   agreement=point[1], latency_p99_ratio=point[2], class_shift=point[3]))
        added = True
    if added:
        session.flush()
        if len(points) + len(KINDS) > HISTORY_MAX:
            store.trim_history(session, r.id, HISTORY_MAX)


def describe(session: Session, r: Rollout, shadow_stage: bool, live_stages: set[int] | None) -> dict[str, Any]:
    """The ``quality`` object of ``GET /api/v1/rollouts/{id}`` (docs/PROTOCOL.md "Quality summaries")."""
    gates = gates_of(r)
    shadow, live = merged(session, r, "shadow"), merged(session, r, "live", live_stages)
    def verdict_on(m: Any) -> dict[str, Any]:
        v = judge(gates, m.summary)
        return {"passed": v.passed, "failing": str(v.failing) if v.failing else None, "describe": v.describe()}

    no_gates = {"passed": None, "failing": None, "describe": "no gates"}
    judged = shadow if shadow_stage else live
    verdict = verdict_on(judged) if gates or shadow_stage else no_gates
    return {
        "gates": list(r.gates or []),
        "shadow": dict(r.shadow) if r.shadow else None,
        "summaries": {"shadow": _figures(shadow), "live": _figures(merged(session, r, "live"))},
        # ``verdict`` judges the current stage (shadow or live); ``verdicts`` both, so that a promoted or
        # completed rollout still shows what its shadow stage proved
        "verdict": verdict,
        "verdicts": {"shadow": verdict_on(shadow) if r.shadow else None,
                     "live": verdict_on(live) if gates else no_gates},
        "history": [{"at": as_utc(p.at), "kind": p.kind, "frames": p.frames, "agreement": p.agreement,
                     "latency_p99_ratio": p.latency_p99_ratio, "class_shift": p.class_shift}
                    for p in store.history(session, r.id)],
    }
