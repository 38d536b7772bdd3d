"""The child side of ``client.shadowproc.ProcessComparator``: ``python -m client.shadowchild``.

Fed over stdin: one JSON line of configuration, then the beside model's bytes; then commands, one a line
(``S``: answer the summary; ``Q``: answer it and exit).  Frames arrive through the parent's shared memory,
their slot numbers through a pipe.  Answers go to stdout, one JSON line each, after a first ``R`` line once
the session is built.  Its own module, not client.shadowproc, so ``-m`` runs a module the package import
did not already load.
"""

from __future__ import annotations

import json
import os
import select
import sys
from multiprocessing import resource_tracker, shared_memory
from typing import Any, cast

import numpy as np

from client.hotswap import LoadedModel, Prediction
from client.shadow import Comparator
from client.shadowproc import CHILD_NICE, FRAME_HEADER, PAYLOAD_PREPARED, READY, SLOT_FREE, SLOT_HEAD
from models.sessions import open_session
from protocol.contract import InputContract
from protocol.quality import QualityPlan, QualitySummary


def _read_exact(fd: int, n: int, head: bytes) -> bytes:
    data = bytearray(head)
    while len(data) < n:
        chunk = os.read(fd, min(1 << 20, n - len(data)))
        if not chunk:
            raise EOFError("the parent closed the pipe before sending the model")
        data += chunk
    return bytes(data)


def _reply(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _child_summary(s: QualitySummary) -> bytes:
    return json.dumps({"summary": s.to_dict(), "candidate_counts": s.candidate.class_counts,
                       "candidate_other": s.candidate.other, "baseline_counts": s.baseline.class_counts,
                       "baseline_other": s.baseline.other}).encode() + b"\n"


def main() -> int:
    try:
        os.nice(CHILD_NICE)
    except OSError:
        pass
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    head = b""
    while b"\n" not in head:
        chunk = os.read(stdin, 1 << 16)
        if not chunk:
            return 1
        head += chunk
    line, rest = head.split(b"\n", 1)
    cfg = json.loads(line)
    model = _read_exact(stdin, int(cfg["model_bytes"]), rest)
    b, lv = cfg["beside"], cfg["live"]
    session = open_session(model, intra_threads=int(cfg["threads"]))
    del model
    beside = LoadedModel(session, int(b["version"]), str(b["sha256"]), InputContract.from_dict(b["contract"]),
                         int(b["batch"]))
    live_contract = InputContract.from_dict(lv["contract"])
    live = LoadedModel(cast(Any, None), int(lv["version"]), "", live_contract, int(lv["batch"]))
    resume = None if cfg["resume"] is None else QualitySummary.from_dict(cfg["resume"])
    comparator = Comparator(beside, live, QualityPlan.from_dict(cfg["plan"]), kind=str(cfg["kind"]),
                            line=str(cfg["line"]), rollout_id=cfg["rollout_id"], resume=resume, threaded=False)
    shm = shared_memory.SharedMemory(name=cfg["shm"])
    # the parent owns (and unlinks) the segment: this process's tracker must not unlink it or warn at exit
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    _reply(stdout, READY + b"\n")
    try:
        return _serve(comparator, shm, int(cfg["slots"]), int(cfg["slot"]), int(cfg["notify_fd"]), stdin, stdout,
                      live_contract, int(lv["version"]))
    finally:
        shm.close()


def _serve(comparator: Comparator, shm: shared_memory.SharedMemory, slots: int, size: int, notify: int,
           stdin: int, stdout: int, live_contract: InputContract, live_version: int) -> int:
    buf = cast(memoryview, shm.buf)
    commands = b""
    while True:
        ready = select.select([notify, stdin], [], [])[0]
        if notify in ready:
            got = os.read(notify, 64)
            if not got:  # the parent closed its end
                return 0
            for slot in got:
                if slot >= slots:
                    continue
                base = slot * size
                kind, dtype, ndim, d0, d1, d2, d3, index, prob, live_ms, _ = FRAME_HEADER.unpack_from(buf, base + 8)
                shape = (d0, d1, d2, d3)[:ndim]
                frame = np.array(np.ndarray(shape, np.dtype(dtype.rstrip(b"\0").decode()), buf, base + SLOT_HEAD))
                buf[base] = SLOT_FREE
                label = live_contract.label(index) if index >= 0 else ""
                comparator.compare_now(frame, kind == PAYLOAD_PREPARED, Prediction(label, prob, live_version, index),
                                       live_ms)
        if stdin in ready:
            chunk = os.read(stdin, 4096)
            if not chunk:
                return 0
            commands += chunk
            while b"\n" in commands:
                cmd, commands = commands.split(b"\n", 1)
                _reply(stdout, _child_summary(comparator.snapshot()))
                if cmd == b"Q":
                    return 0


if __name__ == "__main__":
    raise SystemExit(main())
