"""The audit trail over real HTTP (issue 21 item 5): every state-changing call is recorded with actor, time,
target and outcome (publishes and refused publishes, rollout actions, enrolments, enrolment tokens, device
edits and revocations, dashboard logins, refused logins and logouts, online-key rotations), and
``GET /api/v1/audit`` filters them and pages through them by cursor."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

from server.keys import DEV_ROOT_KEY_FILE, rotate_online_key
from tests.conftest import ZOO
from tests.server.factories import Car, create_rollout, stored_state
from tests.support.live_server import LiveServer, run_live_server

_lines = count(1)


def _audit(server: LiveServer, **params: Any) -> list[dict[str, Any]]:
    r = server.admin().get("/api/v1/audit", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_audit_log_needs_the_admin_token_and_names_a_bad_filter(server: LiveServer) -> None:
    assert server.anonymous().get("/api/v1/audit").status_code == 401
    car = Car(server, "audit-not-admin")
    assert car.http.get("/api/v1/audit").status_code == 401
    admin = server.admin()
    for params, field in (({"outcome": "maybe"}, "outcome"), ({"limit": 0}, "limit"), ({"before": -1}, "before"),
                          ({"since": "yesterday"}, "since"), ({"until": "2026-13-01T00:00:00Z"}, "until"),
                          ({"action": "x" * 101}, "action")):
        r = admin.get("/api/v1/audit", params=params)
        assert r.status_code == 422 and field in r.json()["detail"], (params, r.text)
    r = admin.get("/api/v1/audit", params={"since": "2026-12-07T06:00:00"})  # no zone: ambiguous
    assert r.status_code == 400 and "since must carry a time zone" in r.json()["detail"]
    r = admin.get("/api/v1/audit", params={"until": "0001-01-01T00:00:00+05:00"})
    assert r.status_code == 400 and "until" in r.json()["detail"] and "out of range" in r.json()["detail"]


def test_publish_and_a_refused_publish_are_recorded_with_their_outcome(server: LiveServer) -> None:
    line = f"audit-pub-{next(_lines)}"
    server.publish(ZOO / "v1.onnx", line=line, codecs="lossless", publisher="ana")
    before = stored_state(server, audit=True)
    r = server.admin().post(f"/api/v1/lines/{line}/versions", files={"file": ("model.onnx", b"not onnx")},
                            data={"publisher": "ana"})
    assert r.status_code == 400
    after = stored_state(server, audit=True)
    assert after.pop("audit_log") == before.pop("audit_log") + 1 and after == before  # only the refusal's row
    ok, refused = sorted(_audit(server, action="version.publish", target=f"line:{line}"), key=lambda a: a["id"])
    assert (ok["actor"], ok["outcome"], ok["detail"]["version"], ok["detail"]["publisher"]) == ("admin", "ok", 1, "ana")
    assert ok["detail"]["codecs"] == ["lossless"]
    assert refused["outcome"] == "refused" and refused["detail"]["status"] == 400
    assert "ONNX" in refused["detail"]["reason"]
    assert _audit(server, action="version.publish", target=f"line:{line}", outcome="refused") == [refused]


def test_rollout_create_and_actions_are_recorded_against_the_rollout(server: LiveServer) -> None:
    line = f"audit-ro-{next(_lines)}"
    server.publish(ZOO / "v1.onnx", line=line, codecs="lossless")
    server.publish(ZOO / "v2.onnx", line=line, codecs="lossless")
    r = create_rollout(server, line=line, version=2, stages=[{"percent": 50}, {"percent": 100}])
    admin = server.admin()
    assert admin.post(f"/api/v1/rollouts/{r['id']}/pause").status_code == 200
    assert admin.post(f"/api/v1/rollouts/{r['id']}/bogus").status_code == 400
    rows = _audit(server, target=f"rollout:{r['id']}")
    assert [a["action"] for a in rows] == ["rollout.pause", "rollout.create"]
    assert all(a["actor"] == "admin" and a["outcome"] == "ok" for a in rows)
    assert [a["action"] for a in _audit(server, action="rollout.*", target=f"rollout:{r['id']}")] == [
        "rollout.pause", "rollout.create"]


def test_enrolment_tokens_and_device_edits_are_recorded_against_their_target(server: LiveServer) -> None:
    admin = server.admin()
    token = admin.post("/api/v1/enrollment-tokens", json={"name": "audit-batch", "max_uses": 2}).json()
    assert admin.post(f"/api/v1/enrollment-tokens/{token['id']}/revoke").status_code == 200
    assert [a["action"] for a in _audit(server, target=f"token:{token['id']}")] == ["token.revoke", "token.create"]
    Car(server, "audit-car", {"region": "eu"})
    assert admin.patch("/api/v1/devices/audit-car", json={"tags": {"region": "us"}}).status_code == 200
    assert admin.post("/api/v1/devices/audit-car/revoke").status_code == 200
    rows = _audit(server, target="device:audit-car")
    assert [(a["action"], a["outcome"]) for a in rows] == [("device.revoke", "ok"), ("device.update", "ok"),
                                                            ("device.enroll", "ok")]
    assert rows[2]["detail"]["outcome"] == "created"  # how an enrolment succeeded stays in its detail
    refused = server.device(server.enrollment_token).post("/api/v1/devices/enroll", json={"device_id": "audit-car"})
    assert refused.status_code == 409
    (row,) = _audit(server, target="device:audit-car", outcome="refused")
    assert row["action"] == "device.enroll" and row["actor"].startswith("client:")


def test_dashboard_logins_refused_logins_and_logouts_are_recorded(server: LiveServer) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    web = server.anonymous()
    assert web.post("/dashboard/login", data={"token": "wrong"}).status_code == 401
    r = web.post("/dashboard/login", data={"token": server.admin_token})
    assert r.status_code == 303
    assert web.post("/dashboard/logout").status_code == 303
    rows = _audit(server, since=since.isoformat())
    seen = [(a["action"], a["outcome"], a["target"]) for a in rows if a["action"].startswith("dashboard.")]
    assert seen == [("dashboard.logout", "ok", "dashboard"), ("dashboard.login", "ok", "dashboard"),
                    ("dashboard.login", "refused", "dashboard")]
    refused = [a for a in rows if a["outcome"] == "refused" and a["action"] == "dashboard.login"][0]
    assert refused["actor"].startswith("client:") and "wrong" not in str(refused)  # the token tried is not kept
    earlier = _audit(server, action="dashboard.login", until=since.isoformat())
    assert all(datetime.fromisoformat(a["at"]) < since for a in earlier)
    assert not {a["id"] for a in earlier} & {a["id"] for a in rows}


def test_the_cursor_pages_through_every_row_once_newest_first(server: LiveServer) -> None:
    admin = server.admin()
    for i in range(5):
        assert admin.post("/api/v1/enrollment-tokens", json={"name": f"page-{i}"}).status_code == 201
    seen: list[int] = []
    params: dict[str, Any] = {"limit": 2, "action": "token.create"}
    while True:
        r = admin.get("/api/v1/audit", params=params)
        assert r.status_code == 200
        seen += [a["id"] for a in r.json()]
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            break
        params["before"] = cursor
    everything = [a["id"] for a in _audit(server, action="token.create")]
    assert seen == everything and len(seen) >= 5 and seen == sorted(seen, reverse=True)


def test_an_online_key_rotation_the_server_picks_up_is_recorded(tmp_path: Path) -> None:
    with run_live_server(tmp_path / "srv", keys_reload_s=0.1) as srv:
        ring = rotate_online_key(srv.settings, srv.data_dir / DEV_ROOT_KEY_FILE)
        deadline = time.monotonic() + 10
        while not (rows := _audit(srv, action="keys.rotate")):
            assert time.monotonic() < deadline, "the rotation was not recorded"
            time.sleep(0.05)
        assert rows[0]["actor"] == "server" and rows[0]["target"] == f"key:{ring.signer.key_id[:40]}"
        assert rows[0]["detail"]["delegation_version"] == 2
