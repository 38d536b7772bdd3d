"""The car agent: enrol, poll, download, verify, install, hot-swap, report.

Read ``run_forever`` -> ``poll_once`` -> ``handle_offer`` -> ``_install`` top to
bottom: that is the whole update path.  The core is async so a simulator can
run thousands of agents in one event loop; ``run()`` is the blocking wrapper
``ota agent`` uses.  Patch and decode run in a child process (``decode_worker``:
they would hold this process's GIL and stall the camera thread); ONNX Runtime
loads and smoke tests run in worker threads here, where the session is used.
``predict`` is plain and thread-safe: the camera thread calls it while all of
this happens.  A car application that cannot spare even that much of its GIL
runs the agent as a daemon instead (``client.modelhost``: the sessions stay in
the application's process, this class drives them from ``client.agentd``).

Crash safety comes from ``slots`` (what is installed, in one atomic journal);
this module only decides.  Trust comes from ``manifest`` (pure checks).

Shadow mode and live comparisons (issue 18, ``protocol.quality``): an offer whose
quality plan says ``shadow`` is downloaded, verified and staged in a slot the
journal names ``shadow`` (never ``active``), loaded beside the live model and
compared with it on sampled frames (``client.shadow``); the car reports
``verified`` and stays there.  The same version offered without shadow mode is
installed from that slot, without a second download.  A ``live`` plan installs
as usual and runs the previous version beside the new one during the health
window, rolling back when agreement falls below the plan's threshold.  The
latest cumulative summary of each comparison rides on the report requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from client import reports
from client.api import RegistryClient
from client.config import AgentConfig, clamp_server_poll_interval
from client.decode_worker import Decoder, InProcessDecoder, shared_worker
from client.download import DownloadSpec, fetch, remove_partial
from client.errors import (
    AgentError,
    DownloadError,
    HashMismatch,
    OfferRejected,
    ServerError,
    SmokeTestFailed,
    StorageError,
    Unauthorized,
    UnknownKey,
    VerificationError,
)
from client.events import AgentEvents
from client.hotswap import (
    Comparison,
    HotSwapper,
    LoadedModel,
    Prediction,
    SessionFactory,
    Swapper,
    default_session_factory,
    gil_switch_interval,
)
from client.identity import (
    DEVICE_KEY_FILE,
    DeviceKey,
    Identity,
    load_identity,
    load_or_create_device_key,
    save_identity,
)
from client.manifest import Artifact, Offer, check_offer
from client.pollloop import PollLoop
from client.progress import IllegalStep, PendingUpdate
from client.ratelimit import TokenBucket
from client.slots import PACKAGE_FILE, Journal, SlotRecord, SlotStore
from client.tls import registry_transport
from client.trust import Status, TrustKeeper, check_status, verify_by_any
from models.errors import BaseMismatch, CorruptPackage, DeltaError
from protocol.quality import CONFIDENCE_COLLAPSE_RATIO, QualityPlan
from protocol.report import UpdateState

log = logging.getLogger("client.agent")


class _DeltaUnusable(AgentError):
    """The delta does not apply to this car's package (or gives another package): fetch the full one."""


__all__ = ["Agent", "Prediction"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Held:
    """A verified update waiting for the application's ``safe_to_swap``: what ``_commit`` needs."""

    offer: Offer
    slot: str
    loaded: Any
    received: int
    artifact: str


class Agent(PollLoop):
    """One car.  Build it, ``await start()``, then ``await run_forever()`` (or ``run()`` to block)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        session_factory: SessionFactory | None = None,
        swapper: Swapper | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        api: RegistryClient | None = None,
        trust: TrustKeeper | None = None,
        seq: reports.SeqCounter | None = None,
        safe_to_swap: Callable[[], bool] | None = None,
        events: AgentEvents | None = None,
    ) -> None:
        """``api``, ``trust`` and ``seq`` are shared by the lines of a car on several (``client.multiagent``):
        one HTTP client and token, one delegation, and one report ``seq`` counter (the registry knows one per
        device).  By default the agent makes its own.

        ``safe_to_swap`` (issue 21): the car application's rule for when a new model may go live (parked,
        ignition off, its own test); None: always.  A verified update waits at ``verified``, loaded, until it
        returns True; the agent asks on its wait loop (every ``swap_check_s``) and on each poll.  A car with no
        model yet installs its first at once (there is nothing to keep serving).

        ``events``: an observer told of polls, reports, installs and rollbacks (``client.events``)."""
        if config.gil_switch_interval_s is not None and not config.gil_switch_interval_s > 0:
            raise ValueError(f"gil_switch_interval_s must be > 0 or None, got {config.gil_switch_interval_s}")
        self.config = config
        self.events = events or AgentEvents()
        self.store = SlotStore(config.slots_dir or config.state_dir, fsync=config.fsync)
        #: The live session's owner: here, or (``client.agentd``) in the car application's process.
        self.swapper: Swapper = swapper or HotSwapper(
            session_factory or default_session_factory(config.inference_threads))
        # One child per process, shared by every agent in it (a simulator runs thousands).
        self.decoder: Decoder = (
            shared_worker(idle_s=config.decode_worker_idle_s, nice=config.decode_worker_nice)
            if config.decode_in_subprocess
            else InProcessDecoder()
        )
        self.api = api or RegistryClient(config.server_url,
                                         transport=transport or registry_transport(config.ca_cert_path),
                                         timeout_s=config.http_timeout_s)
        self.seq = seq
        self.bucket = (
            TokenBucket(config.max_rate_bytes_per_s, config.rate_burst_bytes, clock=clock, sleep=sleep)
            if config.max_rate_bytes_per_s
            else None
        )
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self.journal = Journal()
        # What this car can run (issue 20), sent in full at enrolment and on the first poll of the process (the
        # registry may hold an older one: a runtime upgrade restarts the agent), then as its digest.
        if config.platform is None:  # measured from the local ONNX Runtime (a ModelHost's daemon is handed it)
            from client.platform_probe import current_platform

            self.platform = current_platform(config.hardware)
        else:
            self.platform = config.platform
        self._platform_sent = False
        self.identity: Identity | None = None
        self.trust = trust or TrustKeeper(config.root_public_key, config.state_dir / "trust.json", fsync=config.fsync)
        #: The latest verified "no offer" status: the registry had nothing for this car until its expiry.
        self.status: Status | None = None
        #: The car's own key pair (``start`` loads or generates it): proves re-enrolments, signs reports.
        self.device_key: DeviceKey | None = None
        self.poll_interval_s = config.poll_interval_s or 60.0
        self.agent_state = "idle"
        self._health_deadline: float | None = None
        #: The comparison running (shadow or health window), its plan and when its next summary is due.
        self._quality_plan: QualityPlan | None = None
        self._quality_due: float | None = None
        #: The latest install: phase durations (patch_ms, decode_ms, load_smoke_ms, commit_ms, swap_ms)
        #: and sizes (package_bytes, model_bytes).
        self.last_install: dict[str, float] = {}
        #: Artifact bytes read from the wire by this agent object (all downloads, retries included).
        self.bytes_received_total = 0
        self._stop = asyncio.Event()
        self.safe_to_swap: Callable[[], bool] | None = safe_to_swap
        #: A verified update the application did not allow to swap yet (see ``safe_to_swap``).
        self._held: _Held | None = None

    # -- the application's API ---------------------------------------------

    def predict(self, image: np.ndarray) -> Prediction:
        """Classify a uint8 image of any size (HxW grey, HxWx3 RGB) with the live model, through the input
        contract its offer signed; safe from any thread, answers during updates.

        Raises:
            BadImage: not a uint8 image.
            NoModel: the car has never installed a model.
            AgentError: the live session is in another process (``client.modelhost.ModelHost.predict``).
        """
        if not isinstance(self.swapper, HotSwapper):
            raise AgentError("this agent runs as a daemon; the car application predicts through its ModelHost")
        return self.swapper.predict(image)

    @property
    def running_version(self) -> int:
        return self.journal.active.version if self.journal.active else 0

    @property
    def swap_waiting(self) -> int | None:
        """The version verified and loaded but waiting for ``safe_to_swap``, or None."""
        return self._held.offer.target_version if self._held is not None else None

    @property
    def health_window_open(self) -> bool:
        """The latest swap is still on probation: live inferences are counted and it may yet roll back."""
        return self._health_deadline is not None

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Read identity and journal, and boot the newest slot that still verifies."""
        self.device_key = load_or_create_device_key(self.config.state_dir / DEVICE_KEY_FILE,
                                                    fsync=self.config.fsync)
        self.identity = load_identity(self.config.state_dir / "identity.json")
        if self.identity:
            self.api.device_token = self.identity.device_token
        self.journal = self.store.load()
        await self._boot()

    async def _boot(self) -> None:
        j = self.journal
        changed = False
        for name in ("active", "previous", "shadow"):
            rec: SlotRecord | None = getattr(j, name)
            if rec is not None and not await asyncio.to_thread(self.store.verify, rec):
                log.warning("%s slot %s (v%d) fails verification at boot; dropping it", name, rec.slot, rec.version)
                setattr(j, name, None)
                changed = True
        while j.active is not None or j.previous is not None:
            if j.active is None:
                j.active, j.previous = j.previous, None
                changed = True
            rec = j.active
            assert rec is not None
            try:
                loaded = await asyncio.to_thread(
                    self.swapper.load_sync, self.store.model_path(rec), version=rec.version,
                    model_sha256=rec.model_sha256, contract=rec.contract,
                )
            except SmokeTestFailed as e:  # its contract does not fit it (a record older than contracts)
                log.warning("active slot %s (v%d) does not load at boot (%s); dropping it", rec.slot, rec.version, e)
                j.active = None
                changed = True
                continue
            self.swapper.swap(loaded, health_window=False)
            log.info("booted v%d from slot %s (model %s)", rec.version, rec.slot, rec.model_sha256[:12])
            break
        else:
            log.info("no verified model on disk; waiting for the first update")
        if changed:
            self.store.save(j)
        try:
            self.store.clear_unnamed(j)  # what a crash mid-install left in the slot it was writing
        except StorageError as e:
            log.warning("%s", e)

    async def aclose(self) -> None:
        await self.api.aclose()

    def stop(self) -> None:
        """Ask ``run_forever`` to return after its current step."""
        self._stop.set()

    def _server_interval(self) -> float:
        return self.poll_interval_s

    def _forget_identity(self) -> None:
        self.identity = None  # re-enrol by proving the car's key

    #: Seconds between two looks at an open health window while waiting (the simulator looks less often).
    health_check_s: float = 0.05
    #: Seconds between two calls of ``safe_to_swap`` while an update waits for it.
    swap_check_s: float = 0.2

    async def _wait(self, delay: float) -> None:
        """Sleep ``delay`` (on the injected clock), judging an open health window meanwhile; stop wakes it."""
        end = self._clock() + delay
        while not self._stop.is_set():
            left = end - self._clock()
            if left <= 0:
                return
            step = left
            if self._health_deadline is not None:
                await self.check_health()
                step = min(left, self.health_check_s)
            if self._held is not None:
                self.swap_if_allowed()
                if self._held is not None:
                    step = min(step, self.swap_check_s)
            if self._quality_due is not None:
                await self.report_quality()
                if self._quality_due is not None:  # still comparing: wake for the next summary
                    step = min(step, max(0.01, self._quality_due - self._clock()))
            sleeper = asyncio.ensure_future(self._sleep(step))
            stopper = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            stopper.cancel()

    async def ensure_enrolled(self) -> None:
        """Enrol (or re-enrol by proof of the car's key) and take the fleet key the root key vouches for.

        Every enrolment carries the car's public key and a proof signed by it: for an id the server already
        holds with this key, the proof alone re-enrols it (no enrolment token needed, a car whose token was
        lost recovers by itself); for a new id the server wants the enrolment token and ignores the proof.

        The fleet key the answer presents is believed only through its root-signed delegation (no trust on
        first use), so a key rotated with ``ota keys rotate`` is followed and a stranger's key is not.

        Raises:
            AgentError: never enrolled and no enrollment token given.
            ServerError: the id is enrolled with another key (409: the operator must reauthorise it).
            OfferRejected: no root key configured, or the answer's key is not vouched for by the root key.
        """
        if self.identity is not None:
            return
        path = self.config.state_dir / "identity.json"
        pinned = load_identity(path)
        if pinned is None and not self.config.enroll_token:
            raise AgentError("this car is not enrolled: start it once with --enroll-token")
        if self.config.root_public_key is None:
            raise OfferRejected("this car has no root key, so it cannot tell the registry from an impostor: "
                                "provision the fleet's root public key (ota agent --root-key FILE)")
        if self.device_key is None:
            self.device_key = load_or_create_device_key(self.config.state_dir / DEVICE_KEY_FILE,
                                                        fsync=self.config.fsync)
        e = await self.api.enroll(self.config.device_id, self.config.enroll_token, self.config.tags,
                                  public_key=self.device_key.public_b64,
                                  proof=self.device_key.enroll_proof(
                                      self.config.device_id, int(self._wall_clock().timestamp() * 1000)),
                                  platform=self.platform.to_dict() if self.platform else None)
        self._platform_sent = self.platform is not None
        delegation = self.trust.accept(e.delegation, self._wall_clock())
        if e.key_id not in delegation.keys or delegation.keys[e.key_id] != e.public_key:
            raise OfferRejected(f"enrolment presented key {e.key_id[:12]}, which the root-signed delegation "
                                f"v{delegation.version} does not name")
        self.identity = Identity(e.device_id, e.device_token, e.public_key, e.key_id)
        save_identity(path, self.identity, fsync=self.config.fsync)
        self.api.device_token = e.device_token
        self.poll_interval_s = clamp_server_poll_interval(self.config, e.poll_interval_s)
        log.info("enrolled as %s; pinned key %s", e.device_id, e.key_id[:12])

    async def poll_once(self) -> None:
        """One cycle: send queued reports, poll, act on an offer, send the new reports.

        Raises:
            Offline, ServerError, Unauthorized: the poll itself failed (reports stay queued).
        """
        await self.report_quality(flush=False)
        await self.flush_reports()
        active = self.journal.active
        result = await self.api.poll(
            self.config.line,
            active.version if active else 0,
            active.model_sha256 if active else None,
            active.package_sha256 if active else None,
            self.agent_state,
            platform_sha256=self.platform.digest() if self.platform else None,
            platform=self.platform.to_dict() if self.platform and not self._platform_sent else None,
        )
        self._platform_sent = True
        self.events.polled(result.offer)
        self.poll_interval_s = clamp_server_poll_interval(self.config, result.poll_interval_s)
        if result.offer is not None:
            await self.handle_offer(result.offer)
        else:
            assert self.identity is not None
            signed = await self.verified(result.status, "status")
            self.status = check_status(signed, device_id=self.identity.device_id, now=self._wall_clock())
            if self.journal.shadow is not None:
                self._end_shadow("no offer: the rollout was halted, aborted or moved on")
            if self._held is not None:
                self._drop_held("no offer: the rollout was halted, aborted or moved on")
        await self.flush_reports()

    async def verified(self, envelope: Any, what: str) -> dict[str, Any]:
        """``envelope["signed"]`` if a key the fleet's root vouches for signed it.

        A signature by a key the car does not know yet (the online key was rotated), or an expired
        delegation, makes it fetch the registry's current delegation once and verify that with the root key.

        Raises:
            OfferRejected: not signed by a trusted key (also after the refresh), or the refresh's delegation
                does not verify.
            ServerError, Offline: the refresh could not be fetched.
        """
        assert self.identity is not None, "enrol before verifying the registry's answers"
        pinned = {self.identity.key_id: self.identity.public_key}
        now = self._wall_clock()
        if not self.trust.expired(now):
            try:
                return verify_by_any(envelope, self.trust.keys(pinned), what)
            except UnknownKey:
                if self.trust.root is None:
                    raise
        self.trust.accept(await self.api.keys(), now)
        return verify_by_any(envelope, self.trust.keys(pinned), what)

    async def flush_reports(self) -> None:
        """Send the outbox (and quality summaries) if the server is reachable; otherwise keep them on disk."""
        if not self.journal.outbox and not self.journal.quality:
            return
        try:
            sign = self.device_key.sign_report if self.device_key is not None else None
            answered = await reports.flush(self.api, self.journal, sign=sign)
        except (ServerError, DownloadError) as e:
            log.info("reports kept for later (%d queued): %s", len(self.journal.outbox), e)
            return
        if answered:
            self.store.save(self.journal)

    # -- offers -------------------------------------------------------------

    def _enqueue(self, journal: Journal, **kw: Any) -> None:
        """``reports.enqueue`` with the car's shared seq counter (several lines: one counter per device)."""
        with reports.shared_seq(journal, self.seq):
            reports.enqueue(journal, **kw)

    def _queue_quality(self, summary: Any) -> dict[str, Any] | None:
        with reports.shared_seq(self.journal, self.seq):
            return reports.queue_quality(self.journal, summary)

    def _report(self, offer: Offer, state: str, **kw: Any) -> None:
        """Queue the report of ``state`` for this offer, stepping the pending update through the protocol's table.

        A step the table forbids is a bug of this agent: the registry would refuse the report, so it is logged
        and not queued (the car keeps serving; its update continues from the state it was in)."""
        pending = self.journal.pending
        started = pending.started_at if pending is not None else self._wall_clock().timestamp()
        if pending is not None:
            try:
                pending.step(state)
            except IllegalStep as e:
                log.error("not reporting %s for v%d: %s", state, offer.target_version, e)
                return
        self._enqueue(
            self.journal, state=state, rollout_id=offer.rollout_id, manifest_version=offer.manifest_version,
            target_version=offer.target_version, elapsed_s=self._wall_clock().timestamp() - started,
            now=self._wall_clock(), queue_max=self.config.report_queue_max, **kw,
        )
        self.events.reported(offer, state, kw.get("reason"))

    async def handle_offer(self, envelope: dict[str, Any]) -> None:
        """Verify a signed offer and act on it.  Never raises for a bad offer: it is refused and reported."""
        assert self.identity is not None, "enrol before handling offers"
        try:
            signed = await self.verified(envelope, "offer")
            offer = check_offer(
                signed, device_id=self.identity.device_id, now=self._wall_clock(),
                highest_manifest_version=self.journal.highest_manifest_version,
                current_version=self.running_version,
            )
        except OfferRejected as e:
            log.warning("offer refused: %s", e)
            return
        j = self.journal
        j.highest_manifest_version = offer.manifest_version
        shadow = offer.quality is not None and offer.quality.mode == "shadow"
        if self._held is not None:
            held = self._held
            if (not shadow and held.offer.model_sha256 == offer.model_sha256
                    and held.offer.package.sha256 == offer.package.sha256 and held.offer.contract == offer.contract):
                held.offer = offer  # the same update offered again (maybe re-signed): keep waiting with it
                self.swap_if_allowed()
                return
            self._drop_held(f"v{offer.target_version} offered instead")
        if j.shadow is not None and not self._is_staged(offer):
            self._end_shadow(f"v{offer.target_version} offered instead")
        if j.active is not None and j.active.model_sha256 == offer.model_sha256 and j.active.contract == offer.contract:
            # The server thinks this car needs what it already runs (its state drifted): walk the
            # update through its states with zero bytes so the server's record converges.  (The same
            # model under another contract is installed as any update: the new contract needs a new
            # slot record and a swap.)
            if j.active.rollout_id != offer.rollout_id:
                self._walk_to_installed(offer, "already running this model")
                j.active.rollout_id, j.active.manifest_version = offer.rollout_id, offer.manifest_version
            self.store.save(j)
            return
        if offer.model_sha256 in j.bad_models and not offer.rollback:
            if j.pending is None or j.pending.manifest_version != offer.manifest_version:
                j.pending = PendingUpdate(offer.manifest_version, offer.model_sha256, self._wall_clock().timestamp())
                self._report(offer, "failed", reason="model failed its smoke test or health window on this car before")
            self.store.save(j)
            return
        self.agent_state = "downloading"
        try:
            with gil_switch_interval(self.config.gil_switch_interval_s):  # the camera keeps its latency
                if offer.rollback and j.previous is not None and j.previous.model_sha256 == offer.model_sha256:
                    await self._rollback_to_previous(offer, reason=f"signed rollback to v{offer.target_version}")
                elif shadow and j.shadow is not None:
                    await self._resume_shadow(offer)
                else:
                    await self._install(offer, shadow=shadow)
        except AgentError as e:
            log.warning("update to v%d not installed: %s", offer.target_version, e)
        finally:
            self.agent_state = "idle"

    def _walk_to_installed(self, offer: Offer, reason: str) -> None:
        """Report an offer installed without a transfer (the model is already on the car), 0 bytes."""
        self.journal.pending = PendingUpdate(offer.manifest_version, offer.model_sha256,
                                             self._wall_clock().timestamp())
        for state in ("downloading", "downloaded", "verified", "installed"):
            self._report(offer, state, reason=reason if state == "installed" else None)
        self.journal.pending = None

    def _begin(self, offer: Offer) -> None:
        """Record the update in the journal; a restart resumes it without repeating its reports."""
        j = self.journal
        p = j.pending
        if p is None or p.model_sha256 != offer.model_sha256 or p.state is UpdateState.FAILED:
            p = j.pending = PendingUpdate(offer.manifest_version, offer.model_sha256, self._wall_clock().timestamp())
        p.manifest_version = offer.manifest_version
        if p.retrying:
            self._report(offer, "downloading")
        self.store.save(j)

    def _advance(self, offer: Offer, state: str, **kw: Any) -> None:
        """Queue the ``state`` report unless this update already reported it before a restart.

        The journal is not saved here: the report and the pending state reach
        the disk together with the next save (the slot commit, or a failure), so
        a crash before then loses both and the restarted agent reports the state
        again: no report is lost or sent twice.  Why: each save is ~0.5 ms of the
        agent's Python beside the camera thread, and the GIL makes the camera
        wait for it (``bench/hotswap.py``).
        """
        p = self.journal.pending
        if p is None or not p.reported(state):
            self._report(offer, state, **kw)

    async def _install(self, offer: Offer, *, shadow: bool = False) -> None:
        """Download (delta if it fits, else full), then patch, decode, verify, load, smoke-test, commit, swap.

        ``shadow``: stage the verified version in the ``shadow`` slot and compare it with the live model
        instead of committing and swapping.  A version already staged there is installed from it, with no
        download.

        Everything between the download and the commit runs in one worker
        thread (``_build``).  Why: each return from a worker thread wakes the
        event loop, and that burst of Python takes the GIL from the camera
        thread just as its inference comes back from ONNX Runtime; measured on
        ``bench/hotswap.py``, nearly every such hop cost one slow inference.

        Raises:
            DownloadError: the link failed; the partial file is kept and the next poll resumes.
            AgentError: any other failure, already reported as ``failed``.
        """
        self._begin(offer)
        received = 0
        artifact = "full"
        reached: list[str] = []  # the states _build got through, reported in order even when it fails
        self.last_install = {}
        try:
            built: tuple[str, Any] | None = None
            if self._is_staged(offer) and not shadow:
                built = await asyncio.to_thread(self._load_staged, offer)
                reached.extend(["downloaded", "verified"])
                artifact = "staged"
            elif not self.decoder.running:
                await asyncio.to_thread(self.decoder.start)  # its imports overlap the download
            if built is None and self._delta_applies(offer):
                assert offer.delta is not None
                try:
                    path, received = await self._download(offer.delta)
                    artifact = "delta"
                    self.agent_state = "installing"
                    built = await asyncio.to_thread(self._build, offer, path, True, reached, shadow)
                except (_DeltaUnusable, HashMismatch) as e:
                    if reached:  # the delta applied: this is the package or the model failing, not the delta
                        raise
                    self._delta_failed(offer, e)
                    received, artifact = 0, "full"
            if built is None:
                path, received = await self._download(offer.package)
                self.agent_state = "installing"
                built = await asyncio.to_thread(self._build, offer, path, False, reached, shadow)
            wire = None if artifact == "staged" else artifact
            for state in reached:
                self._advance(offer, state, bytes_received=received, artifact=wire)
            assert built is not None
            slot, loaded = built
            if shadow:
                self._stage_shadow(offer, slot, loaded)
            elif self.journal.active is not None and not self._swap_allowed():  # (no model: nothing to keep)
                self._hold(offer, slot, loaded, received, artifact)
            else:
                self._commit(offer, slot, loaded, received, artifact)
        except (DownloadError, Unauthorized):
            self.store.save(self.journal)
            raise
        except (VerificationError, StorageError, ServerError) as e:
            artifact = "full" if artifact == "staged" else artifact
            for state in reached:
                self._advance(offer, state, bytes_received=received, artifact=artifact)
            if self._is_staged(offer):  # the staged candidate failed: forget it, a retry downloads afresh
                self._end_shadow(f"{type(e).__name__}: {e}")
            if isinstance(e, SmokeTestFailed):
                self.journal.bad_models.append(offer.model_sha256)
            self._report(offer, "failed", reason=f"{type(e).__name__}: {e}", bytes_received=received,
                         artifact=artifact)
            self._forget_downloads(offer)
            try:
                self.store.save(self.journal)
            except StorageError:
                log.error("journal not saved (disk full?); the failure report is kept in memory")
            raise

    def _delta_applies(self, offer: Offer) -> bool:
        """True if the offer's delta was made for the package this car runs (and has not failed here)."""
        active, delta = self.journal.active, offer.delta
        return (delta is not None and active is not None and active.package_sha256 == delta.base_package_sha256
                and not (self.journal.pending is not None and self.journal.pending.delta_failed))

    def _delta_failed(self, offer: Offer, e: Exception) -> None:
        """Drop the delta for this update (its files too); the full package comes next."""
        assert offer.delta is not None
        log.warning("delta unusable (%s); falling back to the full package", e)
        if self.journal.pending is not None:
            self.journal.pending.delta_failed = True
        remove_partial(self.store.downloads_dir, offer.delta.sha256)
        (self.store.downloads_dir / offer.delta.sha256).unlink(missing_ok=True)
        self.store.save(self.journal)

    def _build(self, offer: Offer, artifact: Path, is_delta: bool,
               reached: list[str], shadow: bool = False) -> tuple[str, LoadedModel | None]:
        """Patch (a delta), verify the package, decode it, verify the model, load it, smoke-test it and
        write it into the free slot; returns the slot and the loaded model, ready for ``_commit``.

        Runs in one worker thread; patch and decode go to the decode worker
        process.  Appends "downloaded" to ``reached`` once the package is in
        hand and verified, "verified" once the decoded model is.

        Raises:
            _DeltaUnusable: the delta does not apply or does not give the offered package.
            VerificationError: the package does not decode or a hash differs (``HashMismatch``),
                or the model fails its smoke test (``SmokeTestFailed``).
            StorageError: the slot could not be written (the active slot is untouched).
        """
        timings = self.last_install
        data = artifact.read_bytes()
        if is_delta:
            assert self.journal.active is not None
            t = self._clock()
            try:
                package = self.decoder.patch(self.store.read_package(self.journal.active), data)
            except (BaseMismatch, DeltaError) as e:
                raise _DeltaUnusable(str(e)) from e
            timings["patch_ms"] = (self._clock() - t) * 1000
            if _sha(package) != offer.package.sha256:
                raise _DeltaUnusable("patched package does not match the offer's package sha256")
        else:
            package = data
            if _sha(package) != offer.package.sha256:
                raise HashMismatch("package does not match the offer's sha256")
        reached.append("downloaded")
        log.info("installing v%d: decode", offer.target_version)
        t = self._clock()
        try:
            model = self.decoder.unpack(package)
        except CorruptPackage as e:
            raise VerificationError(f"package for v{offer.target_version} does not decode: {e}") from e
        if _sha(model) != offer.model_sha256:
            raise HashMismatch(f"decoded model for v{offer.target_version} does not match the offer's model_sha256")
        timings.update(decode_ms=(self._clock() - t) * 1000, package_bytes=len(package), model_bytes=len(model))
        reached.append("verified")
        log.info("installing v%d: load and smoke test", offer.target_version)
        t = self._clock()
        # ONNX Runtime reads a file with less of the GIL held than bytes; staged beside the free slot's
        # files, it becomes the slot's model by a rename, so the car's disk holds no extra copy.
        slot = self.store.free_slot(self.journal)
        staged = self.store.stage_model(slot, model)
        try:
            loaded = self.swapper.load_and_smoke_sync(staged, version=offer.target_version,
                                                      model_sha256=offer.model_sha256, contract=offer.contract,
                                                      smoke=offer.smoke)
            timings["load_smoke_ms"] = (self._clock() - t) * 1000
            log.info("installing v%d: commit slot", offer.target_version)
            self._write_slot(slot, package, model, staged)
        finally:
            staged.unlink(missing_ok=True)
        return slot, loaded

    async def _download(self, art: Artifact) -> tuple[Any, int]:
        spec = DownloadSpec(
            url=art.url, sha256=art.sha256, size=art.size, dest_dir=self.store.downloads_dir,
            chunk_bytes=self.config.download_chunk_bytes, max_attempts=self.config.download_max_attempts,
            backoff_initial_s=min(1.0, self.config.backoff_initial_s), fsync=self.config.fsync, bucket=self.bucket,
            on_bytes=self._count_bytes,
        )
        self.api.http.headers.update(self.api.auth_headers())
        log.info("download %s (%d bytes) from %s", art.sha256[:12], art.size, art.url)
        result = await fetch(self.api.http, spec, sleep=self._sleep, rng=self._rng)
        log.info("download %s done: %d bytes on the wire, resumed from %d, %d attempt(s)",
                 art.sha256[:12], result.bytes_received, result.resumed_from, result.attempts)
        return result.path, result.bytes_received + result.resumed_from

    def _count_bytes(self, n: int) -> None:
        self.bytes_received_total += n

    def _write_slot(self, slot: str, package: bytes, model: bytes, staged: Path) -> None:
        """Write the package and model into ``slot`` (one the journal does not name); the model by renaming
        ``staged``."""
        t = self._clock()
        self.store.write_slot(slot, package, model, staged=staged)
        self.last_install["commit_ms"] = (self._clock() - t) * 1000

    def _commit(self, offer: Offer, slot: str, loaded: LoadedModel | None, received: int, artifact: str) -> None:
        """Flip the journal to the written slot (with the ``installed`` report), then swap.

        ``artifact``: ``delta``, ``full``, or ``staged`` (promoted from the shadow slot: nothing was
        transferred, and the report names no artifact).
        """
        j = self.journal
        assert loaded is not None
        self._stop_comparison()  # a shadow comparison of this version, or the window of the one it replaces
        t = self._clock()
        record = SlotRecord(slot, offer.target_version, offer.model_sha256, offer.package.sha256, offer.codec,
                            offer.contract, offer.manifest_version, offer.rollout_id)
        old = j.active
        j.previous, j.active = old, record
        if j.shadow is not None and j.shadow.slot == slot:
            j.shadow = None  # promoted: the shadow slot becomes the active one in this same journal write
        self._report(offer, "installed", bytes_received=received, artifact=None if artifact == "staged" else artifact)
        j.pending = None
        self.store.save(j)
        t1 = self._clock()
        self.swapper.swap(loaded, health_window=old is not None)
        self.last_install["commit_ms"] = self.last_install.get("commit_ms", 0.0) + (t1 - t) * 1000
        self.last_install["swap_ms"] = (self._clock() - t1) * 1000
        self.events.installed(offer, artifact, received, self.last_install)
        if old is not None:
            self._health_deadline = self._clock() + self.config.health_window_max_s
            plan = offer.quality
            fallback = self.swapper.fallback
            if plan is not None and plan.mode == "live" and fallback is not None:
                self._start_comparison(offer, fallback, "live")
        self._forget_downloads(offer)
        try:
            self.store.clear_unnamed(j)
        except StorageError as e:  # the update is in; the next install overwrites these files anyway
            log.warning("%s", e)
        log.info("installed v%d in slot %s (%s, %d bytes)", offer.target_version, slot, artifact, received)

    # -- waiting for the application's permission to swap (issue 21) --------

    def _swap_allowed(self) -> bool:
        """The application's ``safe_to_swap`` (True without one); an exception in it counts as 'not now'."""
        rule = self.safe_to_swap
        if rule is None:
            return True
        try:
            return bool(rule())
        except Exception as e:  # the application's code: its bug must not install or fail an update
            log.warning("safe_to_swap raised %s: %s; not swapping now", type(e).__name__, e)
            return False

    def _hold(self, offer: Offer, slot: str, loaded: Any, received: int, artifact: str) -> None:
        """Keep the verified, loaded update (the car stays at ``verified`` and serves its model) until
        ``safe_to_swap`` allows it.  Its slot is written but unnamed: a restart verifies it again from the
        kept download when the registry offers it next."""
        self._held = _Held(offer, slot, loaded, received, artifact)
        self.store.save(self.journal)  # the downloaded and verified reports with the pending state
        log.info("v%d verified; waiting for the application to allow the swap", offer.target_version)

    def swap_if_allowed(self) -> bool:
        """Swap the waiting update in if ``safe_to_swap`` now says yes; True if it did."""
        held = self._held
        if held is None or not self._swap_allowed():
            return False
        self._held = None
        self._commit(held.offer, held.slot, held.loaded, held.received, held.artifact)
        return True

    def _drop_held(self, reason: str) -> None:
        """Forget the waiting update (another offer, or none): free its model and its unnamed slot."""
        held, self._held = self._held, None
        if held is None:
            return
        try:
            self.store.clear_unnamed(self.journal)
        except StorageError as e:
            log.warning("%s", e)
        log.info("dropped v%d waiting to swap: %s", held.offer.target_version, reason)

    def _forget_downloads(self, offer: Offer) -> None:
        for art in (offer.package, offer.delta):
            if art is not None:
                remove_partial(self.store.downloads_dir, art.sha256)
                (self.store.downloads_dir / art.sha256).unlink(missing_ok=True)

    # -- health window and rollback ----------------------------------------

    async def check_health(self) -> bool | None:
        """Judge the open health window: True kept, False rolled back, None still open (or none)."""
        if self._health_deadline is None:
            return None
        calls, errors = self.swapper.health()
        cfg = self.config
        if calls and errors / calls > cfg.health_max_error_rate and calls >= min(cfg.health_window_inferences, 5):
            self._health_deadline = None
            await self._health_rollback(f"health window: {errors} of {calls} live inferences failed on the new model")
            return False
        verdict, waiting = self._live_comparison_verdict()
        if verdict is not None:
            self._health_deadline = None
            await self._health_rollback(verdict)
            return False
        if (calls >= cfg.health_window_inferences and not waiting) or self._clock() >= self._health_deadline:
            self._health_deadline = None
            self._stop_comparison()
            self.swapper.close_health_window()
            log.info("health window passed (%d inferences, %d errors)", calls, errors)
            return True
        return None

    def _live_comparison_verdict(self) -> tuple[str | None, bool]:
        """(a rollback reason, or None; whether the window should wait for more compared frames).

        The live plan's rule: after at least ``min_frames`` compared frames, top-1 agreement of the new
        version with the previous one below ``rollback_below_agreement`` rolls it back, like NaN outputs.
        """
        plan, comparator = self._quality_plan, self._comparator()
        if plan is None or plan.rollback_below_agreement is None or comparator is None or comparator.kind != "live":
            return None, False
        s = comparator.snapshot()
        if s.frames < plan.min_frames:
            return None, True
        agreement = s.agree / s.frames
        if agreement < plan.rollback_below_agreement:
            return (f"live comparison: agreement {agreement:.2f} with v{s.baseline_version} on {s.frames} frames, "
                    f"below {plan.rollback_below_agreement:g}"), False
        ratio = s.metrics()["confidence_ratio"]
        if ratio is not None and ratio < CONFIDENCE_COLLAPSE_RATIO:
            return (f"live comparison: mean confidence {ratio:.2f}x that of v{s.baseline_version} on {s.frames} "
                    f"frames, below {CONFIDENCE_COLLAPSE_RATIO:g}x (confidence collapse)"), False
        return None, False

    async def _health_rollback(self, reason: str) -> None:
        j = self.journal
        bad, good = j.active, j.previous
        assert bad is not None and good is not None
        self.events.rolled_back(bad.version, reason)
        self._stop_comparison()
        fallback = self.swapper.fallback
        if fallback is None:
            fallback = await asyncio.to_thread(
                self.swapper.load_sync, self.store.model_path(good), version=good.version,
                model_sha256=good.model_sha256, contract=good.contract,
            )
        self.swapper.swap(fallback, health_window=False)
        j.active, j.previous = good, None
        j.bad_models.append(bad.model_sha256)
        self._enqueue(j, state="rolled_back", rollout_id=bad.rollout_id, manifest_version=bad.manifest_version,
                        target_version=bad.version, reason=reason, now=self._wall_clock(),
                        queue_max=self.config.report_queue_max)
        self.store.save(j)
        log.warning("rolled back to v%d: %s", good.version, reason)
        await self.flush_reports()

    async def _rollback_to_previous(self, offer: Offer, reason: str) -> None:
        """A signed rollback naming the previous slot's model: verify it, smoke-test it, swap it back in."""
        j = self.journal
        prev, cur = j.previous, j.active
        assert prev is not None
        self.events.rolled_back(cur.version if cur is not None else 0, reason)
        self._stop_comparison()
        try:
            if not await asyncio.to_thread(self.store.verify, prev):
                raise HashMismatch(f"previous slot {prev.slot} no longer verifies")
            # the rollback's signed contract is the one to apply (it may correct the one first installed)
            loaded = await self.swapper.load_and_smoke(self.store.model_path(prev), version=prev.version,
                                                       model_sha256=prev.model_sha256, contract=offer.contract,
                                                       smoke=offer.smoke)
        except VerificationError as e:
            log.warning("rollback via previous slot impossible (%s); fetching v%d in full", e, offer.target_version)
            j.previous = None
            await self._install(offer)
            return
        self.swapper.swap(loaded, health_window=False)
        j.active, j.previous = prev, cur
        if cur is not None:  # the update being undone: installed -> rolled_back on its own record
            self._enqueue(j, state="rolled_back", rollout_id=cur.rollout_id, manifest_version=cur.manifest_version,
                            target_version=cur.version, reason=reason, now=self._wall_clock(),
                            queue_max=self.config.report_queue_max)
        self._walk_to_installed(offer, f"{reason}: restored from slot {prev.slot}, no download")
        prev.rollout_id, prev.manifest_version, prev.contract = offer.rollout_id, offer.manifest_version, offer.contract
        self.store.save(j)
        log.info("rolled back to v%d from the previous slot", prev.version)

    # -- shadow mode and comparisons (issue 18) ----------------------------

    def _comparator(self) -> Comparison | None:
        """The comparison running where the sessions are: here, or in a ``ModelHost``'s process."""
        return self.swapper.comparator

    def _is_staged(self, offer: Offer) -> bool:
        """The offered version is the one staged in the shadow slot (same model and package)."""
        rec = self.journal.shadow
        return rec is not None and rec.model_sha256 == offer.model_sha256 and rec.package_sha256 == offer.package.sha256

    def _load_staged(self, offer: Offer) -> tuple[str, LoadedModel]:
        """Re-hash the shadow slot and load + smoke-test its model under this offer (worker thread).

        Raises:
            HashMismatch: the slot's files changed on disk since they were verified.
            SmokeTestFailed: the model does not load or fails this offer's smoke test.
        """
        rec = self.journal.shadow
        assert rec is not None
        if not self.store.verify(rec):
            raise HashMismatch(f"shadow slot {rec.slot} (v{rec.version}) no longer verifies")
        t = self._clock()
        model_path = self.store.model_path(rec)
        self.last_install.update(package_bytes=(self.store.slot_dir(rec.slot) / PACKAGE_FILE).stat().st_size,
                                 model_bytes=model_path.stat().st_size)
        loaded = self.swapper.load_and_smoke_sync(model_path, version=offer.target_version,
                                                  model_sha256=offer.model_sha256, contract=offer.contract,
                                                  smoke=offer.smoke)
        self.last_install["load_smoke_ms"] = (self._clock() - t) * 1000
        return rec.slot, loaded

    def _stage_shadow(self, offer: Offer, slot: str, loaded: Any) -> None:
        """Name the written slot ``shadow`` (never ``active``), stay at ``verified``, start comparing."""
        j = self.journal
        j.shadow = SlotRecord(slot, offer.target_version, offer.model_sha256, offer.package.sha256, offer.codec,
                              offer.contract, offer.manifest_version, offer.rollout_id)
        self.store.save(j)
        self._forget_downloads(offer)
        if j.active is None:
            log.warning("v%d staged for shadow mode but not compared: no live model to compare with",
                        offer.target_version)
            return
        self._start_comparison(offer, loaded, "shadow")
        log.info("shadowing v%d beside v%d (slot %s)", offer.target_version, j.active.version, slot)

    async def _resume_shadow(self, offer: Offer) -> None:
        """The staged candidate offered again in shadow mode: keep comparing, or start again after a restart."""
        j = self.journal
        rec = j.shadow
        assert rec is not None
        comparator = self._comparator()
        rec.manifest_version, rec.contract = offer.manifest_version, offer.contract
        if (comparator is not None and comparator.kind == "shadow" and comparator.beside_version == rec.version
                and rec.rollout_id == offer.rollout_id):
            self._quality_plan = offer.quality  # the registry may change the sampling between offers
            self.store.save(j)
            return
        rec.rollout_id = offer.rollout_id
        self.store.save(j)
        if j.active is None:
            return
        try:
            _, loaded = await asyncio.to_thread(self._load_staged, offer)
        except VerificationError as e:
            log.warning("staged v%d cannot be shadowed again (%s); forgetting it", rec.version, e)
            self._end_shadow(str(e))
            return
        self._start_comparison(offer, loaded, "shadow")
        log.info("resumed shadowing v%d beside v%d", rec.version, j.active.version)

    def _start_comparison(self, offer: Offer, beside: Any, kind: str) -> None:
        """Run ``beside`` next to the live model, continuing the summary the journal kept for it.

        ``beside`` is whatever the swapper loaded (opaque here): the staged candidate (``shadow``), or the
        health window's fallback (``live``, the offered version being the live one).  Either way the
        candidate is the offered version.
        """
        plan = offer.quality
        assert plan is not None
        candidate = offer.target_version
        resume = reports.stored_quality(self.journal, kind, offer.rollout_id, candidate)
        self.swapper.start_comparison(beside, plan, kind=kind, line=offer.line, rollout_id=offer.rollout_id,
                                      resume=resume)
        self._quality_plan = plan
        self._quality_due = self._clock() + plan.report_every_s

    def _stop_comparison(self) -> None:
        """Stop the running comparison, if any, and queue its final summary (the caller saves the journal)."""
        final = self.swapper.stop_comparison()
        if final is not None:
            self._queue_quality(final)
        self._quality_plan = None
        self._quality_due = None

    def _end_shadow(self, reason: str) -> None:
        """Stop shadowing: free the candidate, forget its slot and delete its files; the live model goes on."""
        j = self.journal
        rec = j.shadow
        comparator = self._comparator()
        if comparator is not None and comparator.kind == "shadow":
            self._stop_comparison()
        j.shadow = None
        self.store.save(j)
        try:
            self.store.clear_unnamed(j)
        except StorageError as e:
            log.warning("%s", e)
        if rec is not None:
            log.info("stopped shadowing v%d: %s", rec.version, reason)

    async def report_quality(self, *, flush: bool = True) -> None:
        """Queue the running comparison's cumulative summary when it is due (every ``report_every_s``) and send it."""
        comparator, plan = self._comparator(), self._quality_plan
        if comparator is None or plan is None or self._quality_due is None or self._clock() < self._quality_due:
            return
        self._quality_due = self._clock() + plan.report_every_s
        if self._queue_quality(comparator.snapshot()) is None:
            return
        self.store.save(self.journal)
        if flush:
            await self.flush_reports()
