"""The real agent against the real registry (uvicorn on a free port, real SQLite, real HTTP)."""

import asyncio
import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_factories import nan_on_dark_model, zoo_model
from client_links import BadLink

from client import Agent, AgentConfig
from client.events import AgentEvents
from client.hotswap import NoModel
from client.manifest import Offer
from models import zoo
from models.roadsigns import render
from tests.support.live_server import LiveServer

IMAGE = render(3, np.random.default_rng(0))


def agent_for(server: LiveServer, state: Path, device_id: str = "car-1", **kw: Any) -> Agent:
    transport = kw.pop("transport", None)
    cfg = AgentConfig(server_url=server.url, device_id=device_id, state_dir=state,
                      enroll_token=server.enrollment_token, root_public_key=server.root_public_key,
                      tags={"region": "eu", "network": "lte"}, **kw)
    return Agent(cfg, transport=transport)


async def cycle(agent: Agent, polls: int = 1) -> None:
    await agent.start()
    await agent.ensure_enrolled()
    for _ in range(polls):
        await agent.poll_once()


def run(agent: Agent, polls: int = 1) -> None:
    async def go() -> None:
        try:
            await cycle(agent, polls)
        finally:
            await agent.aclose()

    asyncio.run(go())


def release(server: LiveServer, model: bytes) -> dict[str, Any]:
    """Publish a version and roll it out to every car (one stage at 100%); the first version is stable by itself.

    Published with the road-sign zoo's normalisation (the contract's mean/std), as its publisher would: the cars
    apply the line's contract to every frame (a dark frame is -2 after it, which ``nan_on_dark_model`` needs).
    """
    zoo_spec = {k: v for k, v in zoo.contract().to_dict().items() if k in ("mean", "std")}
    v = server.publish(model, contract=json.dumps(zoo_spec))
    if v["version"] > 1:
        r = server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": v["version"]})
        assert r.status_code == 201, r.text
        v["rollout_id"] = r.json()["id"]
    return v


def transfers(server: LiveServer, device_id: str) -> list[dict[str, Any]]:
    rows = server.admin().get("/api/v1/accounting/transfers", params={"limit": 10000}).json()
    return [r for r in rows if r["device_id"] == device_id]


def device(server: LiveServer, device_id: str) -> dict[str, Any]:
    r = server.admin().get(f"/api/v1/devices/{device_id}")
    assert r.status_code == 200, r.text
    return r.json()


def test_foundation_path_publish_poll_download_verify_swap_report_and_bytes_recorded(
        live_server: LiveServer, tmp_path: Path) -> None:
    v1 = release(live_server, zoo_model(1))
    agent = agent_for(live_server, tmp_path)
    run(agent)
    assert agent.running_version == 1 and agent.predict(IMAGE).version == 1
    assert agent.journal.outbox == []  # every report acknowledged
    pkg = v1["packages"]["lossless"]
    sent = transfers(live_server, "car-1")
    assert sum(t["bytes_sent"] for t in sent) == pkg["bytes"] and all(t["complete"] for t in sent)
    d = device(live_server, "car-1")
    assert d["reported_version"] == 1 and not d["drift"]
    assert [u["state"] for u in d["updates"]] == ["installed"]
    assert d["updates"][0]["bytes_reported"] == pkg["bytes"]

    release(live_server, zoo_model(2))
    agent2 = agent_for(live_server, tmp_path)  # a restart: same disk, no re-enrolment
    run(agent2)
    assert agent2.running_version == 2 and agent2.predict(IMAGE).version == 2
    sent2 = [t for t in transfers(live_server, "car-1") if t["target_version"] == 2]
    assert len(sent2) == 1 and sent2[0]["kind"] == "delta" and sent2[0]["complete"]
    assert agent2.journal.previous.version == 1  # type: ignore[union-attr]
    run(agent_for(live_server, tmp_path))  # steady state: no offer, nothing moves
    assert len(transfers(live_server, "car-1")) == 2


def test_bit_flip_in_transit_is_caught_and_the_artifact_refetched(live_server: LiveServer, tmp_path: Path) -> None:
    v1 = release(live_server, zoo_model(1))
    link = BadLink(flips=1, flip_at=123_457)
    agent = agent_for(live_server, tmp_path, transport=link)
    run(agent)
    assert agent.running_version == 1
    sent = transfers(live_server, "car-1")
    assert [t["range_start"] for t in sent] == [0, 0]  # the corrupt copy was not resumed from
    assert sum(t["bytes_sent"] for t in sent) == 2 * v1["packages"]["lossless"]["bytes"]
    assert agent.bytes_received_total == 2 * v1["packages"]["lossless"]["bytes"]
    assert link.artifact_requests == 2


def test_corrupted_download_is_rejected_and_the_old_model_keeps_serving(
        live_server: LiveServer, tmp_path: Path) -> None:
    release(live_server, zoo_model(1))
    run(agent_for(live_server, tmp_path))
    release(live_server, zoo_model(2))
    link = BadLink(flips=100)
    agent = agent_for(live_server, tmp_path, transport=link, download_max_attempts=2)
    run(agent)
    assert agent.running_version == 1 and agent.predict(IMAGE).version == 1
    d = device(live_server, "car-1")
    failed = [u for u in d["updates"] if u["target_version"] == 2]
    assert failed[0]["state"] == "failed" and "SHA-256" in failed[0]["reason"]
    assert not any(agent.store.downloads_dir.iterdir())  # nothing corrupt left behind


def test_reports_queue_on_disk_while_offline_and_are_sent_later(live_server: LiveServer, tmp_path: Path) -> None:
    release(live_server, zoo_model(1))
    link = BadLink()
    link.offline_paths = {"/device/reports"}
    agent = agent_for(live_server, tmp_path, transport=link)
    run(agent)
    assert agent.running_version == 1
    assert [r["state"] for r in agent.store.load().outbox] == ["downloading", "downloaded", "verified", "installed"]
    assert device(live_server, "car-1")["updates"][0]["state"] == "offered"
    again = agent_for(live_server, tmp_path)  # back in coverage, after a restart
    run(again)
    assert again.store.load().outbox == []
    d = device(live_server, "car-1")
    assert d["updates"][0]["state"] == "installed" and d["reported_version"] == 1


def test_failed_health_window_rolls_back_and_the_server_records_it(live_server: LiveServer, tmp_path: Path) -> None:
    release(live_server, zoo_model(1))
    live_server_run = agent_for(live_server, tmp_path)
    run(live_server_run)
    release(live_server, nan_on_dark_model())  # v2: passes the smoke test, NaN on dark frames
    agent = agent_for(live_server, tmp_path, health_window_inferences=10)

    async def go() -> bool | None:
        try:
            await cycle(agent)
            assert agent.running_version == 2
            dark = np.zeros_like(IMAGE)
            assert {agent.predict(dark).version for _ in range(10)} == {1}
            verdict = await agent.check_health()
            await agent.poll_once()  # sends the report; the server offers nothing more
            return verdict
        finally:
            await agent.aclose()

    assert asyncio.run(go()) is False
    assert agent.running_version == 1 and agent.store.load().outbox == []
    d = device(live_server, "car-1")
    v2 = [u for u in d["updates"] if u["target_version"] == 2][0]
    assert v2["state"] == "rolled_back" and "live inferences failed" in v2["reason"]
    assert d["reported_version"] == 1


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_enrolment_without_a_valid_fleet_token_says_what_to_do(
        live_server: LiveServer, tmp_path: Path, token: str | None) -> None:
    from client.errors import AgentError, Unauthorized

    agent = Agent(AgentConfig(server_url=live_server.url, device_id="car-9", state_dir=tmp_path,
                              enroll_token=token, root_public_key=live_server.root_public_key))
    with pytest.raises((Unauthorized, AgentError), match="enrol"):
        run(agent)
    assert not (tmp_path / "identity.json").exists()


def test_signed_rollback_restores_the_previous_slot_without_a_download(live_server: LiveServer, tmp_path: Path) -> None:
    release(live_server, zoo_model(1))
    run(agent_for(live_server, tmp_path))
    v2 = release(live_server, zoo_model(2))
    run(agent_for(live_server, tmp_path))
    before = len(transfers(live_server, "car-1"))
    r = live_server.admin().post(f"/api/v1/rollouts/{v2['rollout_id']}/rollback", json={})
    assert r.status_code == 201, r.text
    agent = agent_for(live_server, tmp_path)
    run(agent, polls=2)  # the second poll delivers the reports and gets no further offer
    assert agent.running_version == 1 and agent.predict(IMAGE).version == 1
    assert len(transfers(live_server, "car-1")) == before  # nothing downloaded
    d = device(live_server, "car-1")
    by_rollout = {(u["rollout_id"], u["target_version"]): u["state"] for u in d["updates"]}
    assert by_rollout[(v2["rollout_id"], 2)] == "rolled_back"
    assert by_rollout[(r.json()["id"], 1)] == "installed"
    assert d["reported_version"] == 1 and agent.journal.outbox == []


def test_delta_on_a_base_that_rotted_on_disk_falls_back_to_the_full_package(
        live_server: LiveServer, tmp_path: Path) -> None:
    release(live_server, zoo_model(1))
    run(agent_for(live_server, tmp_path))
    v2 = release(live_server, zoo_model(3))
    agent = agent_for(live_server, tmp_path)

    async def go() -> None:
        try:
            await agent.start()
            package = agent.store.slot_dir(agent.journal.active.slot) / "package"  # type: ignore[union-attr]
            data = bytearray(package.read_bytes())
            data[len(data) // 2] ^= 0x01  # a flash cell flips after boot: the base is no longer bit-exact
            package.write_bytes(bytes(data))
            await agent.ensure_enrolled()
            await agent.poll_once()
        finally:
            await agent.aclose()

    asyncio.run(go())
    assert agent.running_version == v2["version"] and agent.predict(IMAGE).version == v2["version"]
    kinds = [t["kind"] for t in transfers(live_server, "car-1") if t["target_version"] == v2["version"]]
    assert sorted(kinds) == ["delta", "full"]
    update = [u for u in device(live_server, "car-1")["updates"] if u["target_version"] == v2["version"]][0]
    assert update["state"] == "installed"


def test_camera_thread_sees_no_error_through_several_updates_from_the_server(
        live_server: LiveServer, tmp_path: Path) -> None:
    release(live_server, zoo_model(1))
    agent = agent_for(live_server, tmp_path, health_window_inferences=5)
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def camera() -> None:
        while not stop.is_set():
            try:
                seen.append(agent.predict(IMAGE).version)
                time.sleep(0.001)  # a camera at a few hundred frames per second, not a GIL hog
            except NoModel:
                time.sleep(0.001)  # before the very first install there is nothing to ask
            except BaseException as e:
                errors.append(e)

    async def go() -> None:
        try:
            await cycle(agent)
            for v in (2, 3, 4):
                await asyncio.to_thread(release, live_server, zoo_model(v))
                for _ in range(5):
                    await agent.poll_once()
                    if agent.running_version == v:
                        break
                    await asyncio.sleep(0.2)
                assert agent.running_version == v
                # the window closes after enough live inferences; a loaded machine needs longer
                verdict = None
                for _ in range(200):
                    verdict = await agent.check_health()
                    if verdict is not None:
                        break
                    await asyncio.sleep(0.05)
                assert verdict is True
        finally:
            await agent.aclose()

    t = threading.Thread(target=camera)
    t.start()
    try:
        asyncio.run(go())
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert {1, 2, 3, 4} <= set(seen)
    assert seen == sorted(seen)  # never an answer from an older model after a newer one


class Recorder(AgentEvents):
    """An observer as a car application or the simulator writes one (client.events)."""

    def __init__(self) -> None:
        self.polls: list[int | None] = []
        self.reports: list[tuple[int, str]] = []
        self.installs: list[tuple[int, str, int]] = []
        self.rollbacks: list[tuple[int, str]] = []

    def polled(self, offer: Mapping[str, Any] | None) -> None:
        self.polls.append(None if offer is None else offer["signed"]["target_version"])

    def reported(self, offer: Offer, state: str, reason: str | None) -> None:
        self.reports.append((offer.target_version, state))

    def installed(self, offer: Offer, artifact: str, received: int, timings: Mapping[str, float]) -> None:
        assert timings["package_bytes"] > 0 and "swap_ms" in timings
        self.installs.append((offer.target_version, artifact, received))

    def rolled_back(self, version: int, reason: str) -> None:
        self.rollbacks.append((version, reason))


def test_an_observer_hears_every_poll_report_install_and_rollback_of_a_real_agent(
        live_server: LiveServer, tmp_path: Path) -> None:
    seen = Recorder()

    def observed(**kw: Any) -> Agent:
        cfg = AgentConfig(server_url=live_server.url, device_id="car-1", state_dir=tmp_path,
                          enroll_token=live_server.enrollment_token, root_public_key=live_server.root_public_key,
                          tags={"region": "eu"}, **kw)
        return Agent(cfg, events=seen)

    release(live_server, zoo_model(1))
    run(observed(), polls=2)
    release(live_server, zoo_model(2))
    run(observed())
    sent = {t["target_version"]: t["bytes_sent"] for t in transfers(live_server, "car-1")}
    assert seen.polls == [1, None, 2]
    assert seen.installs == [(1, "full", sent[1]), (2, "delta", sent[2])]
    assert [s for v, s in seen.reports if v == 2] == ["downloading", "downloaded", "verified", "installed"]

    release(live_server, nan_on_dark_model())  # v3: passes the smoke test, NaN on dark frames
    agent = observed(health_window_inferences=10)

    async def go() -> None:
        try:
            await cycle(agent)
            for _ in range(10):
                agent.predict(np.zeros_like(IMAGE))
            assert await agent.check_health() is False
        finally:
            await agent.aclose()

    asyncio.run(go())
    assert [v for v, _ in seen.rollbacks] == [3] and "live inferences failed" in seen.rollbacks[0][1]
    assert seen.installs[-1][:2] == (3, "delta") and seen.reports[-1] == (3, "installed")
