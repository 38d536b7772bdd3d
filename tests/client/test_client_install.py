"""The agent's install path on real models and a real disk, with artifacts already in its cache.

No network here: the offers are signed by a key the test pins, and the
artifacts sit where the downloader would have left them.  Network paths are
in test_client_registry.py against the real server.
"""

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agent_factories import LABELS10, OfflineOffers, nan_on_dark_model, sha, zoo_model

from client import Agent, AgentConfig
from client.decode_worker import DecodeWorker, InProcessDecoder
from client.hotswap import default_session_factory
from client.identity import Identity, save_identity
from models.roadsigns import render

IMAGE = render(3, np.random.default_rng(0))


def make_agent(state: Path, session_factory: object = None, **cfg: object) -> tuple[Agent, OfflineOffers]:
    agent = Agent(AgentConfig(server_url="http://offline.invalid", device_id="car-1", state_dir=state,
                              **cfg), session_factory=session_factory)  # type: ignore[arg-type]
    offers = OfflineOffers(agent.store.downloads_dir)
    save_identity(state / "identity.json", Identity("car-1", "token", offers.pub, sha(offers.pub)))
    asyncio.run(agent.start())
    return agent, offers


def states(agent: Agent) -> list[tuple[str, int, str | None]]:
    return [(r["state"], r["target_version"], r["artifact"]) for r in agent.journal.outbox]


def test_first_install_runs_the_full_package_and_queues_every_state_change(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    m1 = zoo_model(1)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    assert agent.running_version == 1 and agent.predict(IMAGE).version == 1
    assert [s for s, *_ in states(agent)] == ["downloading", "downloaded", "verified", "installed"]
    assert [r["seq"] for r in agent.journal.outbox] == [1, 2, 3, 4]
    assert agent.store.verify(agent.journal.active)  # type: ignore[arg-type]
    assert list(agent.store.downloads_dir.iterdir()) == []  # cache cleaned after install
    assert agent.store.load() == agent.journal  # everything is on disk


def test_delta_is_used_when_its_base_is_the_package_on_the_car(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    m1, m2 = zoo_model(1), zoo_model(2)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, base_package=offers.package(m1))))
    assert agent.running_version == 2
    assert states(agent)[-1] == ("installed", 2, "delta")
    assert agent.journal.previous.version == 1  # type: ignore[union-attr]


def test_delta_made_for_another_base_falls_back_to_the_full_package(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    m1, m2, m3 = zoo_model(1), zoo_model(2), zoo_model(3)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    wrong = offers.codec.diff(offers.package(m3), offers.package(m2))  # names v3's package as its base
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, base_package=offers.package(m1), delta=wrong)))
    assert agent.running_version == 2
    assert states(agent)[-1] == ("installed", 2, "full")


def test_model_failing_its_smoke_test_is_never_swapped_in_and_never_retried(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    m1, m2 = zoo_model(1), zoo_model(2)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    before = agent.store.load().active
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, smoke_model=zoo_model(3))))
    assert agent.running_version == 1 and agent.predict(IMAGE).version == 1
    assert agent.store.load().active == before
    last = agent.journal.outbox[-1]
    assert last["state"] == "failed" and "SmokeTestFailed" in last["reason"]
    assert sha(m2) in agent.journal.bad_models
    n = len(agent.journal.outbox)
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, smoke_model=zoo_model(3))))  # offered again
    assert agent.journal.outbox[n:][0]["state"] == "failed" and len(agent.journal.outbox) == n + 1
    assert "before" in agent.journal.outbox[-1]["reason"]


def test_replayed_or_foreign_offers_change_nothing(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    m1, m2 = zoo_model(1), zoo_model(2)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    old = offers.offer(m2, 2)
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, device_id="car-2")))
    offers.mv += 10
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))  # same model, raises the high-water mark
    n = len(agent.journal.outbox)
    asyncio.run(agent.handle_offer(old))  # lower manifest_version: a replay
    assert agent.running_version == 1 and len(agent.journal.outbox) == n


def test_failed_health_window_rolls_back_to_the_previous_slot_and_reports_it(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path, health_window_inferences=10)
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1)))
    asyncio.run(agent.handle_offer(offers.offer(nan_on_dark_model(), 2)))
    assert agent.running_version == 2
    dark = np.zeros_like(IMAGE)
    answers = [agent.predict(dark) for _ in range(10)]  # the camera drives into a tunnel
    assert {a.version for a in answers} == {1}  # every frame answered, by the old model
    assert asyncio.run(agent.check_health()) is False
    assert agent.running_version == 1 and agent.predict(dark).version == 1
    last = agent.journal.outbox[-1]
    assert last["state"] == "rolled_back" and "10 of 10" in last["reason"] and last["target_version"] == 2
    assert agent.store.load().active.version == 1  # type: ignore[union-attr]


def test_healthy_window_closes_and_drops_the_old_session(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path, health_window_inferences=5)
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1)))
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(2), 2)))
    for _ in range(5):
        agent.predict(IMAGE)
    assert asyncio.run(agent.check_health()) is True
    assert agent.swapper.fallback is None and agent.running_version == 2


def test_signed_rollback_puts_the_previous_slot_back_without_a_download(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    m1, m2 = zoo_model(1), zoo_model(2)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    asyncio.run(agent.handle_offer(offers.offer(m2, 2)))
    asyncio.run(agent.handle_offer(offers.offer(m1, 1, rollback=True, place_package=False)))
    assert agent.running_version == 1 and agent.predict(IMAGE).version == 1
    assert [s[:2] for s in states(agent)[-5:]] == [("rolled_back", 2), ("downloading", 1), ("downloaded", 1),
                                                   ("verified", 1), ("installed", 1)]
    assert agent.journal.outbox[-1]["bytes_received"] == 0
    assert agent.journal.previous.version == 2  # type: ignore[union-attr]


def test_unsigned_downgrade_is_refused(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1)))
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(2), 2)))
    n = len(agent.journal.outbox)
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1)))
    assert agent.running_version == 2 and len(agent.journal.outbox) == n


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_during_install_reports_a_clear_error_and_the_old_model_keeps_serving(
        tmp_path: Path, tiny_disk: Path) -> None:
    """A real tmpfs just big enough for v1 and the v2 artifact, not for the v2 slot."""
    m1, m2 = zoo_model(1), zoo_model(2)
    pkg2 = OfflineOffers(tmp_path).package(m2)
    need = len(OfflineOffers(tmp_path).package(m1)) + len(m1) + len(pkg2) + 64 * 1024
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={need}", "tmpfs", str(tiny_disk)], check=True)
    agent, offers = make_agent(tiny_disk / "agent")
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    assert agent.running_version == 1
    asyncio.run(agent.handle_offer(offers.offer(m2, 2)))
    assert agent.running_version == 1 and agent.predict(IMAGE).version == 1
    fail = [r for r in agent.journal.outbox if r["state"] == "failed"][-1]
    assert "disk full" in fail["reason"]
    assert agent.store.verify(agent.journal.active)  # type: ignore[arg-type]
    os.sync()
    reboot = Agent(AgentConfig(server_url="http://offline.invalid", device_id="car-1", state_dir=tiny_disk / "agent"))
    asyncio.run(reboot.start())
    assert reboot.running_version == 1


def test_install_decodes_in_the_worker_process_and_lowers_the_gil_switch_interval_only_meanwhile(
        tmp_path: Path) -> None:
    seen: list[float] = []  # the interpreter's switch interval while each session was built
    make = default_session_factory()

    def factory(model: bytes, model_sha256: str) -> object:
        seen.append(sys.getswitchinterval())
        return make(model, model_sha256)

    before = sys.getswitchinterval()
    agent, offers = make_agent(tmp_path, session_factory=factory, gil_switch_interval_s=0.0002)
    m1, m2 = zoo_model(1), zoo_model(2)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, base_package=offers.package(m1))))
    assert agent.running_version == 2 and states(agent)[-1] == ("installed", 2, "delta")
    assert isinstance(agent.decoder, DecodeWorker) and agent.decoder.pid not in (None, os.getpid())
    assert seen == pytest.approx([0.0002, 0.0002])
    assert sys.getswitchinterval() == before  # restored once the installs were done


def test_in_process_decoding_installs_the_same_model_and_bad_settings_are_refused(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path / "car", decode_in_subprocess=False, gil_switch_interval_s=None)
    m1, m2 = zoo_model(1), zoo_model(2)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, base_package=offers.package(m1))))
    assert isinstance(agent.decoder, InProcessDecoder)
    assert agent.running_version == 2 and agent.predict(IMAGE).version == 2
    with pytest.raises(ValueError, match="gil_switch_interval_s must be > 0"):
        make_agent(tmp_path / "other", gil_switch_interval_s=0.0)


def test_sessions_load_from_the_staged_file_which_becomes_the_slot_model_and_never_outlives_an_install(
        tmp_path: Path) -> None:
    loaded_from: list[object] = []
    make = default_session_factory()

    def factory(model: object, model_sha256: str) -> object:
        loaded_from.append(model)
        return make(model, model_sha256)  # type: ignore[arg-type]

    agent, offers = make_agent(tmp_path, session_factory=factory)
    m1, m2 = zoo_model(1), zoo_model(2)
    asyncio.run(agent.handle_offer(offers.offer(m1, 1)))
    asyncio.run(agent.handle_offer(offers.offer(m2, 2, base_package=offers.package(m1))))
    assert agent.running_version == 2 and agent.predict(IMAGE).version == 2
    # Every session came from a file (ONNX Runtime holds the GIL longer reading bytes), staged in the slot it
    # was then committed to; the slot's model is that file, renamed, and the stage is gone.
    assert [type(m) for m in loaded_from] == [type(tmp_path)] * 2
    assert [Path(str(m)).parent.name for m in loaded_from] == ["a", "b"]
    assert all(not Path(str(m)).exists() for m in loaded_from)
    assert agent.store.verify(agent.journal.active)  # type: ignore[arg-type]
    assert agent.store.verify(agent.journal.previous)  # type: ignore[arg-type]
    # A model failing its smoke test leaves no staged file and the slots as they were.
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(3), 3, smoke_model=zoo_model(4))))
    assert agent.running_version == 2 and states(agent)[-1][0] == "failed"
    assert not list((tmp_path / "slots").glob("*/.model.onnx.staged"))
    assert agent.store.verify(agent.journal.active)  # type: ignore[arg-type]
    assert agent.store.verify(agent.journal.previous)  # type: ignore[arg-type]
    # The reports between download and commit reached the disk with the commit, in order.
    on_disk = [(r["state"], r["target_version"]) for r in agent.store.load().outbox]
    assert on_disk[4:8] == [("downloading", 2), ("downloaded", 2), ("verified", 2), ("installed", 2)]
    # The next install goes to the slot the journal does not name (no journal write needed before it), and
    # the slot of the model two versions back is emptied: two models on disk at rest.
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(4), 4, labels=[*LABELS10, "roadworks"])))
    assert agent.running_version == 4
    assert (agent.journal.active.slot, agent.journal.previous.slot) == ("c", "b")  # type: ignore[union-attr]
    assert sorted(p.parent.name for p in (tmp_path / "slots").glob("*/*")) == ["b", "b", "c", "c"]
