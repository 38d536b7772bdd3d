"""`ota tokens create|list|revoke` and `ota devices reauthorize|revoke|decommission` against a live server."""

from __future__ import annotations

import json

import pytest

from cli.main import main
from tests.server.factories import Car
from tests.support.device_keys import DeviceKey
from tests.support.live_server import LiveServer


def _ota(capsys: pytest.CaptureFixture[str], server: LiveServer, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, f"--server={server.url}", f"--token={server.admin_token}"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_operator_cli_mints_lists_and_revokes_scoped_enrolment_tokens(
        live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _ota(capsys, live_server, "tokens", "create", "--name", "depot", "--uses", "1",
                        "--expires", "7d", "--tag", "ring=depot", "--json")
    assert code == 0
    created = json.loads(out)
    assert created["max_uses"] == 1 and created["tags"] == {"ring": "depot"} and created["expires_at"]
    body = {"device_id": "cli-depot-1", "public_key": DeviceKey().public_b64}
    assert live_server.device(created["token"]).post("/api/v1/devices/enroll", json=body).status_code == 201
    code, out, _ = _ota(capsys, live_server, "tokens", "list")
    assert code == 0 and "depot" in out and "1/1" in out and created["token"] not in out
    assert _ota(capsys, live_server, "tokens", "revoke", str(created["id"]))[0] == 0
    code, out, _ = _ota(capsys, live_server, "tokens", "list", "--json")
    assert json.loads(out)[0]["revoked_at"] is not None
    code, _, err = _ota(capsys, live_server, "tokens", "create", "--expires", "soon")
    assert code == 1 and "--expires" in err


def test_operator_cli_reauthorizes_revokes_and_decommissions_devices(
        live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    cars = [Car(live_server, f"cli-car-{i}") for i in range(2)]
    code, out, _ = _ota(capsys, live_server, "devices", "revoke", "cli-car-0")
    assert code == 0 and "revoked" in out
    r = cars[0].http.post("/api/v1/device/poll", json={"line": "road-signs"})
    assert r.status_code == 401
    code, out, _ = _ota(capsys, live_server, "devices", "show", "cli-car-0")
    assert code == 0 and "REVOKED at" in out
    code, out, _ = _ota(capsys, live_server, "devices", "reauthorize", "cli-car-0", "--valid", "1h")
    assert code == 0 and "reauthorized" in out
    assert _ota(capsys, live_server, "devices", "decommission", "cli-car-1")[0] == 0
    code, out, _ = _ota(capsys, live_server, "devices", "list")
    assert "cli-car-1" not in out and "cli-car-0" in out
    code, _, err = _ota(capsys, live_server, "devices", "revoke", "nobody")
    assert code == 1 and "404" in err
