"""One simulated car: the real ``Agent`` behind a ``LinkTransport``, plus a camera that keeps asking it.

``SimAgent`` is the real agent observing itself through ``client.events`` (which
offers it saw and when, what each install moved, failures and rollbacks); it
downloads, resumes, verifies, decodes, smoke-tests and hot-swaps exactly as
the agent on a car does.  Two things are shared between the cars of one
simulator process, because thousands of cars share one machine here:

- ONNX Runtime sessions, one per model SHA-256 (``SharedSessions``): a car
  "loads" a model by getting the session the first car with that model built;
  the smoke test still runs on every car.
- Slot files with identical content (``DedupSlotStore``): each car still writes
  its slot atomically, but as a hard link to one copy per SHA-256.

``SimCar`` runs the agent's own ``run_forever`` loop and a camera loop that
calls ``agent.predict`` on the frames of its ``simulator.camera.Camera`` (road signs of its region, in its
climate's weather), counting failed inferences.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from client.agent import Agent
from client.atomic import write_atomic
from client.config import AgentConfig
from client.events import AgentEvents
from client.hotswap import ModelSource, NoModel, default_session_factory
from client.manifest import Offer
from client.slots import MODEL_FILE, PACKAGE_FILE, SlotStore
from protocol.platform import Platform
from simulator.camera import Camera
from simulator.fleet import CarSpec
from simulator.link import PROFILES, LinkClock, LinkTransport

#: The agent's own sleeps never go below this many real seconds (a health window polls every 0.05
#: simulated seconds, which at a time scale of 60 would spin the event loop for nothing).
MIN_REAL_SLEEP_S = 0.02


class SharedSessions:
    """Session factory that builds one ONNX Runtime session per model SHA-256 and hands it to every car."""

    def __init__(self, threads: int = 1) -> None:
        self._make = default_session_factory(threads)
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.built = 0

    def __call__(self, model: ModelSource, model_sha256: str) -> ort.InferenceSession:
        with self._guard:
            lock = self._locks.setdefault(model_sha256, threading.Lock())
        with lock:
            session = self._sessions.get(model_sha256)
            if session is None:
                session = self._sessions[model_sha256] = self._make(model, model_sha256)
                self.built += 1
            return session


class DedupSlotStore(SlotStore):
    """A ``SlotStore`` whose slot files are hard links into one content-addressed folder."""

    def __init__(self, state_dir: Path, cas_dir: Path, *, fsync: bool = False) -> None:
        super().__init__(state_dir, fsync=fsync)
        self.cas_dir = cas_dir
        cas_dir.mkdir(parents=True, exist_ok=True)

    def write_slot(self, slot: str, package: bytes, model: bytes, *, staged: Path | None = None) -> None:
        d = self.slot_dir(slot)
        if staged is not None:
            staged.unlink(missing_ok=True)  # the shared copy below replaces it
        for name, data in ((PACKAGE_FILE, package), (MODEL_FILE, model)):
            shared = self.cas_dir / hashlib.sha256(data).hexdigest()
            if not shared.exists():
                write_atomic(shared, data, fsync=self.fsync, what="shared slot file")
            tmp = d / f".{name}.link"
            tmp.unlink(missing_ok=True)
            os.link(shared, tmp)
            os.replace(tmp, d / name)  # the slot file changes in one step, as write_atomic's would


@dataclass(frozen=True)
class InstallRecord:
    """One completed install as the car saw it."""

    target_version: int
    artifact: str  # "delta" or "full"
    bytes_received: int
    package_bytes: int
    model_bytes: int
    offered_at_s: float  # simulated time the car first saw an offer for this version
    installed_at_s: float

    @property
    def time_to_update_s(self) -> float:
        return self.installed_at_s - self.offered_at_s


class SimAgent(Agent, AgentEvents):
    """The real agent, observing itself through ``client.events`` (no behaviour changed, nothing private
    overridden): which offers it saw and when, what each install moved, failures and rollbacks."""

    def __init__(self, config: AgentConfig, *, sim_clock: LinkClock, **kw: Any) -> None:
        self.sim_clock = sim_clock
        self.offered_at: dict[int, float] = {}
        self.last_state: dict[int, str] = {}
        self.failures: dict[int, str] = {}  # target version -> the reason the car reported
        self.installs: list[InstallRecord] = []
        self.rolled_back_count = 0
        self.polls = 0
        self.last_poll_at = -1.0
        self.last_offer: tuple[int, str] | None = None  # (target_version, model_sha256) of the latest poll
        super().__init__(config, clock=sim_clock.now, events=self, **kw)
        # The agent on a car judges an open health window every 0.05 s while it waits: nothing for one car,
        # but 20 wake-ups per simulated second for each of thousands of cars in one process.  Nothing is lost
        # by looking less often: the verdict changes only when an inference arrives (``build_car`` sets it
        # from the camera's interval).
        self.health_check_s = 1.0

    # -- client.events.AgentEvents ------------------------------------------

    def polled(self, offer: Mapping[str, Any] | None) -> None:
        self.polls += 1
        self.last_poll_at = self.sim_clock.now()
        signed = (offer or {}).get("signed") or {}
        if offer is None or not isinstance(signed.get("target_version"), int):
            self.last_offer = None
        else:
            self.last_offer = (signed["target_version"], str(signed.get("model_sha256")))
            self.offered_at.setdefault(signed["target_version"], self.sim_clock.now())

    def reported(self, offer: Offer, state: str, reason: str | None) -> None:
        self.last_state[offer.target_version] = state
        if state == "failed":
            self.failures[offer.target_version] = str(reason)

    def installed(self, offer: Offer, artifact: str, received: int, timings: Mapping[str, float]) -> None:
        now = self.sim_clock.now()
        self.installs.append(InstallRecord(offer.target_version, artifact, received, int(timings["package_bytes"]),
                                           int(timings["model_bytes"]), self.offered_at.get(offer.target_version, now),
                                           now))

    def rolled_back(self, version: int, reason: str) -> None:
        self.rolled_back_count += 1

    @property
    def quiet(self) -> bool:
        """The latest poll asked for nothing new: no offer, or one this car installed or refused for good."""
        if self.last_offer is None:
            return True
        version, sha = self.last_offer
        active = self.journal.active
        return (active is not None and active.model_sha256 == sha) or sha in self.journal.bad_models \
            or self.last_state.get(version) == "failed" and self.agent_state == "idle"


class SimCar:
    """A car: agent + link + camera.  ``start()`` launches its tasks; ``stop()`` ends them."""

    def __init__(self, spec: CarSpec, agent: SimAgent, link: LinkTransport, camera: Camera | np.ndarray,
                 inference_interval_s: float) -> None:
        self.spec = spec
        self.agent = agent
        self.link = link
        self._interval = inference_interval_s
        self._rng = random.Random(spec.seed ^ 0x5EED)
        # a plain array of images (every car the same) is still accepted: bench scripts and older callers
        self.camera: Camera | None = camera if isinstance(camera, Camera) else None
        self._images = None if isinstance(camera, Camera) else camera
        self.inferences = 0
        self.failed_inferences = 0
        self.inference_errors: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, delay_real_s: float = 0.0) -> None:
        """Boot the agent from its disk and start polling and inferring (after an optional stagger)."""
        if delay_real_s:
            await asyncio.sleep(delay_real_s)
        await self.agent.start()
        self._tasks = [asyncio.create_task(self.agent.run_forever(), name=f"{self.spec.device_id}-agent")]
        if self._interval > 0:
            self._tasks.append(asyncio.create_task(self._camera(), name=f"{self.spec.device_id}-camera"))

    async def _camera(self) -> None:
        clock = self.agent.sim_clock
        while True:
            await clock.sleep(self._interval * self._rng.uniform(0.5, 1.5))
            if self.camera is not None:
                image = self.camera.frame()
            else:
                assert self._images is not None
                image = self._images[self._rng.randrange(len(self._images))]
            try:
                await asyncio.to_thread(self.agent.predict, image)
            except NoModel:
                continue  # nothing installed yet: the camera pipeline has no model to ask
            except Exception as e:  # noqa: BLE001 - the point is to count every failure the app would see
                self.failed_inferences += 1
                if len(self.inference_errors) < 5:
                    self.inference_errors.append(f"{type(e).__name__}: {e}")
            self.inferences += 1

    async def stop(self, grace_real_s: float = 1.0) -> None:
        """Ask the agent to stop; a car still waiting on the network after ``grace_real_s`` is cut off."""
        self.agent.stop()
        for t in self._tasks[1:]:
            t.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_real_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.agent.aclose()

    def state(self) -> str:
        """What the car is doing now, for the live display."""
        if self.link.offline():
            return "offline"
        if self.agent.identity is None:
            return "enrolling"
        pending = self.agent.journal.pending
        if self.agent.agent_state == "downloading" and pending:
            return "installing" if pending.state in ("downloaded", "verified") else "downloading"
        if self.agent.last_offer is not None and self.agent.quiet and not self._installed_latest():
            return "failed"
        return "idle"

    def _installed_latest(self) -> bool:
        active = self.agent.journal.active
        return self.agent.last_offer is not None and active is not None \
            and active.model_sha256 == self.agent.last_offer[1]


def health_window_s(inference_interval_s: float) -> float:
    """Simulated length of a car's post-swap health window: long enough for its camera to ask at least five
    times (the agent judges no window on fewer), since the camera waits 0.5 to 1.5 intervals between frames."""
    return max(30.0, 8 * inference_interval_s)


_SSL = ssl.create_default_context()


class GateTransport(httpx.AsyncBaseTransport):
    """Caps the fleet's requests in flight at the registry (until response headers; bodies stream freely).

    Thousands of cars in one process can open more concurrent requests than a registry on a shared 2-core
    machine has worker threads and pooled connections; real fleets spread out over minutes, not milliseconds.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, gate: asyncio.Semaphore) -> None:
        self.inner = inner
        self.gate = gate

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with self.gate:
            return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def modelled_platform(spec: CarSpec) -> Platform:
    """What the car reports it can run (issue 20): its ONNX Runtime release's opsets and IR version
    (``protocol.platform.ORT_SUPPORT``), not this machine's, which runs every car's sessions whatever it reports."""
    return Platform.for_runtime(f"{spec.runtime}.0", ("CPUExecutionProvider",), "x86_64", 2048,
                                (spec.hw,))


def build_car(spec: CarSpec, *, server_url: str, enroll_token: str | None, root_public_key: bytes | None,
              state_root: Path, clock: LinkClock,
              sessions: SharedSessions, images: Camera | np.ndarray, line: str, poll_interval_s: float,
              inference_interval_s: float, gate: asyncio.Semaphore | None = None,
              http_timeout_s: float = 60.0) -> SimCar:
    """Wire one car: its state dir, its own connection behind its link, the shared sessions and slot files.

    ``images``: the car's ``Camera``, or an array of frames it draws from uniformly.
    """
    rng = random.Random(spec.seed)
    # Each car has its own connection (as a real car would); a shared TLS context saves building thousands.
    inner: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(
        verify=_SSL, limits=httpx.Limits(max_connections=2, max_keepalive_connections=1))
    if gate is not None:
        inner = GateTransport(inner, gate)
    link = LinkTransport(inner, PROFILES[spec.network], rng, clock)
    config = AgentConfig(
        server_url=server_url, device_id=spec.device_id, state_dir=state_root / spec.device_id, line=line,
        enroll_token=enroll_token, root_public_key=root_public_key, tags=dict(spec.tags), poll_interval_s=poll_interval_s,
        backoff_initial_s=5.0, backoff_max_s=max(60.0, poll_interval_s), http_timeout_s=http_timeout_s,
        health_window_max_s=health_window_s(inference_interval_s), fsync=False,
        # The GIL switch-interval tweak protects one car's camera thread; thousands of cars in one process
        # installing in turn would keep this whole process at 0.1 ms switches and slow every car down.
        gil_switch_interval_s=None,
        platform=modelled_platform(spec),
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)

    async def sleep(simulated_s: float) -> None:
        await asyncio.sleep(max(MIN_REAL_SLEEP_S, simulated_s / clock.time_scale))

    agent = SimAgent(config, sim_clock=clock, transport=link, session_factory=sessions, sleep=sleep,
                     rng=random.Random(spec.seed + 1))
    agent.health_check_s = max(1.0, min(inference_interval_s / 2, poll_interval_s / 4))
    agent.store = DedupSlotStore(config.state_dir, state_root / ".shared-slots")
    return SimCar(spec, agent, link, images, inference_interval_s)
