"""protocol/quality.py: the summaries both ends merge, the plan in the offer, and the gates rollouts judge."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol.errors import MalformedMessage
from protocol.quality import (
    CONFIDENCE_BINS,
    LATENCY_BINS,
    MAX_CLASSES,
    WIRE_CLASSES,
    ModelStats,
    QualityPlan,
    QualitySummary,
    judge,
    latency_bin,
    parse_gate,
    quantile_ms,
)


def _summary(agree: int, frames: int, *, classes: int = 4, seq: int = 1) -> QualitySummary:
    s = QualitySummary("shadow", "signs", 7, 3, 2, seq=seq)
    for i in range(frames):
        s.candidate.record(i % classes, 0.9, 0.4)
        s.baseline.record(i % classes if i < agree else (i + 1) % classes, 0.8, 0.3)
    s.frames, s.agree, s.sampled = frames, agree, frames
    return s


def test_a_summary_survives_the_wire_and_merges_by_adding() -> None:
    a, b = _summary(9, 10), _summary(5, 10, seq=4)
    back = QualitySummary.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back == a
    m = a.merge(b)
    assert (m.frames, m.agree, m.seq) == (20, 14, 4)
    assert sum(m.candidate.class_counts) == 20 and m.metrics()["agreement"] == pytest.approx(0.7)


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(kind="sideways"),
    lambda d: d.update(agree=d["frames"] + 1),
    lambda d: d.update(frames=-1),
    lambda d: d.update(seq=True),
    lambda d: d["candidate"].update(classes=[[i, 1] for i in range(WIRE_CLASSES + 1)]),
    lambda d: d["candidate"].update(classes=[[MAX_CLASSES, 1]]),
    lambda d: d["candidate"].update(classes=[[2, 1], [2, 3]]),
    lambda d: d["candidate"].update(classes=[[2, -1]]),
    lambda d: d["candidate"].update(classes=[[2]]),
    lambda d: d["candidate"].update(other=-3),
    lambda d: d["candidate"].pop("classes") and d["candidate"].update(class_counts=[1] * (MAX_CLASSES + 1)),
    lambda d: d["candidate"].update(confidence=[0] * (CONFIDENCE_BINS + 1)),
    lambda d: d["baseline"].update(latency=[0.5] * LATENCY_BINS),
    lambda d: d.update(line=""),
    lambda d: d.update(rollout_id="7"),
])
def test_a_malformed_or_unbounded_summary_is_refused(mutate: Any) -> None:
    d = _summary(9, 10).to_dict()
    mutate(d)
    with pytest.raises(MalformedMessage):
        QualitySummary.from_dict(d)


def test_the_earlier_dense_class_counts_are_still_read() -> None:
    a = _summary(9, 10)
    d = a.to_dict()
    for side in ("candidate", "baseline"):
        d[side].pop("classes"), d[side].pop("other")
        d[side]["class_counts"] = getattr(a, side).class_counts
    assert QualitySummary.from_dict(d) == a


def _imagenet_summary(frames: int) -> QualitySummary:
    """A 1000-class comparison where every class is answered and every latency bin is hit (the worst shape)."""
    s = QualitySummary("shadow", "imagenet-squeezenet-with-a-long-line-name", 2**31, 2**31, 2**31 - 1, seq=2**40)
    for side in (s.candidate, s.baseline):
        side.class_counts = [frames // 1000 + i for i in range(1000)]
        side.confidence = [frames // CONFIDENCE_BINS] * CONFIDENCE_BINS
        side.latency = [frames // LATENCY_BINS] * LATENCY_BINS
        side.errors = side.nonfinite = frames // 100
    s.frames, s.agree, s.sampled, s.dropped = frames, frames - 1, frames, frames // 3
    return s


@pytest.mark.parametrize("frames", [1_000, 100_000, 9_999_999])
def test_a_summary_of_a_thousand_class_model_stays_under_2_kb_and_keeps_its_totals(frames: int) -> None:
    s = _imagenet_summary(frames)
    wire = json.dumps(s.to_dict(), separators=(",", ":"))
    assert len(wire.encode()) <= 2048, len(wire)
    back = QualitySummary.from_dict(json.loads(wire))
    for side in ("candidate", "baseline"):
        was, now = getattr(s, side), getattr(back, side)
        assert now.answered == was.answered  # nothing lost: the tail is one count
        kept = sorted(range(1000), key=lambda i: -was.class_counts[i])[:WIRE_CLASSES]
        assert all(now.class_counts[i] == was.class_counts[i] for i in kept)
        assert now.other == sum(was.class_counts) - sum(was.class_counts[i] for i in kept)
    assert back.metrics()["agreement"] == s.metrics()["agreement"]
    assert back.merge(back).candidate.other == 2 * back.candidate.other


def test_class_shift_counts_the_folded_tail_as_one_class() -> None:
    a, b = ModelStats(), ModelStats()
    a.class_counts, a.other = [10, 0], 10
    b.class_counts, b.other = [0, 10], 10
    s = QualitySummary("shadow", "signs", 1, 2, 1, candidate=a, baseline=b)
    assert s.metrics()["class_shift"] == pytest.approx(0.5)  # half of each side moved; the tails look alike


def test_latency_quantiles_come_from_the_log_bins_within_one_bin() -> None:
    stats = ModelStats()
    for ms in [0.2] * 98 + [5.0, 5.0]:
        stats.record(0, 0.5, ms)
    assert 0.2 <= stats.p(0.5) <= 0.2 * 1.3  # the bin's upper edge
    assert 5.0 <= stats.p(0.995) <= 5.0 * 1.3
    assert quantile_ms([0] * LATENCY_BINS, 0.5) is None
    assert latency_bin(float("nan")) == 0 and latency_bin(1e12) == LATENCY_BINS - 1


def test_class_counts_beyond_the_bound_fold_into_the_last() -> None:
    stats = ModelStats()
    stats.record(MAX_CLASSES + 50, 0.5, 1.0)
    assert len(stats.class_counts) == MAX_CLASSES and stats.class_counts[-1] == 1


@pytest.mark.parametrize(("text", "metric", "op", "threshold"), [
    ("agreement>=0.97", "agreement", ">=", 0.97),
    (" latency_p99_ratio <= 1.3 ", "latency_p99_ratio", "<=", 1.3),
    ("min_frames=5000", "frames", ">=", 5000.0),
    ("class_shift<0.1", "class_shift", "<", 0.1),
])
def test_gates_parse(text: str, metric: str, op: str, threshold: float) -> None:
    g = parse_gate(text)
    assert (g.metric, g.op, g.threshold) == (metric, op, threshold)
    assert parse_gate(str(g)) == g


@pytest.mark.parametrize("text", ["agreement", "agreement=0.9", "speed>=3", "agreement>=nan", "agreement>=inf",
                                  "agreement>=0.9; drop table", ""])
def test_bad_gates_are_refused_with_what_to_write(text: str) -> None:
    with pytest.raises(MalformedMessage, match="gate"):
        parse_gate(text)


def test_a_gate_fails_only_on_enough_frames_and_names_itself() -> None:
    gates = [parse_gate("agreement>=0.97"), parse_gate("min_frames=100")]
    assert judge(gates, None).passed is None
    assert judge(gates, _summary(50, 60)).passed is None  # 0.83 agreement, but only 60 frames: wait
    bad = judge(gates, _summary(83, 100))
    assert bad.passed is False and bad.failing == gates[0] and "agreement>=0.97" in bad.describe()
    good = judge(gates, _summary(99, 100))
    assert good.passed is True and good.failing is None


def test_the_plan_is_bounded() -> None:
    plan = QualityPlan("shadow", sample_every=10, max_cpu_share=0.2)
    assert QualityPlan.from_dict(plan.to_dict()) == plan
    for bad in ({"mode": "drive"}, {"mode": "shadow", "sample_every": 0}, {"mode": "live", "max_cpu_share": 2},
                {"mode": "live", "rollback_below_agreement": 1.5}, {"mode": "live", "sample_every": "x"}, []):
        with pytest.raises(MalformedMessage):
            QualityPlan.from_dict(bad)
