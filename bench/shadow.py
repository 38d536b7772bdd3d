"""Shadow mode's cost on the camera thread: predict latency with and without a candidate running beside it.

    .venv/bin/python bench/shadow.py [--model v3] [--candidate v4] [--seconds 4] [--rounds 3] [--json]

A camera thread calls ``HotSwapper.predict`` back to back on road-sign frames for ``--seconds`` per phase:
with no comparison (the baseline, measured in the same run), then with ``--candidate`` compared beside the
live model at 1 frame in 10 and at every frame (25% CPU budget each), its comparison run either in a thread
of the camera's process (``client.shadow.Comparator``) or in a child process (``client.shadowproc``, what
``ModelHost`` uses).  The phases are interleaved over ``--rounds`` rounds and each phase's p99 is the median
of its rounds, so a burst of load on this shared machine moves one round, not one phase.  Prints camera
p50/p99 per phase and its ratio to the baseline, frames compared and dropped, and the candidate's agreement.
Issue 18's figure: camera p99 while shadowing at 1 in 10 within 1.2x of no shadowing, 0 failed inferences.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client.hotswap import HotSwapper  # noqa: E402
from models import zoo  # noqa: E402
from models.roadsigns import make_dataset  # noqa: E402
from protocol.quality import QualityPlan  # noqa: E402


def _camera(swapper: HotSwapper, frames: np.ndarray, seconds: float) -> tuple[list[float], int]:
    lat: list[float] = []
    failed = 0
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        try:
            swapper.predict(frames[i % len(frames)])
        except Exception:
            failed += 1
        lat.append((time.perf_counter() - t0) * 1000)
        i += 1
    return lat, failed


def _phase(name: str, swapper: HotSwapper, frames: np.ndarray, seconds: float) -> dict[str, Any]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(_camera(swapper, frames, seconds)), name="camera")
    t.start()
    t.join()
    lat, failed = out[0]
    row: dict[str, Any] = {"phase": name, "inferences": len(lat), "failed": failed,
                           "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}
    comparator = swapper.comparator
    if comparator is not None:
        s = swapper.stop_comparison()
        assert s is not None
        m = s.metrics()
        row |= {"compared": s.frames, "sampled": s.sampled, "dropped": s.dropped, "agreement": m["agreement"],
                "candidate_p99_ms": m["latency_p99_ms"]}
    return row


def _merge(rows: list[dict[str, Any]], base_p99: float) -> dict[str, Any]:
    """One phase over its rounds: medians of p50/p99, sums of counts."""
    out: dict[str, Any] = {"phase": rows[0]["phase"], "rounds": len(rows),
                           "p99_rounds_ms": [round(r["p99_ms"], 3) for r in rows]}
    out["p50_ms"] = round(float(np.median([r["p50_ms"] for r in rows])), 3)
    out["p99_ms"] = round(float(np.median([r["p99_ms"] for r in rows])), 3)
    out["p99_ratio"] = round(out["p99_ms"] / base_p99, 2)
    for k in ("inferences", "failed", "compared", "sampled", "dropped"):
        if k in rows[0]:
            out[k] = int(sum(r[k] for r in rows))
    if "agreement" in rows[0]:
        ag = [r["agreement"] for r in rows if r["agreement"] is not None]
        out["agreement"] = round(float(np.mean(ag)), 4) if ag else None
        out["candidate_p99_ms"] = max((r["candidate_p99_ms"] or 0) for r in rows)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="v3", help="the live zoo version")
    ap.add_argument("--candidate", default="v4", help="the zoo version run in its shadow")
    ap.add_argument("--seconds", type=float, default=4.0, help="camera seconds per phase and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each phase's p99 is the median)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    swappers = {runner: HotSwapper(comparisons=runner) for runner in ("thread", "process")}
    live_path, cand_path = zoo.model_path(args.model), zoo.model_path(args.candidate)
    for sw in swappers.values():
        live = sw.load_sync(live_path, version=1, model_sha256="live", contract=zoo.contract(args.model))
        sw.swap(live, health_window=False)
    images, _ = make_dataset(64, 10, seed=3, size=64)
    frames = np.ascontiguousarray(images)
    for sw in swappers.values():
        sw.predict(frames[0])  # warm up

    phases: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        name = "no shadow (baseline)"
        phases.setdefault(name, []).append(_phase(name, swappers["thread"], frames, args.seconds))
        for every in (10, 1):
            for runner, sw in swappers.items():
                candidate = sw.load_sync(cand_path, version=2, model_sha256="candidate",
                                         contract=zoo.contract(args.candidate))
                comparator = sw.start_comparison(candidate, QualityPlan("shadow", sample_every=every,
                                                                        max_cpu_share=0.25),
                                                 kind="shadow", line="bench", rollout_id=None)
                wait = getattr(comparator, "wait_ready", None)
                if wait is not None:
                    wait()  # the child's start-up is not the camera's cost
                del candidate, comparator
                name = f"shadow 1 in {every}, {runner}"
                phases.setdefault(name, []).append(_phase(name, sw, frames, args.seconds))
    base = float(np.median([r["p99_ms"] for r in phases["no shadow (baseline)"]]))
    rows = [_merge(rs, base) for rs in phases.values()]

    if args.json:
        print(json.dumps({"model": args.model, "candidate": args.candidate, "seconds": args.seconds,
                          "rounds": args.rounds, "phases": rows}, indent=2))
        return 0
    print(f"camera thread: live {args.model}, shadow candidate {args.candidate}, {args.seconds:g} s per phase, "
          f"{args.rounds} interleaved rounds (p99: median of rounds)")
    for r in rows:
        extra = (f"; compared {r['compared']} of {r['sampled']} sampled ({r['dropped']} dropped), agreement "
                 f"{r['agreement']}" if "compared" in r else "")
        print(f"  {r['phase']:<26} {r['inferences']:>6} inferences, {r['failed']} failed, p50 {r['p50_ms']:.3f} ms, "
              f"p99 {r['p99_ms']:.3f} ms ({r['p99_ratio']}x baseline; rounds {r['p99_rounds_ms']}){extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
