"""Scale run: N simulated cars (default 10,000) through a 3-stage rollout on this machine.

    .venv/bin/python bench/fleet.py --cars 10000 [--time-scale 60] [--polls-per-s 150] [--initial-install] [--json]

Starts ``ota serve`` in a child process (SQLite in a temp data dir, or --database-url) and publishes v1.

By default the cars leave the factory with v1 already on disk (a real fleet is flashed at the factory, it
does not download its first model over the air): the v1 package is fetched from the registry once, decoded
once, and written into every car's state dir as its active slot.  The cars boot it, enrol, and poll with
it, so the run measures the staged v2 rollout, not 10,000 initial full downloads.  ``--initial-install``
instead lets every car enrol empty and download and install v1 in full first (measured as its own phase).

Then v2 is published and rolled out in three stages (1%, 10%, 100%; auto-advance at 90% installed after a
short soak).  Reports per phase: wall time, the server process's CPU (user+sys, via psutil) and the
simulator's, bytes the server measured, cars updated, and the simulated time-to-update percentiles per
network.  Cars share ONNX Runtime sessions per model SHA-256 and identical slot files (see
``ota simulate --help``); every car still downloads, verifies, patches, decodes, smoke-tests and swaps on
its own.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.demo_cmd import running_server  # noqa: E402
from cli.simulate_cmd import add_initial_install_option  # noqa: E402
from client.trust import read_root_key  # noqa: E402
from models.zoo import ZOO_DIR, contract, model_path  # noqa: E402
from simulator.factory import describe_flash, flash_fleet  # noqa: E402
from simulator.fleet import auto_poll_interval, plan_fleet  # noqa: E402
from simulator.registry_admin import RegistryAdmin  # noqa: E402
from simulator.runner import Fleet  # noqa: E402
from simulator.stats import percentile  # noqa: E402

# The operator's calls get threads of their own: every car's decode call waits in the loop's default pool
# (first in, first out) for the one shared decode worker, and with thousands queued there the monitor's
# calls waited minutes behind them.
_ADMIN_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="operator")


async def _admin(fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_ADMIN_POOL, functools.partial(fn, *args, **kw))


class _Meter:
    """CPU seconds of the server and of this process, and wall time, between two marks."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self.me = psutil.Process(os.getpid())

    def mark(self) -> tuple[float, float, float]:
        def cpu(p: psutil.Process) -> float:
            t = p.cpu_times()
            return t.user + t.system + t.children_user + t.children_system

        return time.monotonic(), cpu(self.server), cpu(self.me)

    @staticmethod
    def since(a: tuple[float, float, float], b: tuple[float, float, float]) -> dict[str, float]:
        wall = b[0] - a[0]
        return {"wall_s": round(wall, 1), "server_cpu_s": round(b[1] - a[1], 1),
                "server_cpu_pct_of_one_core": round(100 * (b[1] - a[1]) / wall, 1) if wall else 0.0,
                "simulator_cpu_s": round(b[2] - a[2], 1)}


def _times(fleet: Fleet, version: int) -> dict[str, Any]:
    times = [i.time_to_update_s for c in fleet.cars for i in c.agent.installs if i.target_version == version]
    kinds = [i.artifact for c in fleet.cars for i in c.agent.installs if i.target_version == version]
    return {"installed": len(times), "via_delta": kinds.count("delta"),
            "p50_time_to_update_sim_s": percentile(times, 50), "p95_time_to_update_sim_s": percentile(times, 95)}


async def _boot(args: argparse.Namespace, srv: Any, admin: RegistryAdmin, fleet: Fleet, v1: dict[str, Any],
                meter: _Meter, log: Any) -> dict[str, Any]:
    """Bring the fleet onto v1: flashed at the factory (default) or installed over the air."""

    def tick(s: dict[str, Any]) -> None:
        log(f"  {s['wall_s']:6.0f}s  {s['states']}  versions {s['versions']}  moved {s['bytes'] / 1e6:.0f} MB")

    out: dict[str, Any] = {}
    if not args.initial_install:
        out["factory_image"] = await asyncio.to_thread(flash_fleet, admin, v1, fleet.specs, fleet.state_root, "deep")
        log(describe_flash(out["factory_image"]))
    a = meter.mark()
    await fleet.start(spread_real_s=args.start_spread)
    await fleet.wait_for(lambda: fleet.settled(0.0, include_offline=True), args.phase_timeout, _every(tick, 15))
    b = meter.mark()
    phase = "phase_v1_full" if args.initial_install else "phase_boot_enrol"
    out[phase] = {**meter.since(a, b), **_times(fleet, v1["version"]), "bytes_cars_received": fleet.bytes_moved,
                  "cars_on_v1": fleet.snapshot()["versions"].get(v1["version"], 0)}
    log(f"{phase}: {out[phase]}")
    return out


async def _run(args: argparse.Namespace, srv: Any, meter: _Meter, log: Any) -> dict[str, Any]:
    admin = RegistryAdmin(srv.url, srv.admin_token)
    line = "road-signs"
    poll_s = auto_poll_interval(args.cars, args.time_scale, max_polls_per_real_s=args.polls_per_s)
    out: dict[str, Any] = {"cars": args.cars, "time_scale": args.time_scale, "poll_interval_sim_s": round(poll_s),
                           "cpus": psutil.cpu_count(), "database": "postgresql" if args.database_url else "sqlite",
                           "start": "initial install (full v1 download)" if args.initial_install
                           else "factory-installed v1 (not downloaded)"}
    v1 = await _admin(admin.publish, model_path("v1"), line, "v1", contract=contract("v1").to_dict(),
                      probe=ZOO_DIR / "probe.npz")  # the line's images: its deep packages are gated on them
    fleet = Fleet(srv.url, plan_fleet(args.cars, args.networks, args.seed, "car"), Path(args.state_dir), line=line,
                  enroll_token=srv.enrollment_token, root_public_key=read_root_key(Path(srv.data_dir) / "root.pub"),
                  time_scale=args.time_scale, poll_interval_s=poll_s,
                  inference_interval_s=args.inference_interval, http_timeout_s=120, max_in_flight=args.max_in_flight)

    def tick(s: dict[str, Any]) -> None:
        log(f"  {s['wall_s']:6.0f}s  {s['states']}  versions {s['versions']}  moved {s['bytes'] / 1e6:.0f} MB")

    out.update(await _boot(args, srv, admin, fleet, v1, meter, log))
    v2 = await _admin(admin.publish, model_path("v2"), line, "v2", contract=contract("v2").to_dict())
    moved0 = fleet.bytes_moved
    installs0 = {c.spec.device_id: len(c.agent.installs) for c in fleet.cars}
    stages = [{"percent": p, "min_soak_s": 5, "success_threshold_pct": 90} for p in (1, 10, 100)]
    a = meter.mark()
    r = await _admin(admin.start_rollout, line, v2["version"], stages, error_threshold_pct=20)
    stage_walls: list[float] = []
    t_stage, seen = time.monotonic(), 0
    deadline = time.monotonic() + args.phase_timeout
    while time.monotonic() < deadline:
        ro = await _admin(admin.rollout, r["id"])
        if ro["current_stage"] != seen or ro["state"] != "running":
            stage_walls.append(round(time.monotonic() - t_stage, 1))
            t_stage, seen = time.monotonic(), ro["current_stage"]
            log(f"  rollout {ro['state']} stage {ro['current_stage']} after {stage_walls[-1]} s")
        if ro["state"] != "running":
            break
        tick(fleet.snapshot())
        await asyncio.sleep(5)
    b = meter.mark()
    acc = await _admin(admin.accounting, r["id"])
    out["phase_v2_rollout"] = {**meter.since(a, b), **_times(fleet, v2["version"]), "state": ro["state"],
                               "stage_wall_s": stage_walls, "bytes_cars_received": fleet.bytes_moved - moved0,
                               "server_bytes_sent": acc["totals"]["bytes_sent"],
                               "fp32_bytes_equivalent": acc["totals"]["fp32_bytes_equivalent"],
                               "package_bytes_equivalent": acc["totals"]["package_bytes_equivalent"],
                               "devices_updated": acc["totals"]["devices_updated"]}
    log(f"v2 rollout: {out['phase_v2_rollout']}")
    summary = fleet.summary()
    await fleet.stop()
    admin.close()
    out["v2_per_network"] = _per_network(fleet, v2["version"], installs0)
    out["fleet"] = {k: summary[k] for k in ("updated", "failed", "rolled_back", "bytes_sent", "bytes_full_fp32",
                                            "bytes_full_package", "drops", "inferences", "failed_inferences")}
    out["peak_rss_mb"] = {"server": round(meter.server.memory_info().rss / 1e6), "simulator":
                          round(meter.me.memory_info().rss / 1e6)}
    return out


def _per_network(fleet: Fleet, version: int, installs_before: dict[str, int]) -> list[dict[str, Any]]:
    """Per network profile, for the v2 rollout only: cars, cars updated, p50/p95 simulated time to update, bytes."""
    rows: dict[str, dict[str, Any]] = {}
    for c in fleet.cars:
        row = rows.setdefault(c.spec.network, {"network": c.spec.network, "cars": 0, "updated": 0, "times": [],
                                               "bytes": 0})
        row["cars"] += 1
        new = [i for i in c.agent.installs[installs_before.get(c.spec.device_id, 0):] if i.target_version == version]
        row["updated"] += bool(new)
        row["times"] += [i.time_to_update_s for i in new]
        row["bytes"] += sum(i.bytes_received for i in new)
    return [{"network": r["network"], "cars": r["cars"], "updated": r["updated"],
             "p50_time_to_update_sim_s": percentile(r["times"], 50),
             "p95_time_to_update_sim_s": percentile(r["times"], 95), "v2_bytes_received": r["bytes"]}
            for r in sorted(rows.values(), key=lambda r: ["2g", "3g", "lte", "wifi"].index(r["network"])
                            if r["network"] in ("2g", "3g", "lte", "wifi") else 9)]


def _every(fn: Any, seconds: float) -> Any:
    last = [0.0]

    def call(s: dict[str, Any]) -> None:
        if time.monotonic() - last[0] >= seconds:
            last[0] = time.monotonic()
            fn(s)

    return call


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cars", type=int, default=10_000)
    p.add_argument("--networks", default="mixed")
    p.add_argument("--time-scale", type=float, default=60.0)
    p.add_argument("--polls-per-s", type=float, default=150.0, help="target real polls per second for the fleet")
    add_initial_install_option(p)
    p.add_argument("--max-in-flight", type=int, default=8,
                   help="cap on the fleet's requests in flight at the registry (default 8; 0: none).  Not needed "
                        "for correctness (an unthrottled burst of 200 cars enrols in ~15 s on SQLite): it keeps this "
                        "one simulator process from opening thousands of connections at once")
    p.add_argument("--start-spread", type=float, default=60.0, help="real seconds over which the cars boot")
    p.add_argument("--inference-interval", type=float, help="simulated s between a car's inferences (default: ~50 real/s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phase-timeout", type=float, default=1800.0, help="real seconds per phase")
    p.add_argument("--database-url", help="PostgreSQL URL (default: SQLite in the temp data dir)")
    p.add_argument("--state-dir", help="car state (default: a temp dir)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    logging.getLogger("client").setLevel(logging.ERROR)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    with tempfile.TemporaryDirectory(prefix="ota-fleet-") as tmp:
        args.state_dir = args.state_dir or str(Path(tmp) / "cars")
        # Every simulated car enrolls from 127.0.0.1: lift the per-address enrolment allowance (server/limits.py).
        env = {"OTA_ENROLL_BURST": str(max(args.cars, 1000))}
        if args.database_url:
            env["OTA_DATABASE_URL"] = args.database_url
        with running_server(Path(tmp) / "server", codecs="deep", extra_env=env) as srv:
            out = asyncio.run(_run(args, srv, _Meter(srv.pid), log))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
