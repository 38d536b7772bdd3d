"""ModelHost + agent daemon: the live session in this process, the agent in a real child process.

Offers are signed offline and their artifacts placed in the daemon's download
cache (as in test_client_install.py); the daemon runs the real install path
and drives this process's session over its socket.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from agent_factories import LABELS10, OfflineOffers, nan_on_dark_model, sha, zoo_model

from client import AgentConfig
from client.errors import AgentError
from client.hotswap import NoModel
from client.identity import Identity, save_identity
from client.modelhost import DaemonGone, ModelHost
from client.slots import SlotStore
from models.roadsigns import render
from tests.support.live_server import LiveServer

IMAGE = render(3, np.random.default_rng(0))
ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split(")")[-1].split()[0] != "Z"


def wait_gone(pid: int, timeout_s: float = 15.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def config(state: Path, **kw: object) -> AgentConfig:
    return AgentConfig(server_url="http://offline.invalid", device_id="car-1", state_dir=state, **kw)  # type: ignore[arg-type]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[tuple[ModelHost, OfflineOffers]]:
    offers = OfflineOffers(SlotStore(tmp_path).downloads_dir)  # the daemon's download cache
    save_identity(tmp_path / "identity.json", Identity("car-1", "token", offers.pub, sha(offers.pub)))
    h = ModelHost(config(tmp_path, health_window_inferences=10), poll=False)
    h.start()
    yield h, offers
    h.close()


def test_the_daemon_installs_into_this_process_while_the_camera_never_fails(
        host: tuple[ModelHost, OfflineOffers], tmp_path: Path) -> None:
    h, offers = host
    assert h.pid is not None and h.pid != os.getpid()
    with pytest.raises(NoModel):
        h.predict(IMAGE)
    m1, m2 = zoo_model(1), zoo_model(2)
    assert h.handle_offer(offers.offer(m1, 1))["running_version"] == 1
    failures: list[BaseException] = []
    answers: list[int] = []
    stop = threading.Event()

    def camera() -> None:
        while not stop.is_set():
            try:
                answers.append(h.predict(IMAGE).version)
            except BaseException as e:  # noqa: BLE001 - any failure is the test's finding
                failures.append(e)

    cam = threading.Thread(target=camera)
    cam.start()
    try:
        st = h.handle_offer(offers.offer(m2, 2, base_package=offers.package(m1)))
        time.sleep(0.05)
        assert h.check_health() is True  # the camera's inferences closed the window
    finally:
        stop.set()
        cam.join()
    assert failures == [] and answers[0] == 1 and answers[-1] == 2 and set(answers) == {1, 2}
    assert st["running_version"] == 2 and st["last_install"]["patch_ms"] > 0  # the delta path ran
    with open(f"/proc/{h.pid}/maps") as f:  # the daemon decoded and installed without ONNX Runtime in memory
        assert "onnxruntime" not in f.read()
    assert h.running_version == 2 and h.swapper.fallback is None
    assert SlotStore(tmp_path).load().active.version == 2  # type: ignore[union-attr]
    # A new application process (here: a new host) boots the slot the daemon committed.
    h.close()
    again = ModelHost(config(tmp_path), poll=False)
    again.start()
    try:
        assert again.predict(IMAGE).version == 2 and again.daemon_status["running_version"] == 2
    finally:
        again.close()


def test_a_bad_model_is_never_swapped_in_and_a_failing_one_is_rolled_back(
        host: tuple[ModelHost, OfflineOffers]) -> None:
    h, offers = host
    h.handle_offer(offers.offer(zoo_model(1), 1))
    assert h.handle_offer(offers.offer(zoo_model(2), 2, smoke_model=zoo_model(3)))["running_version"] == 1
    assert h.predict(IMAGE).version == 1 and not h._pending  # the loaded, failed model is gone
    assert h.handle_offer(offers.offer(nan_on_dark_model(), 2))["running_version"] == 2
    dark = np.zeros_like(IMAGE)
    assert {h.predict(dark).version for _ in range(10)} == {1}  # NaN on v2: every frame answered by v1
    assert h.check_health() is False
    assert h.running_version == 1 and h.status()["running_version"] == 1 and h.predict(dark).version == 1


def test_a_killed_daemon_leaves_the_model_serving_and_a_restarted_one_carries_on(
        host: tuple[ModelHost, OfflineOffers]) -> None:
    h, offers = host
    h.handle_offer(offers.offer(zoo_model(1), 1))
    pid = h.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    assert h.predict(IMAGE).version == 1  # the application never noticed
    with pytest.raises(DaemonGone):
        h.handle_offer(offers.offer(zoo_model(2), 2))
    live = h.swapper.current
    h.restart_daemon()
    assert h.pid not in (None, pid) and h.daemon_status["running_version"] == 1
    assert h.swapper.current is live  # the new daemon booted the model running here: no reload, no free
    assert h.handle_offer(offers.offer(zoo_model(2), 2))["running_version"] == 2
    assert h.predict(IMAGE).version == 2


def test_a_polling_daemon_refuses_standalone_installs(tmp_path: Path) -> None:
    h = ModelHost(config(tmp_path, poll_interval_s=3600), poll=True)
    h.start()
    try:
        with pytest.raises(AgentError, match="polls its server"):
            h.handle_offer({"signed": {}, "signatures": []})
    finally:
        h.close()
    assert h.pid is None


def test_the_daemon_exits_when_the_application_is_killed(tmp_path: Path) -> None:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
            "from client import AgentConfig; from client.modelhost import ModelHost; "
            f"h = ModelHost(AgentConfig('http://offline.invalid', 'car-1', Path({str(tmp_path)!r})), poll=False); "
            "h.start(); print(h.pid, flush=True); import time; time.sleep(600)")
    app = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout is not None
        daemon = int(app.stdout.readline())
        assert alive(daemon)
        app.kill()
        app.wait()
        assert wait_gone(daemon), "the agent daemon outlived its application"
    finally:
        app.kill()
        app.wait()
        if app.stdout is not None:
            app.stdout.close()


def test_a_polling_daemon_updates_this_process_from_the_real_registry(live_server: LiveServer, tmp_path: Path) -> None:
    v1 = live_server.publish(zoo_model(1))
    h = ModelHost(AgentConfig(server_url=live_server.url, device_id="car-1", state_dir=tmp_path,
                              enroll_token=live_server.enrollment_token, root_public_key=live_server.root_public_key,
                              poll_interval_s=0.2,
                              health_window_inferences=5), poll=True)
    h.start()
    try:
        deadline = time.monotonic() + 60
        while h.running_version != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.predict(IMAGE).version == 1
        v2 = live_server.publish(zoo_model(2))
        r = live_server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": v2["version"]})
        assert r.status_code == 201, r.text
        seen: set[int] = set()
        while not (h.running_version == 2 and h.swapper.fallback is None) and time.monotonic() < deadline:
            seen.add(h.predict(IMAGE).version)  # the camera's inferences fill the health window
        assert seen <= {1, 2} and h.running_version == 2 and h.swapper.fallback is None
        while time.monotonic() < deadline:  # the daemon reports after the window closes
            d = live_server.admin().get("/api/v1/devices/car-1").json()
            if d["reported_version"] == 2 and not d["drift"]:
                break
            time.sleep(0.1)
        assert d["reported_version"] == 2 and not d["drift"] and v1["version"] == 1
    finally:
        h.close()


def test_killing_the_daemon_anywhere_in_an_install_never_costs_an_inference(
        host: tuple[ModelHost, OfflineOffers], tmp_path: Path) -> None:
    """SIGKILL the daemon at each step of an install; the restarted one finishes it from the slots."""
    h, offers = host
    models = [zoo_model(v) for v in (1, 2, 3, 4, 5)]
    h.handle_offer(offers.offer(models[0], 1))
    journal = tmp_path / "journal.json"
    staged = list((tmp_path / "slots").glob("*/.model.onnx.staged"))

    # Kill points, each seen on disk: the offer taken (journal rewritten), the decoded model staged for
    # this process to load (the daemon waits on our load), and the journal flipped (swap may not have come).
    def begun(before: float) -> bool:
        return journal.stat().st_mtime_ns != before

    def staged_now() -> bool:
        return any((tmp_path / "slots").glob("*/.model.onnx.staged"))

    def flipped(target: int) -> bool:
        return SlotStore(tmp_path).load().active.version == target  # type: ignore[union-attr]

    failures: list[BaseException] = []
    stop = threading.Event()

    def camera() -> None:
        while not stop.is_set():
            try:
                h.predict(IMAGE)
            except BaseException as e:  # noqa: BLE001 - any failure is the test's finding
                failures.append(e)

    cam = threading.Thread(target=camera)
    cam.start()
    killed_at: list[str] = []
    try:
        for target, point in zip((2, 3, 4, 5), ("begun", "staged", "flipped", "staged"), strict=True):
            labels = LABELS10 + ["roundabout"] * (target >= 4)  # v4 learnt an eleventh class
            envelope = offers.offer(models[target - 1], target, labels=labels)
            pid = h.pid
            assert pid is not None
            before = journal.stat().st_mtime_ns
            checks: dict[str, Callable[[], bool]] = {
                "begun": partial(begun, before), "staged": staged_now, "flipped": partial(flipped, target)}

            def kill(pid: int = pid, check: Callable[[], bool] = checks[point]) -> None:
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    try:
                        if check():
                            break
                    except (OSError, ValueError):
                        pass  # the journal mid-replace
                os.kill(pid, signal.SIGKILL)

            killer = threading.Thread(target=kill)
            killer.start()
            try:
                h.handle_offer(envelope)
                killed_at.append(f"{point}: after the install")
            except DaemonGone:
                killed_at.append(point)
            killer.join()
            assert wait_gone(pid)
            h.restart_daemon()
            # Booted from what the journal says: the old model, or the new one if the kill came after the flip.
            booted = h.daemon_status["running_version"]
            assert h.running_version == booted and booted == (target if point == "flipped" else target - 1)
            if booted != target:
                h.handle_offer(offers.offer(models[target - 1], target, labels=labels))
            assert h.running_version == target and flipped(target)
            assert not any((tmp_path / "slots").glob("*/.model.onnx.staged"))
    finally:
        stop.set()
        cam.join()
    assert failures == [] and staged == []
    assert killed_at == ["begun", "staged", "flipped", "staged"], killed_at


def test_the_daemon_hands_the_offers_contract_to_this_process_which_applies_it(
        host: tuple[ModelHost, OfflineOffers]) -> None:
    """A model exported channels-last with BGR 0..255 input: the contract crosses the socket and is applied here."""
    import onnx

    from models import zoo
    from models.contract import infer_contract
    from models.preprocess import postprocess, preprocess
    from models.sessions import open_session
    from tests.models.variants import variant

    h, offers = host
    model = variant(onnx.load_from_string(zoo_model(1)), nhwc=True, bgr255=True)
    contract = infer_contract(model, channel_order="BGR", scale=255)
    h.handle_offer(offers.offer(model.SerializeToString(), 1, contract=contract))
    frame = np.asarray(render(5, np.random.default_rng(2)))[::-1]  # any size works; this one is 64x64 upside down
    original = zoo.contract("v1")
    want = postprocess(open_session(zoo_model(1), intra_threads=1).run(
        [original.output_name], {original.input_name: preprocess(frame, original)})[0], original)[0]
    got = h.predict(frame)
    assert (got.version, got.index, got.label) == (1, int(want.argmax()), original.label(int(want.argmax())))
    assert got.probability == pytest.approx(float(want.max()), abs=1e-4)
    assert h.swapper.current is not None and h.swapper.current.contract == contract


def test_an_application_that_says_not_now_keeps_its_model_until_it_allows_the_swap(tmp_path: Path) -> None:
    """Issue 21: ``ModelHost(safe_to_swap=...)`` is asked in this process; the daemon verifies and loads the
    update, waits at ``verified`` while the rule says no, and swaps it in when it says yes."""
    offers = OfflineOffers(SlotStore(tmp_path).downloads_dir)
    save_identity(tmp_path / "identity.json", Identity("car-1", "token", offers.pub, sha(offers.pub)))
    parked = threading.Event()
    h = ModelHost(config(tmp_path), poll=False, safe_to_swap=parked.is_set)
    h.start()
    try:
        assert h.handle_offer(offers.offer(zoo_model(1), 1))["running_version"] == 1  # no model: at once
        after = h.handle_offer(offers.offer(zoo_model(2), 2))
        assert after["running_version"] == 1 and after["swap_waiting"] == 2
        assert h.predict(IMAGE).version == 1
        parked.set()
        deadline = time.monotonic() + 10
        while h.running_version != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert h.running_version == 2 and h.predict(IMAGE).version == 2
        assert h.status()["swap_waiting"] is None
    finally:
        h.close()
