"""Run a second model beside the live one on a sample of live frames, off the camera's critical path.

Shadow mode (issue 18, ``protocol.quality``): a candidate version is loaded beside the live model and
never answers the camera; a :class:`Comparator` takes one frame in ``plan.sample_every`` *after* the live
answer is computed, hands it to its own daemon thread through a queue of at most two frames, and that
thread runs the other model and counts both sides into a :class:`protocol.quality.QualitySummary`.
During a live health window the same class runs the *previous* version beside the new one (kind
``live``: the candidate drives, the baseline runs beside).

What the camera thread pays (``offer_frame``): one counter increment, and on a sampled frame a CPU-budget
look and a non-blocking queue put.  A full queue or a comparison over its CPU budget (busy time in a
sliding window above ``max_cpu_share`` of one core) counts the frame ``dropped``: the live answer never
waits for the other one.  The other model's failures are counted, never raised into the camera.  No image
is kept beyond the queue, and none is sent: only the summary leaves.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from models.preprocess import postprocess
from protocol.quality import MAX_CLASSES, QualityPlan, QualitySummary

if TYPE_CHECKING:
    from client.hotswap import LoadedModel, Prediction

log = logging.getLogger("client.shadow")

#: Frames waiting for the beside model, at most (the camera never waits for a free place).
QUEUE_FRAMES = 2
#: The sliding window over which the beside model's busy time is held to ``max_cpu_share``.
CPU_WINDOW_S = 5.0
#: Busy time is kept per bucket of this many seconds (at most CPU_WINDOW_S / BUSY_BUCKET_S buckets).
BUSY_BUCKET_S = 0.1


def initial_summary(beside: LoadedModel, live: LoadedModel, *, kind: str, line: str, rollout_id: int | None,
                    resume: QualitySummary | None) -> QualitySummary:
    """A comparison's summary before its first frame: ``resume`` when it is this comparison's, else empty."""
    candidate, baseline = (beside.version, live.version) if kind == "shadow" else (live.version, beside.version)
    fresh = QualitySummary(kind=kind, line=line, rollout_id=rollout_id, candidate_version=candidate,
                           baseline_version=baseline)
    # class counts as long as each side's label list from the start (the wire names the most answered only)
    cand_model, base_model = (beside, live) if kind == "shadow" else (live, beside)
    fresh.candidate.class_counts = [0] * min(len(cand_model.contract.labels), MAX_CLASSES)
    fresh.baseline.class_counts = [0] * min(len(base_model.contract.labels), MAX_CLASSES)
    same = resume is not None and (resume.kind, resume.rollout_id, resume.candidate_version,
                                   resume.baseline_version) == (kind, rollout_id, candidate, baseline)
    return copy.deepcopy(resume) if same and resume is not None else fresh


class Comparator:
    """One comparison: ``beside`` runs on sampled frames next to whatever the live model answered.

    ``kind`` ``shadow``: ``beside`` is the candidate, the live model the baseline.  ``kind`` ``live``: the live
    model is the candidate (the new version in its health window), ``beside`` the baseline (the previous one).
    ``resume`` continues a summary kept across a restart (the same rollout, candidate and kind).
    """

    def __init__(self, beside: LoadedModel, live: LoadedModel, plan: QualityPlan, *, kind: str, line: str,
                 rollout_id: int | None, resume: QualitySummary | None = None,
                 clock: Callable[[], float] = time.perf_counter, cpu_window_s: float = CPU_WINDOW_S,
                 threaded: bool = True) -> None:
        if kind not in ("shadow", "live"):
            raise ValueError(f"comparison kind must be shadow or live, got {kind!r}")
        self._beside: LoadedModel | None = beside  # None once closed: the session goes with its last reference
        self.beside_version = beside.version
        self.plan = plan
        self.kind = kind
        # only what the live model is, never its session (a retired live session must not outlive its swap)
        live_version, self._live_contract, self._live_batch = live.version, live.contract, live.batch
        self.live_version = live_version
        self._summary = initial_summary(beside, live, kind=kind, line=line, rollout_id=rollout_id, resume=resume)
        self._lock = threading.Lock()  # guards _summary; never held while a model runs
        self._clock = clock
        self._window_s = cpu_window_s
        #: [bucket start, busy seconds] per BUSY_BUCKET_S of the window: bounded however fast the model runs
        self._busy: deque[list[float]] = deque()
        self._busy_sum = 0.0
        self._seen = 0
        self._queue: queue.Queue[tuple[np.ndarray, bool, Prediction, float] | None] = queue.Queue(QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"ota-compare-v{beside.version}", daemon=True)
        if threaded:  # else the owner calls compare_now (client.shadowproc's child process)
            self._thread.start()

    # -- the camera thread ---------------------------------------------------------------------------------

    @property
    def shadow_side(self) -> str:
        """Which side of the summary ``beside`` fills: ``candidate`` in shadow mode, ``baseline`` in live mode."""
        return "candidate" if self.kind == "shadow" else "baseline"

    def offer_frame(self, image: np.ndarray, live: Prediction, live_latency_ms: float,
                    prepared: np.ndarray | None = None) -> None:
        """Called by the predict path after the live answer: sample, enqueue or drop; never waits, never raises.

        ``prepared`` is the live model's input for ``image`` (a fresh array): reused when ``beside`` has the
        same contract and batch, so the camera pays no second preprocessing; otherwise the sampled frame is
        copied, since the camera may reuse its buffer before the comparison thread reads it.
        """
        self._seen += 1  # only this thread (the camera's) writes it; a lost increment costs one sample
        if self._seen % self.plan.sample_every or self._stop.is_set() or live.version != self.live_version:
            return
        with self._lock:
            self._summary.sampled += 1
            if self._over_budget():
                self._summary.dropped += 1
                return
        same_input = prepared is not None and self._fits(prepared)
        frame = prepared if same_input and prepared is not None else np.array(image)
        item = (frame, same_input, live, live_latency_ms)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._drop()

    def record_live_failure(self, nonfinite: bool) -> None:
        """The live model failed on a frame (live mode: the new version; the previous one answered for it)."""
        if self.kind != "live":
            return
        with self._lock:
            if nonfinite:
                self._summary.candidate.nonfinite += 1
            else:
                self._summary.candidate.errors += 1

    def _fits(self, prepared: np.ndarray) -> bool:
        beside = self._beside
        return (beside is not None and beside.contract.same_input(self._live_contract) and beside.batch == self._live_batch
                and prepared.shape[0] == beside.batch)

    def _drop(self) -> None:
        with self._lock:
            self._summary.dropped += 1

    def _over_budget(self) -> bool:
        """The beside model's busy time in the last window above its share of one core (hold ``_lock``)."""
        now = self._clock()
        busy = self._busy
        while busy and busy[0][0] < now - self._window_s:
            self._busy_sum -= busy.popleft()[1]
        return self._busy_sum > self.plan.max_cpu_share * self._window_s

    def _spent(self, end: float, seconds: float) -> None:
        """Count ``seconds`` of busy time ending at ``end`` (hold ``_lock``)."""
        busy = self._busy
        if busy and end - busy[-1][0] < BUSY_BUCKET_S:
            busy[-1][1] += seconds
        else:
            busy.append([end, seconds])
        self._busy_sum += seconds

    def compare_now(self, frame: np.ndarray, prepared: bool, live: Prediction, live_ms: float) -> None:
        """Compare one frame the owner already sampled, in the caller's thread (``threaded=False``): dropped
        when over the CPU budget, like a queued frame would be."""
        with self._lock:
            if self._over_budget():
                self._summary.dropped += 1
                return
        self._compare(frame, prepared, live, live_ms)

    # -- the comparison thread -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                break
            try:
                self._compare(*item)
            except Exception:  # a bug here must not kill the thread silently and leave frames queued forever
                log.exception("comparison of v%d failed on a frame", self.beside_version)

    def _compare(self, frame: np.ndarray, prepared: bool, live: Prediction, live_ms: float) -> None:
        from client.hotswap import _prepare  # the same contract preprocessing as the live path

        model = self._beside
        if model is None:
            return
        c = model.contract
        t0 = self._clock()
        top1, conf, failure = -1, 0.0, ""
        try:
            x = frame if prepared else _prepare(frame, model)
            scores = np.asarray(model.session.run([c.output_name], {c.input_name: x})[0])
            if scores.dtype.kind != "f" or not np.all(np.isfinite(scores)):
                failure = "nonfinite"
            else:
                probs = postprocess(scores[:1], c)[0]
                top1 = int(np.argmax(probs))
                conf = float(probs[top1])
        except Exception:  # ONNX Runtime's own types, BadImage (a contract that does not fit this frame)
            failure = "error"
        t1 = self._clock()
        ms = (t1 - t0) * 1000
        with self._lock:
            self._spent(t1, t1 - t0)
            s = self._summary
            side = s.candidate if self.kind == "shadow" else s.baseline
            live_side = s.baseline if self.kind == "shadow" else s.candidate
            if failure == "nonfinite":
                side.nonfinite += 1
                return
            if failure:
                side.errors += 1
                return
            side.record(top1, conf, ms)
            live_side.record(live.index, live.probability, live_ms)
            s.frames += 1
            # by label, not index: a candidate may order (or extend) the line's labels differently
            s.agree += c.label(top1) == live.label

    # -- the agent -----------------------------------------------------------------------------------------

    def snapshot(self) -> QualitySummary:
        """A copy of the cumulative summary so far (the caller stamps its ``seq``)."""
        with self._lock:
            return copy.deepcopy(self._summary)

    def close(self, timeout_s: float = 5.0) -> QualitySummary:
        """Stop the thread (a frame being compared finishes), drop queued frames and the beside model's
        reference; returns the final summary.  Idempotent."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._beside = None  # frees the session here, unless the swapper still holds it (live mode)
        return self.snapshot()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()
