"""A real agent against a real registry, with an attacker on the link rewriting poll answers.

The man in the middle (an httpx transport around the real one: the outside
world) records every genuine offer and can put any envelope into a poll
response.  Forged signatures, envelopes signed by another key, replayed old
offers, expired offers and downgrades without a signed rollback must all be
refused: the car keeps running what it runs, fetches no artifact, and its
highest accepted ``manifest_version`` does not move.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import Agent, AgentConfig
from server.security import Signer
from tests.support.live_server import LiveServer, run_live_server

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


class ManInTheMiddle(httpx.AsyncBaseTransport):
    """Real HTTP to the real server; records genuine offers and can substitute the next poll's offer."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.genuine: list[dict[str, Any]] = []
        self.inject: dict[str, Any] | None = None
        self.artifact_requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if "/artifacts/" in request.url.path:
            self.artifact_requests += 1
        if not request.url.path.endswith("/device/poll") or response.status_code != 200:
            return response
        body = json.loads(await response.aread())
        if body.get("offer"):
            self.genuine.append(copy.deepcopy(body["offer"]))
        if self.inject is not None:
            body["offer"], self.inject = self.inject, None
        return httpx.Response(200, json=body, request=request)

    async def aclose(self) -> None:
        # Each agent run closes its client (and this transport) at the end of its event loop; the next
        # run (a new agent process, as after a power cycle) gets fresh connections on the same link.
        await self.inner.aclose()
        self.inner = httpx.AsyncHTTPTransport()


class Car:
    """One car whose agent restarts for every poll (state on disk), talking through the attacker's link."""

    def __init__(self, srv: LiveServer, state: Path) -> None:
        self.srv, self.state, self.mitm = srv, state, ManInTheMiddle()
        self.agent = self._agent()

    def _agent(self) -> Agent:
        return Agent(AgentConfig(server_url=self.srv.url, device_id="car-1", state_dir=self.state,
                                 enroll_token=self.srv.enrollment_token, root_public_key=self.srv.root_public_key,
                                 tags={"region": "eu"}), transport=self.mitm)

    def poll(self) -> None:
        self.agent = self._agent()
        self.agent.run_once()  # start, enrol if needed, poll once, close: one wake-up


@pytest.fixture
def car(tmp_path: Path) -> Iterator[Car]:
    """A car running v1 (installed through the attacker's link, which only watched); v2 is published."""
    with run_live_server(tmp_path / "srv") as srv:
        srv.publish(ZOO / "v1.onnx")
        srv.publish(ZOO / "v2.onnx")
        c = Car(srv, tmp_path / "car")
        c.poll()
        assert c.agent.running_version == 1 and len(c.mitm.genuine) == 1
        yield c


def resign(signed: dict[str, Any], signer: Signer) -> dict[str, Any]:
    return signer.envelope(signed)


def v2_offer_fields(srv: LiveServer, base: dict[str, Any]) -> dict[str, Any]:
    v2 = srv.admin().get("/api/v1/lines/road-signs/versions/2").json()["packages"]["lossless"]
    return {**base, "target_version": 2, "model_sha256": v2["model_sha256"], "delta": None,
            "package": {"sha256": v2["sha256"], "size": v2["bytes"], "url": f"/api/v1/artifacts/{v2['sha256']}"},
            "manifest_version": base["manifest_version"] + 1}


def assert_refused(car: Car, running: int, highest: int) -> None:
    assert car.agent.running_version == running
    assert car.agent.journal.highest_manifest_version == highest
    assert car.mitm.artifact_requests == 0


def test_forged_offers_are_refused_and_nothing_is_fetched(car: Car) -> None:
    srv, mitm = car.srv, car.mitm
    genuine = mitm.genuine[0]
    highest = car.agent.journal.highest_manifest_version
    mitm.artifact_requests = 0
    forged = v2_offer_fields(srv, genuine["signed"])
    attacker = Signer(Ed25519PrivateKey.generate())
    attacker_with_server_keyid = attacker.envelope(forged)
    attacker_with_server_keyid["signatures"][0]["keyid"] = genuine["signatures"][0]["keyid"]
    for envelope in (
        {"signed": forged, "signatures": genuine["signatures"]},  # altered body, old signature
        attacker.envelope(forged),  # another key
        attacker_with_server_keyid,  # another key claiming the pinned key's id
        {"signed": forged, "signatures": []},  # unsigned
        {"signed": forged, "signatures": [{"keyid": genuine["signatures"][0]["keyid"],
                                           "sig": base64.b64encode(b"\0" * 64).decode()}]},
    ):
        mitm.inject = envelope
        car.poll()
        assert_refused(car, running=1, highest=highest)


def test_replayed_old_offer_after_an_upgrade_is_refused(car: Car) -> None:
    srv, mitm = car.srv, car.mitm
    old = mitm.genuine[0]
    r = srv.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2})
    assert r.status_code == 201
    car.poll()
    assert car.agent.running_version == 2
    highest = car.agent.journal.highest_manifest_version
    assert highest > old["signed"]["manifest_version"]
    mitm.artifact_requests = 0
    mitm.inject = old  # genuinely signed by the registry, but older: a replay (and a downgrade)
    car.poll()
    assert_refused(car, running=2, highest=highest)


def test_validly_signed_downgrade_without_rollback_and_expired_offers_are_refused(
        car: Car) -> None:
    srv, mitm = car.srv, car.mitm
    signer = srv.ctx.signer  # even with the registry's own key: the car's rules still hold
    r = srv.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2})
    assert r.status_code == 201
    car.poll()
    assert car.agent.running_version == 2
    highest = car.agent.journal.highest_manifest_version
    mitm.artifact_requests = 0
    downgrade = {**mitm.genuine[0]["signed"], "manifest_version": highest + 1, "rollback": False}
    mitm.inject = resign(downgrade, signer)
    car.poll()
    assert_refused(car, running=2, highest=highest)
    past = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    expired = {**mitm.genuine[-1]["signed"], "manifest_version": highest + 2, "expires": past}
    mitm.inject = resign(expired, signer)
    car.poll()
    assert_refused(car, running=2, highest=highest)
    other_car = {**mitm.genuine[-1]["signed"], "manifest_version": highest + 3, "device_id": "car-2"}
    mitm.inject = resign(other_car, signer)
    car.poll()
    assert_refused(car, running=2, highest=highest)
