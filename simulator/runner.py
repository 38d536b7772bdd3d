"""``Fleet``: N simulated cars in one asyncio loop, with the questions a rehearsal asks of them.

Build it from ``plan_fleet`` specs, ``await start()``, then wait for what you
care about (``wait_settled`` after a rollout, or a fixed simulated duration),
read ``snapshot()`` for a live display and ``summary()`` at the end, and
``await stop()``.  Cars talk to the registry only over HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from simulator.camera import Camera, camera_pools
from simulator.car import SharedSessions, SimCar, build_car
from simulator.fleet import CarSpec, auto_inference_interval
from simulator.link import LinkClock
from simulator.stats import CarResult, summary

STATES = ("enrolling", "idle", "downloading", "installing", "failed", "offline")


SIM_THREADS = 32


class Fleet:
    """Many cars against one registry.  Times given to it are simulated seconds unless named ``real``."""

    def __init__(self, server_url: str, specs: list[CarSpec], state_root: Path, *, enroll_token: str | None,
                 root_public_key: bytes | None = None, time_scale: float = 60.0, poll_interval_s: float = 60.0, line: str = "road-signs",
                 inference_interval_s: float | None = None, http_timeout_s: float = 60.0,
                 max_in_flight: int | None = 24) -> None:
        self.server_url = server_url
        self.specs = specs
        self.state_root = Path(state_root)
        self.enroll_token = enroll_token
        self.root_public_key = root_public_key  # the fleet's root key: cars that enrol need it
        self.clock = LinkClock(time_scale)
        self.poll_interval_s = poll_interval_s
        self.line = line
        self.inference_interval_s = inference_interval_s or auto_inference_interval(len(specs), time_scale)
        self.http_timeout_s = http_timeout_s
        self.max_in_flight = max_in_flight
        self.sessions = SharedSessions()
        self.cars: list[SimCar] = []
        self.start_versions: dict[str, int] = {}
        self._t0 = time.monotonic()
        self._rate_mark = (time.monotonic(), 0)
        self.rate_bytes_per_s = 0.0

    async def start(self, spread_real_s: float | None = None) -> None:
        """Boot every car from its state dir and start them, staggered over ``spread_real_s`` (default: one poll)."""
        self.state_root.mkdir(parents=True, exist_ok=True)
        # Every car's camera inferences, slot I/O and decode calls go through asyncio.to_thread, and decode
        # calls queue for the one shared decode worker; with the default pool (cores + 4 = 6 threads on
        # this machine) a few waiting decodes leave no thread for inferences or the operator's calls.
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=SIM_THREADS, thread_name_prefix="sim"))
        pools = await asyncio.to_thread(camera_pools)  # rendered once per process, shared by every car
        gate = asyncio.Semaphore(self.max_in_flight) if self.max_in_flight else None
        self.cars = [
            build_car(spec, server_url=self.server_url, enroll_token=self.enroll_token,
                      root_public_key=self.root_public_key, state_root=self.state_root,
                      clock=self.clock, sessions=self.sessions,
                      images=Camera(pools, spec.region, spec.climate, random.Random(spec.seed ^ 0xCA3E7A)),
                      line=self.line,
                      poll_interval_s=self.poll_interval_s, inference_interval_s=self.inference_interval_s,
                      gate=gate, http_timeout_s=self.http_timeout_s)
            for spec in self.specs
        ]
        spread = self.poll_interval_s / self.clock.time_scale if spread_real_s is None else spread_real_s
        n = len(self.cars)
        await asyncio.gather(*(car.start(spread * i / n) for i, car in enumerate(self.cars)))
        self.start_versions = {c.spec.device_id: c.agent.running_version for c in self.cars}
        self._t0 = time.monotonic()

    async def stop(self) -> None:
        await asyncio.gather(*(car.stop() for car in self.cars), return_exceptions=True)

    # -- questions ----------------------------------------------------------

    @property
    def bytes_moved(self) -> int:
        return sum(c.link.artifact_bytes for c in self.cars)

    def snapshot(self) -> dict[str, Any]:
        """Cars per state and per running version, artifact bytes moved and the current rate."""
        states = dict.fromkeys(STATES, 0)
        versions: dict[int, int] = {}
        for c in self.cars:
            states[c.state()] += 1
            v = c.agent.running_version
            versions[v] = versions.get(v, 0) + 1
        moved = self.bytes_moved
        now = time.monotonic()
        t, b = self._rate_mark
        if now - t >= 1.0:
            self.rate_bytes_per_s = (moved - b) / (now - t)
            self._rate_mark = (now, moved)
        return {"states": states, "versions": dict(sorted(versions.items())), "bytes": moved,
                "rate_bytes_per_s": self.rate_bytes_per_s, "sim_s": self.clock.now(),
                "wall_s": now - self._t0, "failed_inferences": sum(c.failed_inferences for c in self.cars)}

    def settled(self, since_sim_s: float, include_offline: bool = False) -> bool:
        """Every car (or every online car) has polled since ``since_sim_s``, asked for nothing new, is idle,
        has sent its reports and has no health window open (a car on probation may still roll back)."""
        for c in self.cars:
            if c.link.offline() and not include_offline:
                continue
            a = c.agent
            if (a.last_poll_at < since_sim_s or not a.quiet or a.agent_state != "idle" or a.journal.outbox
                    or a.health_window_open):
                return False
        return True

    async def wait_for(self, done: Callable[[], bool], timeout_real_s: float,
                       tick: Callable[[dict[str, Any]], None] | None = None, every_real_s: float = 0.5) -> bool:
        """Wait until ``done()`` (True) or the timeout (False), calling ``tick(snapshot)`` on the way."""
        deadline = time.monotonic() + timeout_real_s
        while True:
            if tick:
                tick(self.snapshot())
            if done():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(every_real_s)

    async def wait_settled(self, timeout_real_s: float, tick: Callable[[dict[str, Any]], None] | None = None,
                           since_sim_s: float | None = None, include_offline: bool = False) -> bool:
        since = self.clock.now() if since_sim_s is None else since_sim_s
        return await self.wait_for(lambda: self.settled(since, include_offline), timeout_real_s, tick)

    def results(self) -> list[CarResult]:
        out = []
        for c in self.cars:
            a = c.agent
            installs = [{**asdict(i), "time_to_update_s": round(i.time_to_update_s, 2)} for i in a.installs]
            latest = max(a.last_state) if a.last_state else None
            out.append(CarResult(
                device_id=c.spec.device_id, network=c.spec.network,
                start_version=self.start_versions.get(c.spec.device_id, 0), end_version=a.running_version,
                installs=installs, failed=latest is not None and a.last_state[latest] == "failed",
                rolled_back=a.rolled_back_count, artifact_bytes=c.link.artifact_bytes, drops=c.link.drops,
                inferences=c.inferences, failed_inferences=c.failed_inferences, offline_now=c.link.offline(),
                failures=dict(a.failures), runtime=c.spec.runtime,
                end_model_sha256=a.journal.active.model_sha256 if a.journal.active else None,
            ))
        return out

    def summary(self) -> dict[str, Any]:
        data = summary(self.results(), time.monotonic() - self._t0, self.clock.time_scale)
        data["sessions_built"] = self.sessions.built
        return data
