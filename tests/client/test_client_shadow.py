"""Shadow mode and live comparisons on the car (issue 18), with real ONNX Runtime sessions on real models.

The comparison runs the other model on sampled frames in its own thread; these tests wait for it by
polling its counts (never by timing a frame), and assert on counts: how many frames were sampled,
compared, dropped, how many agreed.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
from agent_factories import OfflineOffers, sha, zoo_model
from shadow_models import flattened, slow, swapped_classes

from client import Agent, AgentConfig
from client.hotswap import HotSwapper, LoadedModel
from client.identity import Identity, save_identity
from client.shadow import QUEUE_FRAMES
from models import zoo
from models.roadsigns import render
from protocol.canonical import canonical_json
from protocol.quality import MAX_CLASSES, QualityPlan, QualitySummary

CONTRACT = zoo.contract()
RNG = np.random.default_rng(18)
#: Frames of stop (0) and yield (1), three stops to a yield (the two classes a swapped candidate confuses,
#: unevenly, so that the swap shifts the class distribution), and frames of every class.
STOP_YIELD = [render(int(i % 4 == 3), RNG) for i in range(40)]
EVERY_CLASS = [render(i % 10, RNG) for i in range(40)]


def loaded(swapper: HotSwapper, model: bytes, version: int) -> LoadedModel:
    return swapper.load_sync(model, version=version, model_sha256=sha(model), contract=CONTRACT)


def settle(summary_of: object, timeout_s: float = 20.0) -> QualitySummary:
    """Wait until every sampled frame was compared or dropped (the comparison thread caught up)."""
    end = time.monotonic() + timeout_s
    while True:
        s = summary_of()  # type: ignore[operator]
        done = s.frames + s.dropped + s.candidate.errors + s.candidate.nonfinite + s.baseline.errors
        if done >= s.sampled or time.monotonic() > end:
            return s  # type: ignore[no-any-return]
        time.sleep(0.01)


def feed(predict: object, frames: list[np.ndarray], pace_s: float = 0.0) -> list[int]:
    versions = []
    for f in frames:
        versions.append(predict(f).version)  # type: ignore[operator]
        if pace_s:
            time.sleep(pace_s)
    return versions


# -- the comparator beside a HotSwapper -------------------------------------------------------------------


def test_the_same_model_beside_itself_agrees_on_every_compared_frame_and_counts_one_frame_in_n() -> None:
    swapper = HotSwapper()
    m1 = zoo_model(1)
    swapper.swap(loaded(swapper, m1, 1), health_window=False)
    comparator = swapper.start_comparison(loaded(swapper, m1, 2), QualityPlan("shadow", sample_every=2),
                                          kind="shadow", line="road-signs", rollout_id=5)
    assert set(feed(swapper.predict, EVERY_CLASS, pace_s=0.002)) == {1}  # the candidate never answers
    s = settle(comparator.snapshot)
    assert s.sampled == 20 and s.frames > 0 and s.frames + s.dropped == 20
    assert s.agree == s.frames and s.metrics()["agreement"] == 1.0
    assert (s.kind, s.candidate_version, s.baseline_version, s.rollout_id) == ("shadow", 2, 1, 5)
    assert s.candidate.class_counts == s.baseline.class_counts and len(s.candidate.class_counts) <= 10
    assert sum(s.candidate.latency) == s.frames and sum(s.baseline.confidence) == s.frames
    final = swapper.stop_comparison()
    assert final is not None and final.frames == s.frames and swapper.comparator is None
    assert comparator.closed and not comparator._thread.is_alive()
    assert swapper.predict(EVERY_CLASS[0]).version == 1  # the live model is untouched


def test_a_candidate_that_swaps_two_classes_disagrees_on_exactly_those_frames() -> None:
    swapper = HotSwapper()
    m1 = zoo_model(1)
    swapper.swap(loaded(swapper, m1, 1), health_window=False)
    swapper.start_comparison(loaded(swapper, swapped_classes(m1, 0, 1), 2), QualityPlan("shadow", sample_every=1),
                             kind="shadow", line="road-signs", rollout_id=5)
    answers = [swapper.predict(f) for f in STOP_YIELD[:20]]
    comparator = swapper.comparator
    assert comparator is not None
    s = settle(comparator.snapshot)
    swapper.stop_comparison()
    assert {a.version for a in answers} == {1}
    assert s.frames > 0 and s.agree < s.frames  # v1 reads these signs as stop/yield; the candidate swaps them
    live_01 = s.baseline.class_counts[0:2]
    assert s.candidate.class_counts[0:2] == live_01[::-1]  # the class-distribution shift is the swap
    assert s.metrics()["class_shift"] is not None and s.metrics()["class_shift"] > 0  # type: ignore[operator]
    again = QualitySummary.from_dict(json.loads(json.dumps(s.to_dict())))  # what goes on the wire reads back
    assert again.to_dict() == s.to_dict() and len(s.candidate.class_counts) <= min(10, MAX_CLASSES)


def test_a_slow_candidate_drops_frames_and_never_delays_or_fails_the_camera() -> None:
    swapper = HotSwapper()
    m1 = zoo_model(1)
    swapper.swap(loaded(swapper, m1, 1), health_window=False)
    comparator = swapper.start_comparison(loaded(swapper, slow(m1), 2),
                                          QualityPlan("shadow", sample_every=1, max_cpu_share=0.05),
                                          kind="shadow", line="road-signs", rollout_id=None)
    versions = feed(swapper.predict, EVERY_CLASS * 3)  # as fast as the live model answers: ~40x the candidate
    s = comparator.snapshot()
    assert versions == [1] * 120  # every frame answered by the live model
    assert s.sampled == 120 and s.dropped > 0  # a full queue or the CPU budget dropped frames, none waited
    assert s.sampled - s.frames - s.dropped <= QUEUE_FRAMES + 1  # at most the queue and one in flight are pending
    final = swapper.stop_comparison()
    assert final is not None and final.dropped >= s.dropped and final.candidate.errors == 0


def test_a_candidate_that_cannot_run_the_frame_counts_errors_and_the_camera_never_sees_them() -> None:
    swapper = HotSwapper()
    m1 = zoo_model(1)
    swapper.swap(loaded(swapper, m1, 1), health_window=False)
    candidate = loaded(swapper, m1, 2)
    # a contract that does not fit the session (32x32 frames into a 64x64 model): every run fails in ONNX Runtime
    broken = LoadedModel(candidate.session, 2, candidate.model_sha256,
                         CONTRACT.__class__.from_dict({**CONTRACT.to_dict(), "height": 32, "width": 32}))
    comparator = swapper.start_comparison(broken, QualityPlan("shadow", sample_every=1), kind="shadow",
                                          line="road-signs", rollout_id=None)
    assert set(feed(swapper.predict, EVERY_CLASS[:10], pace_s=0.002)) == {1}
    s = settle(comparator.snapshot)
    swapper.stop_comparison()
    assert s.candidate.errors > 0 and s.frames == 0 and s.metrics()["error_rate"] == 1.0


# -- the agent: shadow offers, promotion, restart, live comparison ----------------------------------------


def make_agent(state: Path, offers_key: OfflineOffers | None = None, **cfg: object) -> tuple[Agent, OfflineOffers]:
    agent = Agent(AgentConfig(server_url="http://offline.invalid", device_id="car-1", state_dir=state,
                              **cfg))  # type: ignore[arg-type]
    offers = offers_key or OfflineOffers(agent.store.downloads_dir)
    offers.downloads = agent.store.downloads_dir
    save_identity(state / "identity.json", Identity("car-1", "token", offers.pub, sha(offers.pub)))
    asyncio.run(agent.start())
    return agent, offers


def shadow_plan(**kw: object) -> dict[str, object]:
    return QualityPlan("shadow", **{"sample_every": 1, "report_every_s": 1.0, **kw}).to_dict()  # type: ignore[arg-type]


def states(agent: Agent, target: int) -> list[str]:
    return [r["state"] for r in agent.journal.outbox if r["target_version"] == target]


def test_a_shadow_offer_verifies_and_compares_but_never_swaps_and_the_live_offer_installs_without_download(
        tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    m1, m2 = zoo_model(1), zoo_model(2)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, rollout_id=9, quality=shadow_plan())))
    j = agent.store.load()
    assert agent.running_version == 1 and j.active.version == 1 and j.shadow is not None  # type: ignore[union-attr]
    assert j.shadow.version == 2 and states(agent, 2) == ["downloading", "downloaded", "verified"]
    assert agent.store.verify(j.shadow) and j.shadow.slot not in (j.active.slot, j.previous)  # type: ignore[union-attr]
    assert set(feed(agent.predict, EVERY_CLASS[:20], pace_s=0.002)) == {1}
    assert agent.swapper.comparator is not None  # type: ignore[attr-defined]
    s = settle(agent.swapper.comparator.snapshot)  # type: ignore[attr-defined]
    assert s.frames > 0 and (s.candidate_version, s.baseline_version) == (2, 1)
    agent._quality_due = 0.0
    asyncio.run(agent.report_quality(flush=False))
    queued = agent.store.load().quality
    assert len(queued) == 1 and queued[0]["kind"] == "shadow" and queued[0]["frames"] == s.frames
    assert queued[0]["seq"] > max(r["seq"] for r in agent.journal.outbox)  # the journal's one counter
    feed(agent.predict, EVERY_CLASS[:5], pace_s=0.002)
    settle(agent.swapper.comparator.snapshot)  # type: ignore[attr-defined]

    # the rollout promotes: the same version, no shadow plan, and no package to download (offline anyway)
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, rollout_id=9, place_package=False)))
    assert agent.running_version == 2 and agent.predict(EVERY_CLASS[0]).version == 2
    assert states(agent, 2) == ["downloading", "downloaded", "verified", "installed"]
    installed = agent.journal.outbox[-1]
    assert installed["bytes_received"] == 0 and installed["artifact"] is None
    j = agent.store.load()
    assert j.shadow is None and j.active.version == 2 and j.previous.version == 1  # type: ignore[union-attr]
    assert agent.swapper.comparator is None  # type: ignore[attr-defined]
    final = [q for q in j.quality if q["kind"] == "shadow"]
    assert len(final) == 1 and final[0]["seq"] > queued[0]["seq"]  # the final summary replaced the earlier one


def test_a_restart_while_shadowing_boots_the_live_model_and_resumes_the_summary_with_a_higher_seq(
        tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    m1, m2 = zoo_model(1), zoo_model(2)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, rollout_id=9, quality=shadow_plan())))
    feed(agent.predict, EVERY_CLASS[:10], pace_s=0.002)
    before = settle(agent.swapper.comparator.snapshot)  # type: ignore[attr-defined]
    agent._quality_due = 0.0
    asyncio.run(agent.report_quality(flush=False))
    seq = agent.journal.quality[0]["seq"]
    agent.swapper.stop_comparison()  # type: ignore[attr-defined]  # the process dies; only the disk remains

    again, _ = make_agent(tmp_path, offers)
    assert again.running_version == 1 and again.predict(EVERY_CLASS[0]).version == 1  # never the candidate
    assert again.journal.shadow is not None and again.journal.quality[0]["seq"] == seq  # still queued to send
    n = len(again.journal.outbox)
    asyncio.run(again.handle_offer(offers.offer(m2, 2, rollout_id=9, quality=shadow_plan(), place_package=False)))
    assert len(again.journal.outbox) == n and again.running_version == 1  # no report repeated, no download
    feed(again.predict, EVERY_CLASS[:10], pace_s=0.002)
    after = settle(again.swapper.comparator.snapshot)  # type: ignore[attr-defined]
    assert after.frames > before.frames and after.sampled == before.sampled + 10  # the same cumulative summary
    again._quality_due = 0.0
    asyncio.run(again.report_quality(flush=False))
    assert again.journal.quality[0]["seq"] > seq and again.journal.quality[0]["frames"] == after.frames


def test_another_version_or_no_offer_ends_the_shadow_and_frees_the_candidate(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    m1, m2, m3 = zoo_model(1), zoo_model(2), zoo_model(3)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, rollout_id=9, quality=shadow_plan())))
    first = agent.journal.shadow
    comparator = agent.swapper.comparator  # type: ignore[attr-defined]
    assert first is not None and comparator is not None
    asyncio.run(agent.handle_offer(offers.offer(m3, 3, rollout_id=10, quality=shadow_plan())))
    assert comparator.closed and agent.journal.shadow is not None and agent.journal.shadow.version == 3
    assert agent.swapper.comparator.beside_version == 3  # type: ignore[attr-defined]
    assert agent.running_version == 1
    agent._end_shadow("no offer")  # what poll_once does when the registry has no offer for the car
    j = agent.store.load()
    assert j.shadow is None and agent.swapper.comparator is None  # type: ignore[attr-defined]
    for slot in ("a", "b", "c"):
        if slot != j.active.slot:  # type: ignore[union-attr]
            assert not (agent.store.slot_dir(slot) / "model.onnx").exists()


def test_a_live_plan_rolls_back_a_version_that_disagrees_with_the_previous_one(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path, health_window_inferences=5)
    m1 = zoo_model(1)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    live = QualityPlan("live", sample_every=1, rollback_below_agreement=0.9, min_frames=10).to_dict()
    asyncio.run(agent.handle_offer(offers.offer(swapped_classes(m1, 0, 1), 2, rollout_id=11, quality=live)))
    assert agent.running_version == 2
    comparator = agent.swapper.comparator  # type: ignore[attr-defined]
    assert comparator is not None and comparator.kind == "live" and comparator.beside_version == 1
    assert asyncio.run(agent.check_health()) is None  # no frames compared yet: the window waits for them
    while comparator.snapshot().frames < 10:
        feed(agent.predict, STOP_YIELD[:10], pace_s=0.002)  # a car that sees stop and yield signs
        settle(comparator.snapshot)
    assert asyncio.run(agent.check_health()) is False
    assert agent.running_version == 1 and agent.predict(STOP_YIELD[0]).version == 1
    last = agent.journal.outbox[-1]
    assert last["state"] == "rolled_back" and last["target_version"] == 2
    assert last["reason"].startswith("live comparison: agreement ") and "with v1 on" in last["reason"]
    assert "below 0.9" in last["reason"]
    summary = [q for q in agent.store.load().quality if q["kind"] == "live"]
    assert len(summary) == 1 and summary[0]["candidate_version"] == 2 and summary[0]["baseline_version"] == 1
    assert agent.swapper.comparator is None  # type: ignore[attr-defined]


def test_a_live_plan_rolls_back_a_version_whose_confidence_collapses_with_the_same_answers(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path, health_window_inferences=5)
    m1 = zoo_model(1)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    live = QualityPlan("live", sample_every=1, rollback_below_agreement=0.9, min_frames=10).to_dict()
    asyncio.run(agent.handle_offer(offers.offer(flattened(m1), 2, rollout_id=11, quality=live)))
    comparator = agent.swapper.comparator  # type: ignore[attr-defined]
    while comparator.snapshot().frames < 10:
        feed(agent.predict, STOP_YIELD[:10], pace_s=0.002)
        settle(comparator.snapshot)
    s = comparator.snapshot()
    assert s.agree == s.frames  # every answer the same: only the confidence rule can see it
    assert asyncio.run(agent.check_health()) is False
    assert agent.running_version == 1
    reason = agent.journal.outbox[-1]["reason"]
    assert "confidence collapse" in reason and "that of v1" in reason


def test_a_live_plan_keeps_a_version_that_agrees_and_closes_the_window(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path, health_window_inferences=5)
    m1 = zoo_model(1)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    live = QualityPlan("live", sample_every=1, rollback_below_agreement=0.9, min_frames=5).to_dict()
    # swaps two classes the car never sees: it agrees on every frame it meets
    asyncio.run(agent.handle_offer(offers.offer(swapped_classes(m1, 3, 4), 2, rollout_id=11, quality=live)))
    comparator = agent.swapper.comparator  # type: ignore[attr-defined]
    while comparator.snapshot().frames < 5:
        feed(agent.predict, STOP_YIELD[:10], pace_s=0.002)  # stop and yield: classes 3 and 4 never show
        settle(comparator.snapshot)
    assert asyncio.run(agent.check_health()) is True
    assert agent.running_version == 2 and agent.swapper.fallback is None  # type: ignore[attr-defined]
    assert [q["kind"] for q in agent.journal.quality] == ["live"]


@pytest.mark.parametrize("mode", ["shadow"])
def test_summaries_stay_bounded_one_per_comparison(tmp_path: Path, mode: str) -> None:
    from client import reports

    agent, _ = make_agent(tmp_path)
    for i in range(40):
        s = QualitySummary(kind=mode, line="road-signs", rollout_id=i % 20, candidate_version=2, baseline_version=1,
                           frames=i)
        reports.queue_quality(agent.journal, s)
    assert len(agent.journal.quality) == 16  # MAX_SUMMARIES: one request carries them all
    assert len({q["rollout_id"] for q in agent.journal.quality}) == 16
    before = agent.journal.next_seq
    reports.queue_quality(agent.journal, QualitySummary.from_dict({**agent.journal.quality[-1], "seq": 0}))
    assert agent.journal.next_seq == before  # nothing new: no seq spent, nothing re-queued


# -- a model we did not train ------------------------------------------------------------------------------


def test_the_real_imagenet_squeezenet_shadowed_by_a_class_swapping_copy_disagrees_only_on_those_classes() -> None:
    """The real ImageNet SqueezeNet 1.0 (Caffe BGR preprocessing, 227 px, a Softmax output) beside a copy
    that swaps its top class on natural photos with another: the comparison uses the line's own contract and
    counts exactly the frames the live model puts in the swapped class as disagreements."""
    from models.imagenet_line import imagenet_contract, imagenet_path
    from models.probes import natural_crops

    contract = imagenet_contract()
    source = imagenet_path().read_bytes()
    photos = list(natural_crops(24, seed=5))
    swapper = HotSwapper()
    live = swapper.load_sync(source, version=1, model_sha256=sha(source), contract=contract)
    swapper.swap(live, health_window=False)
    answers = [swapper.predict(p).index for p in photos]
    top = max(set(answers), key=answers.count)
    other = (top + 1) % 1000
    candidate_bytes = swapped_classes(source, top, other, classes=1000)
    candidate = swapper.load_sync(candidate_bytes, version=2, model_sha256=sha(candidate_bytes), contract=contract)
    comparator = swapper.start_comparison(candidate, QualityPlan("shadow", sample_every=1, max_cpu_share=1.0),
                                          kind="shadow", line="imagenet", rollout_id=3)
    for p in photos:
        assert swapper.predict(p).version == 1  # the camera only ever sees the live model
        settle(comparator.snapshot)  # one at a time: the queue never drops a photo
    s = swapper.stop_comparison()
    assert s is not None and s.frames == len(photos) and s.dropped == 0
    assert s.frames - s.agree == answers.count(top) > 0
    assert len(s.candidate.class_counts) == len(s.baseline.class_counts) == 1000
    assert s.candidate.class_counts[other] == s.baseline.class_counts[top] == answers.count(top)
    # what the car sends of it (one queued summary) stays under issue 18's 2 KB, 1000 classes or not
    wire = canonical_json(s.to_dict())
    assert len(wire) <= 2048, len(wire)
    assert QualitySummary.from_dict(json.loads(wire)).metrics()["class_shift"] == s.metrics()["class_shift"]
