"""Shadow mode and live comparisons through a ModelHost (issue 18): the comparison runs in this process, beside
the camera, and the agent daemon (a real child process) keeps its books.

As in test_client_modelhost.py, offers are signed offline and their artifacts placed in the daemon's download
cache; the daemon runs the real install path and drives this process's sessions over its socket.  What the
daemon did is read from its journal on disk (summaries it pulled, reports it queued), what this process did
from its ``HotSwapper``.  Comparison threads are waited for by polling counts, never by timing a frame.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import pytest
from agent_factories import OfflineOffers, sha, zoo_model
from shadow_models import swapped_classes
from test_client_registry import release, transfers

from client import AgentConfig
from client.identity import Identity, save_identity
from client.modelhost import ModelHost
from client.slots import Journal, SlotStore
from models import zoo
from models.roadsigns import render
from protocol.quality import QualityPlan, QualitySummary
from tests.support.live_server import LiveServer

RNG = np.random.default_rng(19)
#: Frames of stop (0) and yield (1), three stops to a yield: what a candidate swapping 0 and 1 gets wrong.
STOP_YIELD = [render(int(i % 4 == 3), RNG) for i in range(40)]
EVERY_CLASS = [render(i % 10, RNG) for i in range(40)]
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout_s: float = 30.0, what: str = "condition") -> T:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = probe()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def wait_gone(pid: int, timeout_s: float = 15.0) -> None:
    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] == "Z"  # a zombie is gone for our purposes
        except FileNotFoundError:
            return True

    wait_for(gone, timeout_s, f"daemon {pid} to exit")


def twin(model: bytes) -> bytes:
    """The same network under another model hash (a metadata field differs): agrees on every frame."""
    m = onnx.load_from_string(model)
    m.producer_version = "twin"
    return m.SerializeToString()


def shadow_plan(**kw: Any) -> dict[str, Any]:
    return QualityPlan("shadow", **{"sample_every": 1, "report_every_s": 1.0, **kw}).to_dict()


def journal(state: Path) -> Journal:
    return SlotStore(state).load()


def pulled(state: Path, kind: str, at_least: int = 1, after_seq: int = 0) -> dict[str, Any] | None:
    """The summary of ``kind`` the daemon queued in its journal, once it counts ``at_least`` frames."""
    for q in journal(state).quality:
        if q["kind"] == kind and q["frames"] >= at_least and q["seq"] > after_seq:
            return q
    return None


def settled(h: ModelHost) -> QualitySummary | None:
    """This process's comparison, once every sampled frame was compared or dropped."""
    c = h.swapper.comparator
    s = None if c is None else c.snapshot()
    return s if s is not None and s.frames + s.dropped + s.candidate.errors >= s.sampled else None


class Camera:
    """A camera thread: classifies ``frames`` in a loop through the host, noting versions and any failure."""

    def __init__(self, h: ModelHost, frames: list[np.ndarray]) -> None:
        self.versions: list[int] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(h, frames))

    def _run(self, h: ModelHost, frames: list[np.ndarray]) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.versions.append(h.predict(frames[i % len(frames)]).version)
            except BaseException as e:  # noqa: BLE001 - any failure is the test's finding
                self.failures.append(e)
            i += 1
            time.sleep(0.002)

    def __enter__(self) -> Camera:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def states(state: Path, target: int) -> list[str]:
    return [r["state"] for r in journal(state).outbox if r["target_version"] == target]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[ModelHost, OfflineOffers]]:
    offers = OfflineOffers(SlotStore(tmp_path).downloads_dir)  # the daemon's download cache
    save_identity(tmp_path / "identity.json", Identity("car-1", "token", offers.pub, sha(offers.pub)))
    h = ModelHost(AgentConfig(server_url="http://offline.invalid", device_id="car-1", state_dir=tmp_path,
                              health_window_inferences=10), poll=False)
    h.start()
    yield h, offers
    h.close()


def test_a_shadow_candidate_runs_beside_the_live_model_here_and_goes_live_only_by_promotion_without_a_download(
        host: tuple[ModelHost, OfflineOffers], tmp_path: Path) -> None:
    h, offers = host
    m1, m2 = zoo_model(1), twin(zoo_model(1))
    h.handle_offer(offers.offer(m1, 1))
    with Camera(h, EVERY_CLASS) as cam:
        st = h.handle_offer(offers.offer(m2, 2, rollout_id=9, quality=shadow_plan()))
        assert st["running_version"] == 1 and h.running_version == 1
        comparator = h.swapper.comparator  # in this process: the camera's frames are here
        assert comparator is not None and (comparator.kind, comparator.beside_version) == ("shadow", 2)
        assert type(comparator).__name__ == "ProcessComparator"  # ModelHost's default: the camera's GIL is its own
        assert not h._pending  # the candidate is no handle the daemon could swap in
        assert states(tmp_path, 2) == ["downloading", "downloaded", "verified"]
        # the daemon pulls the cumulative summary every report_every_s into its journal
        first = wait_for(lambda: pulled(tmp_path, "shadow", at_least=20), what="a pulled summary")
        assert (first["candidate_version"], first["baseline_version"], first["rollout_id"]) == (2, 1, 9)
        assert first["agree"] == first["frames"]  # the same network: agreement 1.0
        assert first["candidate"]["classes"] == first["baseline"]["classes"] and first["candidate"]["other"] == 0
        shadowing = len(cam.versions)
        # the rollout promotes: the same version, no shadow plan, no package to download (offline anyway)
        st = h.handle_offer(offers.offer(m2, 2, rollout_id=9, place_package=False))
        promoted = len(cam.versions)
        wait_for(lambda: len(cam.versions) > promoted + 5, what="frames after the promotion")
    assert cam.failures == []
    assert set(cam.versions[:shadowing]) == {1} and cam.versions[-1] == 2  # the candidate drove only once promoted
    assert st["running_version"] == 2 and h.running_version == 2 and h.swapper.comparator is None
    j = journal(tmp_path)
    assert j.shadow is None and j.active.version == 2 and j.previous.version == 1  # type: ignore[union-attr]
    assert states(tmp_path, 2) == ["downloading", "downloaded", "verified", "installed"]
    installed = j.outbox[-1]
    assert installed["bytes_received"] == 0 and installed["artifact"] is None
    final = [q for q in j.quality if q["kind"] == "shadow"]  # the final summary replaced the pulled ones
    assert len(final) == 1 and final[0]["seq"] > first["seq"] and final[0]["frames"] >= first["frames"]
    assert final[0]["agree"] == final[0]["frames"]


def test_a_class_swapping_shadow_candidate_disagrees_here_and_never_answers_the_camera(
        host: tuple[ModelHost, OfflineOffers], tmp_path: Path) -> None:
    h, offers = host
    m1 = zoo_model(1)
    h.handle_offer(offers.offer(m1, 1))
    with Camera(h, STOP_YIELD) as cam:
        h.handle_offer(offers.offer(swapped_classes(m1, 0, 1), 2, rollout_id=9, quality=shadow_plan()))
        q = wait_for(lambda: pulled(tmp_path, "shadow", at_least=20), what="a pulled summary")
        here = wait_for(lambda: settled(h), what="the comparison to catch up")
    assert cam.failures == [] and set(cam.versions) == {1} and h.running_version == 1
    s = QualitySummary.from_dict(q)
    assert s.agree < s.frames  # v1 reads these signs as stop/yield; the candidate swaps them
    assert s.candidate.class_counts[0:2] == s.baseline.class_counts[0:2][::-1]
    assert here.agree < here.frames and here.frames >= s.frames  # the daemon's copy trails this process's
    # another version offered without shadow installs normally and frees the candidate here
    h.handle_offer(offers.offer(zoo_model(3), 3))
    assert h.running_version == 3 and h.swapper.comparator is None and journal(tmp_path).shadow is None


def test_a_live_plan_through_the_host_rolls_back_a_version_that_disagrees_with_the_previous_one(
        host: tuple[ModelHost, OfflineOffers], tmp_path: Path) -> None:
    h, offers = host
    m1 = zoo_model(1)
    h.handle_offer(offers.offer(m1, 1))
    live = QualityPlan("live", sample_every=1, rollback_below_agreement=0.9, min_frames=10).to_dict()
    assert h.handle_offer(offers.offer(swapped_classes(m1, 0, 1), 2, rollout_id=11,
                                       quality=live))["running_version"] == 2
    comparator = h.swapper.comparator
    assert comparator is not None and (comparator.kind, comparator.beside_version) == ("live", 1)
    assert h.check_health() is None  # no frames compared yet: the window waits for them
    while comparator.snapshot().frames < 10:
        for f in STOP_YIELD[:10]:  # a car that sees stop and yield signs
            assert h.predict(f).version == 2
            time.sleep(0.002)
        wait_for(lambda: settled(h), what="the comparison to catch up")
    assert h.check_health() is False  # the daemon judged the snapshot it pulled from here
    assert h.running_version == 1 and h.predict(STOP_YIELD[0]).version == 1
    assert h.swapper.comparator is None and h.swapper.fallback is None and comparator.closed
    j = journal(tmp_path)
    last = j.outbox[-1]
    assert last["state"] == "rolled_back" and last["target_version"] == 2
    assert last["reason"].startswith("live comparison: agreement ") and "with v1 on" in last["reason"]
    assert "below 0.9" in last["reason"]
    summary = [q for q in j.quality if q["kind"] == "live"]
    assert len(summary) == 1 and (summary[0]["candidate_version"], summary[0]["baseline_version"]) == (2, 1)
    assert j.active.version == 1 and sha(swapped_classes(m1, 0, 1)) != j.active.model_sha256  # type: ignore[union-attr]


def test_killing_the_daemon_while_shadowing_never_costs_an_inference_and_a_restarted_one_resumes_on_the_next_offer(
        host: tuple[ModelHost, OfflineOffers], tmp_path: Path) -> None:
    h, offers = host
    m1, m2 = zoo_model(1), swapped_classes(zoo_model(1), 0, 1)
    h.handle_offer(offers.offer(m1, 1))
    with Camera(h, EVERY_CLASS) as cam:
        h.handle_offer(offers.offer(m2, 2, rollout_id=9, quality=shadow_plan()))
        before = wait_for(lambda: pulled(tmp_path, "shadow", at_least=10), what="a pulled summary")
        pid = h.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        # nobody reads the comparison any more: this process stops it and frees the candidate
        wait_for(lambda: h.swapper.comparator is None, what="the orphaned comparison to stop")
        killed = len(cam.versions)
        wait_for(lambda: len(cam.versions) > killed + 5, what="frames with the daemon dead")
        h.restart_daemon()
        assert h.daemon_status["running_version"] == 1 and h.running_version == 1  # no restart boots the candidate
        j = journal(tmp_path)
        assert j.shadow is not None and j.shadow.version == 2 and j.active.version == 1  # type: ignore[union-attr]
        reports, stored = len(j.outbox), pulled(tmp_path, "shadow")
        assert stored is not None and stored["frames"] >= before["frames"]
        h.handle_offer(offers.offer(m2, 2, rollout_id=9, quality=shadow_plan(), place_package=False))
        comparator = h.swapper.comparator
        assert comparator is not None and (comparator.kind, comparator.beside_version) == ("shadow", 2)
        assert comparator.snapshot().frames >= stored["frames"]  # resumed from the journal, not started afresh
        after = wait_for(lambda: pulled(tmp_path, "shadow", at_least=before["frames"] + 10, after_seq=before["seq"]),
                         what="a resumed summary")
    assert cam.failures == [] and set(cam.versions) == {1}
    assert after["sampled"] > stored["sampled"] and after["agree"] < after["frames"]
    assert len(journal(tmp_path).outbox) == reports  # resumed from the slot: no report repeated, no download


def test_a_polling_daemon_shadows_a_registry_rollout_and_installs_the_promoted_version_without_a_second_download(
        live_server: LiveServer, tmp_path: Path) -> None:
    """The registry's own shadow stage (its plan, its offers), a polling daemon, a camera in this process."""
    release(live_server, zoo_model(1))
    h = ModelHost(AgentConfig(server_url=live_server.url, device_id="car-1", state_dir=tmp_path,
                              enroll_token=live_server.enrollment_token, root_public_key=live_server.root_public_key,
                              tags={"region": "eu"}, poll_interval_s=0.2, health_window_inferences=5), poll=True)
    h.start()
    try:
        wait_for(lambda: h.running_version == 1, 60, "v1 installed")
        v2 = live_server.publish(twin(zoo_model(1)), contract=json.dumps(
            {k: v for k, v in zoo.contract().to_dict().items() if k in ("mean", "std")}))
        r = live_server.admin().post("/api/v1/rollouts", json={
            "line": "road-signs", "version": v2["version"],
            "shadow": {"percent": 100, "min_s": 3600, "sample_every": 1}})
        assert r.status_code == 201, r.text
        rollout = r.json()["id"]
        with Camera(h, EVERY_CLASS) as cam:
            comparator = wait_for(lambda: h.swapper.comparator, 60, "the shadow comparison here")
            assert (comparator.kind, comparator.beside_version) == ("shadow", 2)
            wait_for(lambda: comparator.snapshot().frames >= 20, 30, "compared frames")
            shadowing = len(cam.versions)
            r = live_server.admin().post(f"/api/v1/rollouts/{rollout}/advance")
            assert r.status_code == 200, r.text
            wait_for(lambda: h.running_version == 2 and h.swapper.fallback is None, 60, "the promotion")
        assert cam.failures == [] and set(cam.versions[:shadowing]) == {1} and cam.versions[-1] == 2

        def registry_summary() -> dict[str, Any] | None:
            q = live_server.admin().get(f"/api/v1/rollouts/{rollout}").json()["quality"]["summaries"]["shadow"]
            return q if q and q["frames"] >= 20 else None

        summary = wait_for(registry_summary, 30, "the shadow summary at the registry")
        assert summary["agreement"] == 1.0 and summary["cars"] == 1  # the daemon sent what this process compared
    finally:
        h.close()
    v2_transfers = [t for t in transfers(live_server, "car-1") if t.get("target_version") == 2]
    assert len(v2_transfers) == 1  # the shadow download; the promotion transferred nothing
