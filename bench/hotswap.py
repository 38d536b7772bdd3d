"""Hot-swap benchmark: inference latency and failures while the agent installs updates.

A camera thread calls ``predict`` continuously while the real agent code
(``Agent.handle_offer``: verify signature, hash artifacts, patch, decode, load
+ smoke test, commit the slot with fsync, swap) applies a series of signed
updates over the shipped SqueezeNet versions.  Artifacts are pre-placed in the
agent's download cache, so the network is left out: this measures the install
and the swap, not the link.

Two deployments: by default the camera's process holds only the sessions
(``client.ModelHost``) and the agent runs in its daemon (``client.agentd``),
which asks this process to load, smoke-test, swap and free; with
``--in-process-agent`` the whole ``Agent`` runs beside the camera (decoding in
its child worker process), as the simulator and ``ota agent`` run it.

    .venv/bin/python bench/hotswap.py [--updates 8] [--codec lossless] [--in-process-agent] [--json]

Prints inference p50/p99 in steady state and during swaps (and how many
inferences during swaps were slower than 1.5x the steady p99), failed inferences,
per-update install time by phase, the model's bare load time, and RSS.

Windows: "during swaps" is every inference that overlaps an install (from
``handle_offer`` receiving the offer to its return: verify, patch, decode,
load, smoke test, commit, swap) or the health-window close that frees the old
session; "steady" is every inference that overlaps none of those.  The bench's
own publisher work (signing the next offer and writing its artifacts into the
agent's download cache, as a download would have) is left out of both: an
inference overlapping it counts in neither, and ``--settle-s`` separates it
from the close before it and the install after it.
RSS is the camera's process plus its child, the agent daemon or the decode worker
(sum of the two VmRSS: an overcount, since shared library pages are counted in both).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import resource
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client import Agent, AgentConfig  # noqa: E402
from client.identity import Identity, save_identity  # noqa: E402
from client.manifest import canonical_json  # noqa: E402
from client.modelhost import ModelHost  # noqa: E402
from client.slots import SlotStore  # noqa: E402
from models import codec, zoo  # noqa: E402
from models.roadsigns import CLASSES, render  # noqa: E402
from models.smoke import golden_inputs  # noqa: E402

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"
DEVICE = "bench-car"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def rss_mb(pid: int | str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass  # the child left between reading its pid and its status
    return 0.0


class Publisher:
    """Plays the registry's part offline: packages, deltas, smoke expectations, signed offers."""

    def __init__(self, codec_name: str, downloads: Path) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.pub = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.codec = codec_name
        self.downloads = downloads
        self.packages: dict[int, bytes] = {}
        self.smoke: dict[int, dict[str, Any]] = {}
        self.labels: dict[int, list[str]] = {}
        self.model_sha: dict[int, str] = {}
        self.deltas: dict[tuple[int, int], bytes] = {}
        self.mv = 1000

    def add_version(self, v: int) -> None:
        pkg = codec.pack((ZOO / f"v{v}.onnx").read_bytes(), self.codec).package
        model = codec.unpack(pkg)
        s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        shape = [1, 3, 64, 64]
        expected = [s.run(None, {"input": x})[0].reshape(-1).tolist() for x in golden_inputs(v, 3, shape)]
        self.packages[v] = pkg
        self.model_sha[v] = sha(model)
        self.labels[v] = list(CLASSES[: len(expected[0])])
        self.smoke[v] = {"seed": v, "count": 3, "shape": shape, "input_name": "input", "expected": expected,
                         "atol": 1e-3}

    def prepare_delta(self, base: int, v: int) -> None:
        """Diff ahead of time: encoding a delta is the server's work and must not run beside the camera."""
        self.deltas[(base, v)] = codec.diff(self.packages[base], self.packages[v])

    def _place(self, data: bytes) -> dict[str, Any]:
        (self.downloads / sha(data)).write_bytes(data)
        return {"sha256": sha(data), "size": len(data), "url": f"/api/v1/artifacts/{sha(data)}"}

    def offer(self, v: int, base: int | None, rollback: bool = False) -> dict[str, Any]:
        self.mv += 1
        pkg = self.packages[v]
        delta = None
        if base is not None and base in self.packages and not rollback:
            if (base, v) not in self.deltas:
                self.prepare_delta(base, v)
            delta = {**self._place(self.deltas[(base, v)]), "base_package_sha256": sha(self.packages[base])}
        signed = {
            "type": "offer", "device_id": DEVICE, "line": "road-signs", "rollout_id": None,
            "manifest_version": self.mv, "target_version": v, "rollback": rollback, "codec": self.codec,
            "model_sha256": self.model_sha[v], "contract": {**zoo.contract().to_dict(), "labels": list(self.labels[v])},
            "package": self._place(pkg),
            "delta": delta, "smoke": self.smoke[v],
            "expires": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        sig = base64.b64encode(self.key.sign(canonical_json(signed))).decode()
        return {"signed": signed, "signatures": [{"keyid": sha(self.pub), "sig": sig}]}


class InProcess:
    """The whole agent in the camera's process (``Agent``)."""

    def __init__(self, config: AgentConfig) -> None:
        self.agent = Agent(config)
        self.predict = self.agent.predict
        self.downloads = self.agent.store.downloads_dir

    async def start(self) -> None:
        await self.agent.start()

    async def install(self, env: dict[str, Any]) -> dict[str, Any]:
        await self.agent.handle_offer(env)
        return {"running_version": self.agent.running_version, "last_install": dict(self.agent.last_install)}

    async def check_health(self) -> None:
        await self.agent.check_health()

    def worker_pid(self) -> int | None:
        return getattr(self.agent.decoder, "pid", None)

    def worker_starts(self) -> int:
        return getattr(self.agent.decoder, "starts", 0)

    async def close(self) -> None:
        await self.agent.aclose()


class Split:
    """The camera's process holds only the sessions (``ModelHost``); the agent runs in its daemon."""

    def __init__(self, config: AgentConfig) -> None:
        self.host = ModelHost(config, poll=False)
        self.predict = self.host.predict
        self.downloads = SlotStore(config.state_dir).downloads_dir  # the daemon's download cache

    async def start(self) -> None:
        self.host.start()

    async def install(self, env: dict[str, Any]) -> dict[str, Any]:
        return self.host.handle_offer(env)

    async def check_health(self) -> None:
        self.host.check_health()

    def worker_pid(self) -> int | None:
        return self.host.pid

    def worker_starts(self) -> int | None:
        return None  # no decode worker: the daemon decodes

    async def close(self) -> None:
        self.host.close()


class Camera(threading.Thread):
    """Calls predict in a loop and records (start, latency, ok)."""

    def __init__(self, agent: InProcess | Split) -> None:
        super().__init__(daemon=True)
        self.agent = agent
        rng = np.random.default_rng(0)
        self.images = [render(i % 10, rng) for i in range(16)]
        self.samples: list[tuple[float, float, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                self.agent.predict(self.images[i % len(self.images)])
                ok = True
            except Exception:
                ok = False
            self.samples.append((t0, time.perf_counter() - t0, ok))
            i += 1


class RssSampler(threading.Thread):
    """Every 5 ms: (time, this process's RSS, the child's RSS: decode worker or agent daemon)."""

    def __init__(self, agent: InProcess | Split) -> None:
        super().__init__(daemon=True)
        self.agent = agent
        self.samples: list[tuple[float, float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pid = self.agent.worker_pid()
            self.samples.append((time.perf_counter(), rss_mb(), rss_mb(pid) if pid else 0.0))
            time.sleep(0.005)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="ota-bench-"))
    config = AgentConfig(server_url="http://offline.invalid", device_id=DEVICE, state_dir=state,
                         health_window_inferences=50, fsync=not args.no_fsync,
                         decode_in_subprocess=not args.in_process,
                         gil_switch_interval_s=args.gil_switch_s or None,
                         decode_worker_nice=args.worker_nice)
    agent = InProcess(config) if args.in_process_agent else Split(config)
    pub = Publisher(args.codec, agent.downloads)
    for v in range(1, 6):
        pub.add_version(v)
    plan = ([2, 3, 4, 5, 1] * ((args.updates + 4) // 5))[: args.updates]
    for base, target in zip([1, *plan], plan, strict=False):
        if target > base:
            pub.prepare_delta(base, target)
    t = time.perf_counter()
    ort.InferenceSession(codec.unpack(pub.packages[1]), providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t) * 1000
    save_identity(state / "identity.json", Identity(DEVICE, "unused", pub.pub, sha(pub.pub)))
    await agent.start()
    t = time.perf_counter()
    st = await agent.install(pub.offer(1, None))
    first_install_ms = (time.perf_counter() - t) * 1000  # includes the decode worker's cold start
    assert st["running_version"] == 1, "initial install failed"

    camera, sampler = Camera(agent), RssSampler(agent)
    camera.start()
    sampler.start()
    await asyncio.sleep(args.steady_s)
    windows: list[tuple[float, float]] = []  # installs and health-window closes: "during swaps"
    excluded: list[tuple[float, float]] = []  # the bench's publisher work: in neither window
    installs: list[dict[str, float]] = []
    current = 1
    for target in plan:
        rollback = target < current
        t = time.perf_counter()
        env = pub.offer(target, current, rollback=rollback)
        excluded.append((t, time.perf_counter()))
        await asyncio.sleep(args.settle_s)  # the publisher's own writes must not straddle the install
        t0 = time.perf_counter()
        st = await agent.install(env)
        t1 = time.perf_counter()
        if st["running_version"] != target:
            raise SystemExit(f"update to v{target} did not install")
        windows.append((t0, t1))
        installs.append({"target": target, "wall_ms": (t1 - t0) * 1000, **st["last_install"]})
        current = target
        await asyncio.sleep(args.gap_s)
        t = time.perf_counter()
        await agent.check_health()  # closes the window: the old session is freed here
        windows.append((t, time.perf_counter()))
        await asyncio.sleep(args.settle_s)  # nor may the next offer's preparation straddle the close
    await asyncio.sleep(args.steady_s / 2)
    camera.stop.set()
    sampler.stop.set()
    camera.join()
    sampler.join()
    await agent.close()

    def overlaps(spans: list[tuple[float, float]], t: float, lat: float) -> bool:
        return any(t <= b and t + lat >= a for a, b in spans)

    # An inference that overlaps the bench's own work counts in neither window, even if it also
    # overlaps an install: that work is not the agent's.
    ok = [(t, lat) for t, lat, good in camera.samples if good and not overlaps(excluded, t, lat)]
    swap_lat = [lat * 1000 for t, lat in ok if overlaps(windows, t, lat)]
    steady_lat = [lat * 1000 for t, lat in ok if not overlaps(windows, t, lat)]
    swap_rss = [(r, c) for t, r, c in sampler.samples if overlaps(windows, t, 0.0)]
    steady_rss = [r + c for t, r, c in sampler.samples if not overlaps(windows, t, 0.0)]
    # The figure: patch + decode + load + smoke test + swap.  The slot commit (fsync of package,
    # model and journal) is reported apart: it is disk I/O, and it happens before the swap by design.
    phases = ("patch_ms", "decode_ms", "load_smoke_ms", "swap_ms")
    install_ms = [sum(i.get(k, 0.0) for k in phases) for i in installs]
    return {
        "updates": len(installs),
        "codec": args.codec,
        "agent": "in the camera's process" if args.in_process_agent else "daemon process (ModelHost)",
        "decode": ("the agent daemon" if not args.in_process_agent
                   else "a thread beside the camera" if args.in_process else "a child process"),
        "gil_switch_s": args.gil_switch_s or None,
        "worker_nice": None if args.in_process else args.worker_nice,
        "inferences": len(camera.samples),
        "failed_inferences": sum(1 for *_, good in camera.samples if not good),
        "p50_steady_ms": round(pct(steady_lat, 50), 3),
        "p99_steady_ms": round(pct(steady_lat, 99), 3),
        "p50_swap_ms": round(pct(swap_lat, 50), 3),
        "p99_swap_ms": round(pct(swap_lat, 99), 3),
        "p99_ratio": round(pct(swap_lat, 99) / pct(steady_lat, 99), 2),
        # The same target counted, not as a percentile: inferences in the swap window slower than 1.5x the
        # steady p99.  A longer install adds fast inferences to the window and lowers p99_ratio; this
        # count does not move with it (the target holds while it stays under 1% of swap_inferences).
        "slow_swap_inferences": sum(1 for lat in swap_lat if lat > 1.5 * pct(steady_lat, 99)),
        "steady_inferences": len(steady_lat),
        "swap_inferences": len(swap_lat),
        "excluded_inferences": sum(1 for *_, good in camera.samples if good) - len(steady_lat) - len(swap_lat),
        "swap_ms": round(max(install_ms), 1),
        "swap_ms_median": round(float(np.median(install_ms)), 1),
        "commit_ms_max": round(max(i["commit_ms"] for i in installs), 1),
        "model_load_ms": round(load_ms, 1),
        "first_install_ms": round(first_install_ms, 1),
        "decode_worker_starts": agent.worker_starts(),
        "install_wall_ms_max": round(max(i["wall_ms"] for i in installs), 1),
        "installs": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in i.items()} for i in installs],
        "rss_steady_mb": round(float(np.median(steady_rss)), 1) if steady_rss else None,
        # The figure: the most the agent (process + decode worker child) held during a swap.
        "peak_rss_mb": round(max(r + c for r, c in swap_rss), 1) if swap_rss else None,
        # The camera's process, and its child: the agent daemon (default) or the decode worker.
        "peak_rss_app_mb": round(max(r for r, _ in swap_rss), 1) if swap_rss else None,
        "peak_rss_child_mb": round(max(c for _, c in swap_rss), 1) if swap_rss else None,
        # Includes the bench's own publisher work (packing with zstd -19), which a car never does.
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=8)
    p.add_argument("--codec", default="lossless")
    p.add_argument("--steady-s", type=float, default=2.0, help="inference-only time before and after the updates")
    p.add_argument("--gap-s", type=float, default=0.5, help="inference-only time between updates")
    p.add_argument("--settle-s", type=float, default=0.05,
                   help="pause on each side of the publisher signing and placing an offer")
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--in-process-agent", action="store_true",
                   help="run the whole Agent in the camera's process (default: ModelHost + agent daemon)")
    p.add_argument("--in-process", action="store_true",
                   help="with --in-process-agent: decode in a thread of that process (decode_in_subprocess=False)")
    p.add_argument("--gil-switch-s", type=float, default=AgentConfig.gil_switch_interval_s,
                   help="AgentConfig.gil_switch_interval_s during installs; 0 keeps Python's 5 ms")
    p.add_argument("--worker-nice", type=int, default=AgentConfig.decode_worker_nice,
                   help="AgentConfig.decode_worker_nice: how far the decode worker lowers its priority")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    r = asyncio.run(run(args))
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['updates']} updates ({r['codec']}; agent {r['agent']}, decode in {r['decode']}), "
          f"{r['inferences']} inferences, "
          f"failed: {r['failed_inferences']}")
    print(f"inference p50/p99 steady: {r['p50_steady_ms']:.2f} / {r['p99_steady_ms']:.2f} ms "
          f"({r['steady_inferences']} inferences)")
    print(f"inference p50/p99 during swaps: {r['p50_swap_ms']:.2f} / {r['p99_swap_ms']:.2f} ms "
          f"({r['swap_inferences']} inferences; p99 ratio {r['p99_ratio']}x, target 1.5x; "
          f"{r['slow_swap_inferences']} slower than 1.5x the steady p99, {r['slow_swap_inferences'] / r['updates']:.1f} "
          "per update)")
    print(f"patch+decode+load+smoke+swap: max {r['swap_ms']} ms, median {r['swap_ms_median']} ms; "
          f"slot commit (fsync) max {r['commit_ms_max']} ms; bare model load {r['model_load_ms']} ms")
    for i in r["installs"]:
        print("  ", i)
    if r["agent"].startswith("in the camera"):
        print(f"first install (decode worker cold start) {r['first_install_ms']} ms; "
              f"worker processes started: {r['decode_worker_starts']}")
    else:
        print(f"first install {r['first_install_ms']} ms (the daemon started, and imported, before it)")
    child = "decode worker" if r["agent"].startswith("in the camera") else "agent daemon"
    print(f"RSS camera's process + {child}: steady {r['rss_steady_mb']} MB, peak during swaps {r['peak_rss_mb']} MB "
          f"(camera's process {r['peak_rss_app_mb']}, {child} {r['peak_rss_child_mb']}); "
          f"bench process peak (incl. its packing) {r['process_peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
