"""client/shadowproc.py: a comparison whose beside model runs in a child process (real processes, real ONNX
Runtime sessions, real shared memory).  What it counts must be what the in-process comparison counts, and
nothing the child does (freeze, die) may delay or fail the camera."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from agent_factories import sha, zoo_model
from shadow_models import swapped_classes
from test_client_shadow import CONTRACT, EVERY_CLASS, STOP_YIELD, settle

from client import shadowproc
from client.hotswap import HotSwapper, LoadedModel
from client.shadowproc import ProcessComparator
from protocol.contract import InputContract
from protocol.quality import QualityPlan, QualitySummary


def _swapper(runner: str, live: bytes) -> HotSwapper:
    sw = HotSwapper(comparisons=runner)
    sw.swap(sw.load_sync(live, version=1, model_sha256=sha(live), contract=CONTRACT), health_window=False)
    return sw


def _start(sw: HotSwapper, beside: bytes, every: int = 1, contract: InputContract = CONTRACT) -> object:
    loaded: LoadedModel = sw.load_sync(beside, version=2, model_sha256=sha(beside), contract=contract)
    c = sw.start_comparison(loaded, QualityPlan("shadow", sample_every=every, max_cpu_share=1.0), kind="shadow",
                            line="road-signs", rollout_id=4)
    if isinstance(c, ProcessComparator):
        assert c.wait_ready()
    return c


def _one_at_a_time(sw: HotSwapper, frames: list[np.ndarray]) -> QualitySummary:
    comparator = sw.comparator
    assert comparator is not None
    for f in frames:
        assert sw.predict(f).version == 1
        settle(comparator.snapshot)  # never two in flight: nothing dropped, the counts are exact
    s = sw.stop_comparison()
    assert s is not None
    return s


def _counts(s: QualitySummary) -> tuple[object, ...]:
    return (s.frames, s.agree, s.sampled, s.dropped, s.candidate.class_counts, s.baseline.class_counts,
            s.candidate.confidence, s.baseline.confidence)


@pytest.mark.parametrize("prepared", ["same contract", "another contract"])
def test_a_process_comparison_counts_what_a_thread_one_counts(prepared: str) -> None:
    """Same frames, same models: the child's summary equals the in-process one (latencies aside).  With
    another contract the camera sends the raw image and the child prepares it its own way."""
    m1 = zoo_model(1)
    candidate = swapped_classes(m1, 0, 1)
    contract = CONTRACT if prepared == "same contract" else dataclasses.replace(CONTRACT, mean=(0.45, 0.5, 0.55))
    out = {}
    for runner in ("thread", "process"):
        sw = _swapper(runner, m1)
        c = _start(sw, candidate, contract=contract)
        assert type(c).__name__ == ("Comparator" if runner == "thread" else "ProcessComparator")
        out[runner] = _one_at_a_time(sw, STOP_YIELD[:16] + EVERY_CLASS[:8])
    t, p = out["thread"], out["process"]
    assert _counts(p) == _counts(t)
    assert p.frames == 24 and p.dropped == 0 and p.agree < p.frames  # the swapped classes disagree
    assert sum(p.candidate.latency) == p.frames


def test_a_frozen_comparison_process_drops_frames_and_never_holds_the_camera(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shadowproc, "REPLY_TIMEOUT_S", 0.5)
    m1 = zoo_model(1)
    sw = _swapper("process", m1)
    c = _start(sw, m1)
    assert isinstance(c, ProcessComparator)
    os.kill(c._proc.pid, signal.SIGSTOP)
    try:
        versions = [sw.predict(f).version for f in EVERY_CLASS[:30]]
        assert versions == [1] * 30  # every frame answered by the live model
        s = c.snapshot()  # no answer within the timeout: the last summary, with what this process counted
        assert s.sampled == 30 and s.dropped >= 30 - shadowproc.SLOTS
    finally:
        os.kill(c._proc.pid, signal.SIGCONT)
    s = settle(c.snapshot)
    assert s.frames == 30 - s.dropped and s.agree == s.frames  # the two slots in flight were compared after all
    final = sw.stop_comparison()
    assert final is not None and final.frames == s.frames and c._proc.poll() is not None


def test_a_killed_comparison_process_leaves_the_camera_and_its_last_summary() -> None:
    m1 = zoo_model(1)
    sw = _swapper("process", m1)
    c = _start(sw, m1)
    assert isinstance(c, ProcessComparator)
    shm = Path("/dev/shm") / c._shm.name
    for f in EVERY_CLASS[:10]:
        sw.predict(f)
        before = settle(c.snapshot)
    assert before.frames == 10 and shm.exists()
    os.kill(c._proc.pid, signal.SIGKILL)
    c._proc.wait(10)
    assert [sw.predict(f).version for f in EVERY_CLASS[10:30]] == [1] * 20
    after = c.snapshot()
    assert (after.frames, after.agree) == (before.frames, before.agree)  # what the child said stands
    assert after.sampled == 30 and after.dropped == 20  # nothing compared since, nothing lost from the count
    final = sw.stop_comparison()
    assert final is not None and final.frames == 10
    assert not shm.exists()  # the shared memory is gone with the comparison
    assert sw.predict(EVERY_CLASS[0]).version == 1


def test_close_frees_the_child_and_the_shared_memory_and_is_idempotent() -> None:
    m1 = zoo_model(1)
    sw = _swapper("process", m1)
    c = _start(sw, m1, every=3)
    assert isinstance(c, ProcessComparator)
    shm = Path("/dev/shm") / c._shm.name
    for f in EVERY_CLASS[:12]:
        sw.predict(f)
    first = c.close()
    assert first.sampled == 4 and c.closed and c._proc.poll() is not None and not shm.exists()
    assert c.close().to_dict() == first.to_dict()
    c.offer_frame(EVERY_CLASS[0], sw.predict(EVERY_CLASS[0]), 0.1)  # a late camera call is ignored
    assert c.snapshot().sampled == 4


def test_a_model_without_its_bytes_cannot_run_in_a_process() -> None:
    m1 = zoo_model(1)
    sw = HotSwapper()  # comparisons="thread": models keep no bytes
    live = sw.load_sync(m1, version=1, model_sha256=sha(m1), contract=CONTRACT)
    assert live.source is None
    with pytest.raises(ValueError, match="bytes"):
        ProcessComparator(live, live, QualityPlan("shadow"), kind="shadow", line="x", rollout_id=None)
    with pytest.raises(ValueError, match="comparisons"):
        HotSwapper(comparisons="fork")
