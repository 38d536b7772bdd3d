"""Model-quality telemetry: what a car learns by running two versions of a model on the same live frames.

Shadow mode (issue 18): a car in a rollout's shadow stage loads the candidate version beside the live
one without swapping, runs it on a sample of live frames off the camera's critical path, and keeps a
:class:`QualitySummary` of both: top-1 agreement, per-class counts, confidence and latency histograms,
errors.  After a live swap the car does the same the other way round during its health window (the new
version drives, the previous one runs on a sample of frames), so a version that installs fine and answers
wrong is caught.  No image leaves the car; a summary's size is bounded by the line's class count.

Summaries are **cumulative and mergeable**: a car re-sends its latest summary with a higher ``seq``, the
registry keeps the one with the highest ``seq`` per (device, rollout, version, kind) (a lost or re-sent
one does no harm), and a rollout's figures are the :meth:`QualitySummary.merge` of its cars'.  Gates
(:class:`Gate`) are judged on merged summaries.

This module is the value and its arithmetic only, shared by the car (which fills it), the registry
(which stores, merges and judges it) and the CLI (which parses gates).  Wire shape: docs/PROTOCOL.md,
"Quality summaries".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from protocol.errors import MalformedMessage

#: Kinds of comparison: ``shadow`` (the candidate beside the live model, not driving) and ``live`` (the
#: new version driving during its health window, the previous version beside it).
KINDS = ("shadow", "live")
#: Confidence (the top-1 probability) histogram: ten bins over [0, 1].
CONFIDENCE_BINS = 10
#: Latency histogram: log-spaced upper edges in milliseconds (0.05 ms x 1.3^k), plus one overflow bin.
LATENCY_EDGES_MS: tuple[float, ...] = tuple(0.05 * 1.3 ** k for k in range(48))
LATENCY_BINS = len(LATENCY_EDGES_MS) + 1
#: Class-count vectors longer than this are refused (a line with more classes folds the rest into the last).
MAX_CLASSES = 1024
#: A summary on the wire names at most this many classes per side (the most answered); the rest travel as one
#: ``other`` count.  A 1000-class model's dense counts alone were 4 KB a summary; this keeps a whole summary
#: under 2 KB (issue 18's telemetry figure) for any class count.
WIRE_CLASSES = 24
#: Live plans: the new version is also rolled back when its mean top-1 confidence on the compared frames falls
#: below this share of the previous version's on the same frames (a confidence collapse that keeps the top-1).
CONFIDENCE_COLLAPSE_RATIO = 0.5
#: Summaries one report request may carry.
MAX_SUMMARIES = 16
MAX_COUNT = 2**53  # a JSON number both ends read exactly


def latency_bin(ms: float) -> int:
    """The latency histogram bin of ``ms`` milliseconds."""
    if not ms > 0:
        return 0
    k = math.ceil(math.log(ms / 0.05, 1.3) - 1e-9) if ms > 0.05 else 0
    return min(max(k, 0), LATENCY_BINS - 1)


def quantile_ms(hist: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, as its bin's upper edge (None when empty).

    The overflow bin answers twice the last edge: "slower than we measure", never a made-up number.
    """
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank and n:
            return LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else 2 * LATENCY_EDGES_MS[-1]
    return 2 * LATENCY_EDGES_MS[-1]


def _counts(value: Any, where: str, length: int | None = None, max_length: int = MAX_CLASSES) -> list[int]:
    if not isinstance(value, list) or len(value) > max_length or (length is not None and len(value) != length):
        want = f"{length} counts" if length is not None else f"at most {max_length} counts"
        raise MalformedMessage(f"{where} must be a list of {want}")
    for x in value:
        if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < MAX_COUNT:
            raise MalformedMessage(f"{where} holds {x!r}: counts are non-negative integers")
    return list(value)


def _count(d: dict[str, Any], name: str, where: str) -> int:
    x = d.get(name)
    if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < MAX_COUNT:
        raise MalformedMessage(f"{where}.{name} must be a non-negative integer, got {x!r}")
    return x


def _add(a: list[int], b: list[int]) -> list[int]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


@dataclass
class ModelStats:
    """One model's side of a comparison: what it answered and how fast."""

    class_counts: list[int] = field(default_factory=list)  # top-1 answers per class index
    confidence: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    latency: list[int] = field(default_factory=lambda: [0] * LATENCY_BINS)
    errors: int = 0  # the model raised
    nonfinite: int = 0  # the model answered NaN or infinity
    other: int = 0  # top-1 answers in classes a folded summary no longer names (see WIRE_CLASSES)

    def record(self, top1: int, confidence: float, latency_ms: float) -> None:
        """Count one answer: its top-1 class, the top-1 probability and how long it took."""
        if top1 >= MAX_CLASSES:
            top1 = MAX_CLASSES - 1
        if top1 >= len(self.class_counts):
            self.class_counts.extend([0] * (top1 + 1 - len(self.class_counts)))
        self.class_counts[top1] += 1
        b = min(CONFIDENCE_BINS - 1, max(0, int(confidence * CONFIDENCE_BINS))) if math.isfinite(confidence) else 0
        self.confidence[b] += 1
        self.latency[latency_bin(latency_ms)] += 1

    def merge(self, other: ModelStats) -> ModelStats:
        return ModelStats(_add(self.class_counts, other.class_counts), _add(self.confidence, other.confidence),
                          _add(self.latency, other.latency), self.errors + other.errors,
                          self.nonfinite + other.nonfinite, self.other + other.other)

    @property
    def answered(self) -> int:
        return sum(self.class_counts) + self.other

    def p(self, q: float) -> float | None:
        """Latency quantile in ms (bin upper edge)."""
        return quantile_ms(self.latency, q)

    def mean_confidence(self) -> float | None:
        n = sum(self.confidence)
        if not n:
            return None
        return sum((i + 0.5) / CONFIDENCE_BINS * c for i, c in enumerate(self.confidence)) / n

    def top_classes(self, k: int = WIRE_CLASSES) -> tuple[list[list[int]], int]:
        """The ``k`` most answered classes as ``[index, count]`` pairs (most first, then by index) and the
        answers of every other class summed."""
        named = sorted(((n, i) for i, n in enumerate(self.class_counts) if n), key=lambda t: (-t[0], t[1]))
        kept, rest = named[:k], named[k:]
        return [[i, n] for n, i in kept], self.other + sum(n for n, _ in rest)

    def to_dict(self) -> dict[str, Any]:
        classes, other = self.top_classes()
        return {"classes": classes, "other": other, "confidence": self.confidence, "latency": self.latency,
                "errors": self.errors, "nonfinite": self.nonfinite}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ModelStats:
        """Read one side; ``classes`` pairs (this format) or a dense ``class_counts`` list (cars and stored
        summaries from before the folded format)."""
        if not isinstance(d, dict):
            raise MalformedMessage(f"{where} is not an object")
        if "classes" in d:
            counts, other = _pairs(d.get("classes"), f"{where}.classes"), _count(d, "other", where)
        else:
            counts, other = _counts(d.get("class_counts"), f"{where}.class_counts"), 0
        return cls(class_counts=counts,
                   confidence=_counts(d.get("confidence"), f"{where}.confidence", CONFIDENCE_BINS),
                   latency=_counts(d.get("latency"), f"{where}.latency", LATENCY_BINS),
                   errors=_count(d, "errors", where), nonfinite=_count(d, "nonfinite", where), other=other)


def _pairs(value: Any, where: str) -> list[int]:
    """``[[index, count], ...]`` (distinct indexes below MAX_CLASSES, at most WIRE_CLASSES pairs) as dense counts."""
    if not isinstance(value, list) or len(value) > WIRE_CLASSES:
        raise MalformedMessage(f"{where} must be a list of at most {WIRE_CLASSES} [class index, count] pairs")
    dense: list[int] = []
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise MalformedMessage(f"{where} holds {pair!r}: each entry is a [class index, count] pair")
        i, n = pair
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < MAX_CLASSES:
            raise MalformedMessage(f"{where} names class {i!r}: indexes are 0..{MAX_CLASSES - 1}")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < MAX_COUNT:
            raise MalformedMessage(f"{where} holds count {n!r}: counts are non-negative integers")
        if i >= len(dense):
            dense.extend([0] * (i + 1 - len(dense)))
        elif dense[i]:
            raise MalformedMessage(f"{where} names class {i} twice")
        dense[i] = n
    return dense


@dataclass
class QualitySummary:
    """A car's cumulative comparison of ``candidate_version`` against ``baseline_version`` on live frames.

    ``kind`` ``shadow``: the candidate ran beside the live (baseline) model without driving.  ``live``: the
    candidate drove (installed, in its health window) and the baseline, the version it replaced, ran beside.
    """

    kind: str
    line: str
    rollout_id: int | None
    candidate_version: int
    baseline_version: int
    seq: int = 0  # per device, increases with every summary the car sends (idempotence)
    frames: int = 0  # frames both models answered (finite)
    agree: int = 0  # of those, frames with the same top-1 class
    sampled: int = 0  # frames chosen for comparison (including those dropped)
    dropped: int = 0  # chosen but skipped: the comparison was busy or over its CPU budget
    candidate: ModelStats = field(default_factory=ModelStats)
    baseline: ModelStats = field(default_factory=ModelStats)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MalformedMessage(f"quality.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    # -- arithmetic -------------------------------------------------------------------------------------
    def merge(self, other: QualitySummary) -> QualitySummary:
        """The two summaries' sum (for a rollout's figures across cars; ``seq`` is meaningless there)."""
        return QualitySummary(
            kind=self.kind, line=self.line, rollout_id=self.rollout_id, candidate_version=self.candidate_version,
            baseline_version=self.baseline_version, seq=max(self.seq, other.seq), frames=self.frames + other.frames,
            agree=self.agree + other.agree, sampled=self.sampled + other.sampled,
            dropped=self.dropped + other.dropped, candidate=self.candidate.merge(other.candidate),
            baseline=self.baseline.merge(other.baseline))

    def copy(self) -> QualitySummary:
        """An independent copy (its counts can be added to without touching this one)."""
        def side(m: ModelStats) -> ModelStats:
            return ModelStats(list(m.class_counts), list(m.confidence), list(m.latency), m.errors, m.nonfinite,
                              m.other)

        return replace(self, candidate=side(self.candidate), baseline=side(self.baseline))

    def metrics(self) -> dict[str, float | None]:
        """The figures gates and dashboards use (None where there is nothing to measure yet)."""
        cand_p99, base_p99 = self.candidate.p(0.99), self.baseline.p(0.99)
        cand_p50, base_p50 = self.candidate.p(0.5), self.baseline.p(0.5)
        cand_conf, base_conf = self.candidate.mean_confidence(), self.baseline.mean_confidence()
        tried = self.frames + self.candidate.errors + self.candidate.nonfinite
        return {
            "frames": float(self.frames),
            "agreement": self.agree / self.frames if self.frames else None,
            "class_shift": class_shift(self.candidate.class_counts, self.baseline.class_counts,
                                       self.candidate.other, self.baseline.other),
            "latency_p50_ms": cand_p50, "latency_p99_ms": cand_p99,
            "baseline_latency_p50_ms": base_p50, "baseline_latency_p99_ms": base_p99,
            "latency_p99_ratio": cand_p99 / base_p99 if cand_p99 and base_p99 else None,
            "confidence_mean": cand_conf, "baseline_confidence_mean": base_conf,
            "confidence_ratio": cand_conf / base_conf if cand_conf and base_conf else None,
            "error_rate": (self.candidate.errors + self.candidate.nonfinite) / tried if tried else None,
        }

    # -- wire -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "line": self.line, "rollout_id": self.rollout_id,
                "candidate_version": self.candidate_version, "baseline_version": self.baseline_version,
                "seq": self.seq, "frames": self.frames, "agree": self.agree, "sampled": self.sampled,
                "dropped": self.dropped, "candidate": self.candidate.to_dict(), "baseline": self.baseline.to_dict()}

    @classmethod
    def from_dict(cls, d: Any) -> QualitySummary:
        """Read and bound-check a summary from the wire.

        Raises:
            MalformedMessage: a missing or mistyped field, a count out of range, more agreements than frames.
        """
        where = "quality"
        if not isinstance(d, dict):
            raise MalformedMessage(f"{where} is not an object")
        line = d.get("line")
        if not isinstance(line, str) or not 0 < len(line) <= 128:
            raise MalformedMessage(f"{where}.line must be a line name, got {line!r}")
        rollout_id = d.get("rollout_id")
        if rollout_id is not None and (not isinstance(rollout_id, int) or isinstance(rollout_id, bool)):
            raise MalformedMessage(f"{where}.rollout_id must be an integer or null, got {rollout_id!r}")
        s = cls(kind=str(d.get("kind")), line=line, rollout_id=rollout_id,
                candidate_version=_count(d, "candidate_version", where),
                baseline_version=_count(d, "baseline_version", where), seq=_count(d, "seq", where),
                frames=_count(d, "frames", where), agree=_count(d, "agree", where),
                sampled=_count(d, "sampled", where), dropped=_count(d, "dropped", where),
                candidate=ModelStats.from_dict(d.get("candidate"), f"{where}.candidate"),
                baseline=ModelStats.from_dict(d.get("baseline"), f"{where}.baseline"))
        if s.agree > s.frames:
            raise MalformedMessage(f"{where}.agree ({s.agree}) exceeds {where}.frames ({s.frames})")
        return s


def class_shift(a: list[int], b: list[int], other_a: int = 0, other_b: int = 0) -> float | None:
    """Total variation distance between two class distributions (0: the same, 1: disjoint); None if empty.

    Folded answers (``other_*``) count as one more class: a shift inside the folded tail is not seen, so a
    folded figure is at most the true one.
    """
    ta, tb = sum(a) + other_a, sum(b) + other_b
    if not ta or not tb:
        return None
    n = max(len(a), len(b))
    named = sum(abs((a[i] if i < len(a) else 0) / ta - (b[i] if i < len(b) else 0) / tb) for i in range(n))
    return 0.5 * (named + abs(other_a / ta - other_b / tb))


# -- plans (in the signed offer) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class QualityPlan:
    """What the registry asks of a car about comparing versions (the offer's ``quality`` field).

    ``mode`` ``shadow``: verify and load the offered version beside the live one, do not swap, compare.
    ``mode`` ``live``: install as usual, and during the health window compare against the previous version.
    ``sample_every``: compare one frame in this many.  ``max_cpu_share``: the comparison's share of one
    core, above which sampled frames are dropped (never delayed).  ``report_every_s``: how often the car
    sends its cumulative summary.  ``rollback_below_agreement`` (``live`` mode only): the car rolls the new
    version back when, after at least ``min_frames`` compared frames in its health window, its top-1
    agreement with the previous version is below this, or its mean confidence is below
    ``CONFIDENCE_COLLAPSE_RATIO`` of the previous version's (None: only the NaN/error rule rolls back).
    """

    mode: str
    sample_every: int = 10
    max_cpu_share: float = 0.25
    report_every_s: float = 30.0
    rollback_below_agreement: float | None = None
    min_frames: int = 20

    def __post_init__(self) -> None:
        if self.mode not in KINDS:
            raise MalformedMessage(f"offer.quality.mode must be one of {', '.join(KINDS)}, got {self.mode!r}")
        if not 1 <= self.sample_every <= 10_000:
            raise MalformedMessage(f"offer.quality.sample_every must be 1..10000, got {self.sample_every}")
        if not 0 < self.max_cpu_share <= 1:
            raise MalformedMessage(f"offer.quality.max_cpu_share must be in (0, 1], got {self.max_cpu_share}")
        if not 1 <= self.report_every_s <= 86_400:
            raise MalformedMessage(f"offer.quality.report_every_s must be 1..86400, got {self.report_every_s}")
        if self.rollback_below_agreement is not None and not 0 <= self.rollback_below_agreement <= 1:
            raise MalformedMessage("offer.quality.rollback_below_agreement must be in [0, 1] or null")
        if not 1 <= self.min_frames <= 1_000_000:
            raise MalformedMessage(f"offer.quality.min_frames must be 1..1000000, got {self.min_frames}")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "sample_every": self.sample_every, "max_cpu_share": self.max_cpu_share,
                "report_every_s": self.report_every_s, "rollback_below_agreement": self.rollback_below_agreement,
                "min_frames": self.min_frames}

    @classmethod
    def from_dict(cls, d: Any) -> QualityPlan:
        if not isinstance(d, dict):
            raise MalformedMessage("offer.quality is not an object")
        try:
            return cls(mode=str(d.get("mode")), sample_every=int(d.get("sample_every", 10)),
                       max_cpu_share=float(d.get("max_cpu_share", 0.25)),
                       report_every_s=float(d.get("report_every_s", 30.0)),
                       rollback_below_agreement=(None if d.get("rollback_below_agreement") is None
                                                 else float(d["rollback_below_agreement"])),
                       min_frames=int(d.get("min_frames", 20)))
        except (TypeError, ValueError) as e:
            raise MalformedMessage(f"offer.quality: {e}") from e


# -- gates (rollouts) ---------------------------------------------------------------------------------------
#: Metrics a gate may name; ``min_frames=N`` is ``frames>=N``.
GATE_METRICS = ("agreement", "class_shift", "latency_p99_ratio", "confidence_ratio", "error_rate", "frames")
_OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, ">": lambda v, t: v > t, "<": lambda v, t: v < t}
_GATE = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|>|<|=)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Gate:
    """One condition on a rollout's merged quality figures, e.g. ``agreement>=0.97``."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "op": self.op, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: Any) -> Gate:
        if not isinstance(d, dict):
            raise MalformedMessage("a gate is not an object")
        return parse_gate(f"{d.get('metric')}{d.get('op')}{d.get('threshold')}")

    def judge(self, metrics: dict[str, float | None]) -> bool | None:
        """True/False when the metric is measured, None when there is nothing to judge yet."""
        value = metrics.get(self.metric)
        return None if value is None else bool(_OPS[self.op](value, self.threshold))


def parse_gate(text: str) -> Gate:
    """``agreement>=0.97``, ``latency_p99_ratio<=1.3``, ``min_frames=5000`` (the same as ``frames>=5000``).

    Raises:
        MalformedMessage: an unknown metric or operator, or a threshold that is not a finite number.
    """
    m = _GATE.match(text or "")
    if not m:
        raise MalformedMessage(f"gate {text!r} is not METRIC OP NUMBER (e.g. agreement>=0.97, min_frames=5000)")
    metric, op, raw = m.groups()
    if metric == "min_frames" and op in ("=", ">="):
        metric, op = "frames", ">="
    if metric not in GATE_METRICS:
        raise MalformedMessage(f"gate {text!r}: unknown metric {metric!r}; one of {', '.join(GATE_METRICS)}, "
                               f"or min_frames=N")
    if op not in _OPS:
        raise MalformedMessage(f"gate {text!r}: use >=, <=, > or < (only min_frames takes =)")
    try:
        threshold = float(raw)
    except ValueError as e:
        raise MalformedMessage(f"gate {text!r}: {raw!r} is not a number") from e
    if not math.isfinite(threshold):
        raise MalformedMessage(f"gate {text!r}: the threshold must be finite")
    return Gate(metric, op, threshold)


@dataclass(frozen=True)
class Verdict:
    """Gates judged on merged figures: ``passed`` True (every gate holds on enough frames), False (a gate
    fails on enough frames: ``failing`` names it), None (not enough frames yet, or a metric not measured)."""

    passed: bool | None
    failing: Gate | None
    values: dict[str, float | None]

    def describe(self) -> str:
        if self.failing is not None:
            return f"gate {self.failing} failed: {self.failing.metric} = {_fmt(self.values.get(self.failing.metric))}"
        return "every gate passed" if self.passed else "waiting for enough frames"


def _fmt(v: float | None) -> str:
    return "not measured" if v is None else f"{v:.4g}"


def judge(gates: list[Gate], summary: QualitySummary | None) -> Verdict:
    """Judge ``gates`` on ``summary``: a gate can fail only once every ``frames`` gate is met (enough evidence)."""
    metrics: dict[str, float | None] = summary.metrics() if summary is not None else {"frames": 0.0}
    enough = all(g.judge(metrics) for g in gates if g.metric == "frames")
    if not enough:
        return Verdict(None, None, metrics)
    for g in gates:
        if g.metric != "frames" and g.judge(metrics) is False:
            return Verdict(False, g, metrics)
    undecided = any(g.judge(metrics) is None for g in gates)
    return Verdict(None if undecided else True, None, metrics)
