"""Run the beside model of a comparison in its own process, so the camera's process never waits for it.

Measured (``bench/shadow.py``): with the comparison in a thread of the camera's process, the camera's p99
went from 0.38 to 0.68 ms at 1 frame in 10 (1.8x), because the comparison's Python work (preprocessing,
postprocessing, the summary's counters, its queue) takes the GIL the camera needs between two inferences.
Issue 18 wants 1.2x.  A :class:`ProcessComparator` keeps the same interface as ``client.shadow.Comparator``
but the camera thread only copies the sampled frame's prepared input (or the raw image when the two
contracts prepare differently) into a free slot of shared memory and writes one byte to a non-blocking
pipe; a child process (``python -m client.shadowchild``, nice 5) holds the beside model's session and the
summary, and runs an unthreaded ``Comparator`` on each frame.  No slot free, or the pipe full: the frame is
counted dropped, never waited for.  The agent asks the child for its summary over the child's stdin/stdout.

Costs, said in the README: the child's own ONNX Runtime and a second session of the beside model (the
camera's process keeps its copy too: a shadow candidate is promoted without loading it again), and the
model's bytes kept beside its session (``HotSwapper(comparisons="process")``).  A child that dies leaves the
camera untouched: its frames count as dropped and its last summary stands.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import select
import struct
import subprocess
import threading
import time
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from client.children import child_env, module_command
from client.shadow import initial_summary
from protocol.quality import MAX_CLASSES, QualityPlan, QualitySummary

if TYPE_CHECKING:
    from client.hotswap import LoadedModel, Prediction

log = logging.getLogger("client.shadowproc")

#: Frames in flight to the child, at most (as ``client.shadow.QUEUE_FRAMES``).
SLOTS = 2
#: A raw frame (sent when the two contracts prepare images differently) larger than this is dropped.
MAX_RAW_BYTES = 8 << 20
#: How long the agent waits for the child's summary before using the last one it has.
REPLY_TIMEOUT_S = 5.0
#: Child's niceness: under contention the camera's process runs first.
CHILD_NICE = 5

FRAME_HEADER = struct.Struct("<B8sB4IiddQ")  # kind, dtype, ndim, shape, live index, live probability, live ms, nbytes
SLOT_HEAD = 64  # state byte at 0, header at 8
SLOT_FREE, SLOT_FULL = 0, 1
READY = b"R"  # the child's first line: its session is built
PAYLOAD_PREPARED, PAYLOAD_RAW = 0, 1


def _slot_layout(payload: int) -> int:
    return SLOT_HEAD + ((payload + 63) // 64) * 64


class ProcessComparator:
    """A comparison whose beside model runs in a child process (see the module docstring).

    ``beside.source`` must hold the model's bytes (``HotSwapper(comparisons="process")`` keeps them).

    Raises:
        ValueError: ``beside`` carries no model bytes, or ``kind`` is not shadow or live.
        OSError: the child cannot be started.
    """

    def __init__(self, beside: LoadedModel, live: LoadedModel, plan: QualityPlan, *, kind: str, line: str,
                 rollout_id: int | None, resume: QualitySummary | None = None, threads: int = 1) -> None:

        if kind not in ("shadow", "live"):
            raise ValueError(f"comparison kind must be shadow or live, got {kind!r}")
        if beside.source is None:
            raise ValueError("a process comparison needs the beside model's bytes (HotSwapper(comparisons='process'))")
        self.beside_version = beside.version
        self.live_version = live.version
        self.plan = plan
        self.kind = kind
        self._beside_contract, self._beside_batch = beside.contract, beside.batch
        self._live_contract, self._live_batch = live.contract, live.batch
        self._last = initial_summary(beside, live, kind=kind, line=line, rollout_id=rollout_id, resume=resume)
        self._sampled = self._dropped = self._live_errors = self._live_nonfinite = 0
        self._seen = 0
        self._closed = False
        self._lock = threading.Lock()  # the control channel and _last; never taken by the camera thread
        prepared = int(np.prod(live.contract.input_shape(live.batch))) * 4
        self._payload = max(prepared, MAX_RAW_BYTES if not beside.contract.same_input(live.contract) else 0)
        self._slot = _slot_layout(self._payload)
        self._shm = shared_memory.SharedMemory(create=True, size=SLOTS * self._slot)
        self._buf: memoryview = cast(memoryview, self._shm.buf)
        for i in range(SLOTS):
            self._buf[i * self._slot] = SLOT_FREE
        notify_r, self._notify_w = os.pipe()
        os.set_blocking(self._notify_w, False)
        config = {"shm": self._shm.name, "slots": SLOTS, "slot": self._slot, "notify_fd": notify_r,
                  "beside": {"version": beside.version, "sha256": beside.model_sha256,
                             "contract": beside.contract.to_dict(), "batch": beside.batch},
                  "live": {"version": live.version, "contract": live.contract.to_dict(), "batch": live.batch},
                  "plan": plan.to_dict(), "kind": kind, "line": line, "rollout_id": rollout_id,
                  "resume": None if resume is None else resume.to_dict(), "threads": threads,
                  "model_bytes": len(beside.source)}
        try:
            self._proc = subprocess.Popen(module_command("client.shadowchild"), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, pass_fds=(notify_r,), env=child_env(), close_fds=True)
        except OSError:
            os.close(notify_r)
            self._release_ipc()
            raise
        os.close(notify_r)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._out = self._proc.stdout.fileno()
        self._pending = b""
        self._ready = False
        try:
            self._proc.stdin.write(json.dumps(config).encode() + b"\n" + bytes(beside.source))
            self._proc.stdin.flush()
        except OSError:  # the child died at once; its frames will count dropped
            log.warning("shadow comparison process exited before its model was sent")

    # -- the camera thread ---------------------------------------------------------------------------------

    def offer_frame(self, image: np.ndarray, live: Prediction, live_latency_ms: float,
                    prepared: np.ndarray | None = None) -> None:
        """Sample, copy into a free slot, notify; never waits, never raises (as ``Comparator.offer_frame``)."""
        self._seen += 1
        if self._seen % self.plan.sample_every or self._closed or live.version != self.live_version:
            return
        self._sampled += 1
        try:
            if not self._send(image, live, live_latency_ms, prepared):
                self._dropped += 1
        except Exception:  # the camera never fails for the comparison
            self._dropped += 1

    def _send(self, image: np.ndarray, live: Prediction, live_ms: float, prepared: np.ndarray | None) -> bool:
        buf, size = self._buf, self._slot
        slot = next((i for i in range(SLOTS) if buf[i * size] == SLOT_FREE), None)
        if slot is None:
            return False
        same = (prepared is not None and self._beside_contract.same_input(self._live_contract)
                and self._beside_batch == self._live_batch and prepared.shape[0] == self._beside_batch)
        data = np.ascontiguousarray(prepared if same and prepared is not None else image)
        if data.nbytes > self._payload or data.ndim > 4:
            return False
        base = slot * size
        shape = list(data.shape) + [0] * (4 - data.ndim)
        FRAME_HEADER.pack_into(buf, base + 8, PAYLOAD_PREPARED if same else PAYLOAD_RAW, data.dtype.str.encode(), data.ndim, *shape,
                          live.index, live.probability, live_ms, data.nbytes)
        np.ndarray(data.shape, data.dtype, buf, base + SLOT_HEAD)[...] = data
        buf[base] = SLOT_FULL
        try:
            os.write(self._notify_w, bytes((slot,)))
        except OSError:  # pipe full or the child gone
            buf[base] = SLOT_FREE
            return False
        return True

    def record_live_failure(self, nonfinite: bool) -> None:
        """The live model failed on a frame (live mode: the new version; the previous one answered for it)."""
        if self.kind != "live":
            return
        if nonfinite:
            self._live_nonfinite += 1
        else:
            self._live_errors += 1

    # -- the agent -----------------------------------------------------------------------------------------

    @property
    def shadow_side(self) -> str:
        return "candidate" if self.kind == "shadow" else "baseline"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def snapshot(self) -> QualitySummary:
        """The cumulative summary: the child's, with this process's sampling, drops and live failures added.

        A child that does not answer within ``REPLY_TIMEOUT_S`` (or has died) leaves its last summary."""
        with self._lock:
            if not self._closed:
                fresh = self._ask(b"S\n")
                if fresh is not None:
                    self._last = fresh
            return self._with_local(self._last)

    def _with_local(self, s: QualitySummary) -> QualitySummary:
        out = copy.deepcopy(s)
        out.sampled += self._sampled
        out.dropped += self._dropped
        out.candidate.errors += self._live_errors
        out.candidate.nonfinite += self._live_nonfinite
        return out

    def wait_ready(self, timeout_s: float = 30.0) -> bool:
        """Wait until the child has built its session (frames sampled before that are dropped)."""
        end = time.monotonic() + timeout_s
        with self._lock:
            while not self._ready and not self._closed and self._proc.poll() is None and time.monotonic() < end:
                if b"\n" in self._pending or select.select([self._out], [], [], 0.05)[0]:
                    chunk = b"" if b"\n" in self._pending else os.read(self._out, 1 << 16)
                    self._pending += chunk
                    line, sep, rest = self._pending.partition(b"\n")
                    if sep and line == READY:
                        self._ready, self._pending = True, rest
                    elif not chunk and not sep:
                        break
            return self._ready

    def _ask(self, command: bytes) -> QualitySummary | None:
        stdin = self._proc.stdin
        if stdin is None or self._proc.poll() is not None:
            return None
        try:
            if command:
                stdin.write(command)
                stdin.flush()
        except OSError:
            return None
        end = time.monotonic() + REPLY_TIMEOUT_S
        while b"\n" not in self._pending:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                log.warning("shadow comparison process did not answer in %.0f s", REPLY_TIMEOUT_S)
                return None
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        if line == READY:
            self._ready = True
            return self._ask(b"")
        try:
            return _summary_from_child(json.loads(line))
        except (ValueError, TypeError) as e:
            log.warning("shadow comparison process answered something unreadable: %s", e)
            return None

    def close(self, timeout_s: float = 5.0) -> QualitySummary:
        """Stop the child (a frame being compared finishes), free the shared memory; the final summary.
        Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                final = self._ask(b"Q\n")
                if final is not None:
                    self._last = final
                try:
                    if self._proc.stdin is not None:
                        self._proc.stdin.close()
                except OSError:
                    pass
                try:
                    self._proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                if self._proc.stdout is not None:
                    self._proc.stdout.close()
                self._release_ipc()
            return self._with_local(self._last)

    def _release_ipc(self) -> None:
        try:
            os.close(self._notify_w)
        except (OSError, AttributeError):
            pass
        self.__dict__.pop("_buf", None)  # a late camera call fails its copy (counted dropped), never touches freed memory
        self._shm.close()
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass

    def __del__(self) -> None:  # a comparator dropped without close: no child or shared memory left behind
        try:
            if not self._closed:
                self._proc.kill()
                self._proc.wait(1.0)
                self._closed = True
                self._release_ipc()
        except Exception:
            pass


def _summary_from_child(d: Any) -> QualitySummary:
    """The child's full summary: the wire form plus the dense class counts the wire folds."""
    s = QualitySummary.from_dict(d["summary"])
    for side in ("candidate", "baseline"):
        stats = getattr(s, side)
        counts, other = d[f"{side}_counts"], d[f"{side}_other"]
        if (not isinstance(counts, list) or len(counts) > MAX_CLASSES or sum(counts) + other != stats.answered
                or any(not isinstance(n, int) or n < 0 for n in counts)):
            raise ValueError(f"{side} class counts do not add up to the summary's")
        stats.class_counts, stats.other = list(counts), int(other)
    return s
