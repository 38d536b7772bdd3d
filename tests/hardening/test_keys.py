"""The fleet's keys (issue 15, item 4): an offline root, a rotatable online key, signed "no offer" answers.

Real registries (uvicorn, SQLite or PostgreSQL), real agents over real HTTP; the attacker sits on the
link (an httpx transport: the outside world) or holds a key that leaked.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.main import main as ota
from client import Agent, AgentConfig
from client.errors import OfferRejected
from server.config import InsecureConfiguration, Settings, resolve_secrets
from server.keys import (
    DEV_ROOT_KEY_FILE,
    load_keyring,
    load_private,
    private_pem,
    raw_public,
    rotate_online_key,
    write_secret,
)
from server.security import Signer
from tests.support.live_server import LiveServer, run_live_server

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the server's key files ---------------------------------------------------------------------------------


def test_a_development_server_creates_its_secrets_private_from_the_start_never_by_chmod(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_chmod(*_a: Any, **_k: Any) -> None:
        raise AssertionError("a secret was created readable and chmod-ed afterwards")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    data = tmp_path / "data"
    settings = resolve_secrets(Settings(data_dir=data))
    first = load_keyring(settings)
    again = load_keyring(settings)
    assert first.signer.key_id == again.signer.key_id and first.version == again.version == 1
    assert mode(data) == 0o700
    for name in ("admin-token", "enrollment-token", "signing-key.pem", DEV_ROOT_KEY_FILE):
        assert mode(data / name) == 0o600, name
    assert first.root_keyid != first.signer.key_id  # the root only vouches; it signs no offer


def _production(data: Path, **kw: Any) -> Settings:
    return Settings(environment="production", data_dir=data, admin_token="a" * 32, enrollment_token="e" * 32, **kw)


def test_a_production_server_without_keys_stops_and_names_the_command_that_makes_them(tmp_path: Path) -> None:
    settings = _production(tmp_path / "data")
    with pytest.raises(InsecureConfiguration, match="ota keys init"):
        load_keyring(settings)
    assert not (tmp_path / "data" / "signing-key.pem").exists()  # nothing silently generated


def test_ota_keys_init_keeps_the_root_off_the_server_and_production_refuses_a_key_others_can_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data, offline = tmp_path / "data", tmp_path / "offline" / "root-key.pem"
    monkeypatch.setenv("OTA_DATA_DIR", str(data))
    assert ota(["keys", "init", "--data-dir", str(data), "--root-key-out", str(offline)]) == 0
    assert mode(offline) == 0o600 and not (data / DEV_ROOT_KEY_FILE).exists()
    ring = load_keyring(_production(data))
    assert ring.version == 1 and raw_public(load_private(offline)) == ring.root_public
    assert ota(["keys", "init", "--data-dir", str(data), "--root-key-out", str(offline)]) == 2  # never twice

    (data / "signing-key.pem").chmod(0o644)
    with pytest.raises(InsecureConfiguration, match="readable by group or others"):
        load_keyring(_production(data))
    (data / "signing-key.pem").chmod(0o600)
    (data / DEV_ROOT_KEY_FILE).write_bytes(offline.read_bytes())
    with pytest.raises(InsecureConfiguration, match="root key must be kept offline"):
        load_keyring(_production(data))
    (data / DEV_ROOT_KEY_FILE).unlink()

    capsys.readouterr()
    assert ota(["keys", "rotate", "--data-dir", str(data), "--root-key", str(offline)]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["delegation_version"] == 2 and rotated["online_keyid"] != ring.signer.key_id
    stranger = tmp_path / "stranger.pem"
    write_secret(stranger, private_pem(Ed25519PrivateKey.generate()))
    assert ota(["keys", "rotate", "--data-dir", str(data), "--root-key", str(stranger)]) == 2
    assert "not the root key" in capsys.readouterr().err
    assert load_keyring(_production(data)).version == 2  # the stranger changed nothing


def test_ota_serve_in_production_without_keys_exits_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in {"OTA_ENVIRONMENT": "production", "OTA_ADMIN_TOKEN": "a" * 32, "OTA_ENROLLMENT_TOKEN": "e" * 32}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("OTA_DATA_DIR", str(tmp_path / "data"))
    assert ota(["serve", "--data-dir", str(tmp_path / "data"), "--no-migrate", "--port", "1"]) == 2
    assert "ota keys init" in capsys.readouterr().err


# -- the car ----------------------------------------------------------------------------------------------


class Tamper(httpx.AsyncBaseTransport):
    """Real HTTP to the real server; ``rewrite(path, body)`` may change any JSON answer the car gets."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.rewrite: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None
        self.answers: list[tuple[str, dict[str, Any]]] = []
        self.artifact_requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        path = request.url.path
        if "/artifacts/" in path:
            self.artifact_requests += 1
            return response
        if response.status_code != 200:
            return response
        body = json.loads(await response.aread())
        self.answers.append((path, copy.deepcopy(body)))
        if self.rewrite is not None:
            body = self.rewrite(path, body)
        return httpx.Response(200, json=body, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()
        self.inner = httpx.AsyncHTTPTransport()


NO_ROOT = b""


class Car:
    def __init__(self, srv: LiveServer, state: Path, root: bytes | None = None) -> None:
        self.srv, self.state, self.link = srv, state, Tamper()
        self.root = srv.root_public_key if root is None else (root or None)
        self.clock_offset = timedelta(0)
        self.agent = self._agent()

    def _agent(self) -> Agent:
        return Agent(AgentConfig(server_url=self.srv.url, device_id="car-1", state_dir=self.state,
                                 enroll_token=self.srv.enrollment_token, root_public_key=self.root),
                     transport=self.link, wall_clock=lambda: datetime.now(UTC) + self.clock_offset)

    def poll(self) -> None:
        self.agent = self._agent()
        self.agent.run_once()


def test_a_car_without_a_root_key_or_with_another_fleets_root_never_enrols(tmp_path: Path) -> None:
    with run_live_server(tmp_path / "srv") as srv:
        for i, root in enumerate((NO_ROOT, raw_public(Ed25519PrivateKey.generate()))):
            car = Car(srv, tmp_path / f"car{i}", root=root)
            with pytest.raises(OfferRejected, match="root key|does not verify|no valid signature"):
                car.poll()
            assert not (car.state / "identity.json").exists()  # nothing pinned from an unverified first answer


def test_no_offer_answers_are_signed_for_the_car_and_a_stale_or_stripped_one_is_refused(tmp_path: Path) -> None:
    with run_live_server(tmp_path / "srv", status_ttl_s=120) as srv:
        srv.publish(ZOO / "v1.onnx")
        car = Car(srv, tmp_path / "car")
        car.poll()
        car.poll()  # v1 installed by the first poll; this one has nothing to offer
        assert car.agent.running_version == 1 and car.agent.status is not None
        assert timedelta(seconds=100) < car.agent.status.expires - datetime.now(UTC) <= timedelta(seconds=120)
        path, answer = car.link.answers[-1]
        assert path.endswith("/device/poll") and answer["offer"] is None and answer["status"]["signed"]["type"] == "status"

        car.clock_offset = timedelta(minutes=5)  # a replayed answer from 5 minutes ago looks like this to the car
        with pytest.raises(OfferRejected, match="stale"):
            car.poll()
        car.clock_offset = timedelta(0)
        car.link.rewrite = lambda p, b: {k: v for k, v in b.items() if k != "status"} if p.endswith("/poll") else b
        with pytest.raises(OfferRejected, match="not a signed envelope"):
            car.poll()
        other = copy.deepcopy(answer["status"])
        other["signed"]["device_id"] = "car-2"
        car.link.rewrite = lambda p, b: {**b, "status": other} if p.endswith("/poll") else b
        with pytest.raises(OfferRejected):
            car.poll()
        car.link.rewrite = None
        car.poll()  # the genuine answer is accepted again
        assert car.agent.running_version == 1


def test_a_forged_manifest_version_far_ahead_is_refused_and_does_not_lock_the_car_out(tmp_path: Path) -> None:
    with run_live_server(tmp_path / "srv") as srv:
        srv.publish(ZOO / "v1.onnx")
        srv.publish(ZOO / "v2.onnx")
        car = Car(srv, tmp_path / "car")
        car.poll()
        highest = car.agent.journal.highest_manifest_version
        r = srv.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2})
        assert r.status_code == 201
        genuine: list[dict[str, Any]] = []

        def forge(path: str, body: dict[str, Any]) -> dict[str, Any]:
            if path.endswith("/poll") and body.get("offer"):
                genuine.append(body["offer"])
                signed = {**body["offer"]["signed"], "manifest_version": 2**62}
                body = {**body, "offer": srv.ctx.signer.envelope(signed)}  # even signed by the registry's key
            return body

        car.link.rewrite, car.link.artifact_requests = forge, 0
        car.poll()
        assert genuine and car.agent.running_version == 1
        assert car.agent.journal.highest_manifest_version == highest and car.link.artifact_requests == 0
        car.link.rewrite = None
        car.poll()  # the genuine offer still installs: the forged number did not raise the car's floor
        assert car.agent.running_version == 2


def test_a_rotated_online_key_is_followed_by_cars_and_the_old_key_and_old_delegation_are_refused(
        tmp_path: Path) -> None:
    with run_live_server(tmp_path / "srv", keys_reload_s=0.1) as srv:
        srv.publish(ZOO / "v1.onnx")
        srv.publish(ZOO / "v2.onnx")
        car = Car(srv, tmp_path / "car")
        car.poll()
        car.poll()
        assert car.agent.running_version == 1
        fresh_status = car.link.answers[-1][1]["status"]
        old_signer = Signer(load_private(srv.data_dir / "signing-key.pem"))
        old_delegation = srv.anonymous().get("/api/v1/keys").json()["delegation"]
        assert srv.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2}).status_code == 201
        # Withholding the offer behind a replayed status works only while that status is fresh (status_ttl_s).
        car.link.rewrite = lambda p, b: {**b, "offer": None, "status": fresh_status} if p.endswith("/poll") else b
        car.poll()
        assert car.agent.running_version == 1
        offered = [b["offer"] for p, b in car.link.answers if p.endswith("/poll") and b.get("offer")]
        assert offered and offered[-1]["signatures"][0]["keyid"] == old_signer.key_id  # stored, old key

        ring = rotate_online_key(srv.settings, srv.data_dir / DEV_ROOT_KEY_FILE)
        deadline = time.monotonic() + 10
        while srv.anonymous().get("/api/v1/keys").json()["delegation"]["signed"]["version"] != 2:
            assert time.monotonic() < deadline, "the server did not pick up the rotated key"
            time.sleep(0.05)
        car.link.rewrite = None
        car.poll()  # the stored offer is signed again by the new key; the car fetches v2 of the delegation
        assert car.agent.running_version == 2
        resigned = [b["offer"] for p, b in car.link.answers if p.endswith("/poll") and b.get("offer")][-1]
        assert resigned["signatures"][0]["keyid"] == ring.signer.key_id
        assert json.loads((car.state / "trust.json").read_bytes())["signed"]["version"] == 2
        highest = car.agent.journal.highest_manifest_version

        # A thief of the old online key signs an offer: refused (the car looks for a newer key and finds none).
        forged = old_signer.envelope({**resigned["signed"], "manifest_version": highest + 1, "target_version": 1,
                                      "rollback": True})
        car.link.rewrite = lambda p, b: {**b, "offer": forged} if p.endswith("/poll") else b
        car.link.artifact_requests = 0
        car.poll()
        assert car.agent.running_version == 2 and car.agent.journal.highest_manifest_version == highest
        # ... nor can it bring its key back by replaying the old delegation to the car.
        car.link.rewrite = lambda p, b: {**b, "delegation": old_delegation} if p.endswith("/keys") else (
            {**b, "offer": forged} if p.endswith("/poll") else b)
        car.poll()
        assert car.agent.running_version == 2 and car.agent.journal.highest_manifest_version == highest
        assert car.agent.trust.delegation is not None and car.agent.trust.delegation.version == 2
        assert car.link.artifact_requests == 0

        car.link.rewrite = None
        car.poll()
        assert car.agent.status is not None  # the no-offer status, signed by the new key, verifies


def test_the_keys_endpoint_serves_a_delegation_that_the_root_verifies(live_server: LiveServer) -> None:
    from server.security import verify_envelope

    body = live_server.anonymous().get("/api/v1/keys").json()
    assert verify_envelope(body["delegation"], live_server.root_public_key)
    online = body["delegation"]["signed"]["online_keys"]
    assert [base64.b64decode(k["public_key"]) for k in online] == [live_server.public_key]
