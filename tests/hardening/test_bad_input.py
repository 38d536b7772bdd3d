"""Hostile and malformed input against the real registry: each is refused with a clear 4xx and stores nothing.

Covers what issue 8 lists that tests/server does not already: zip-bomb-like
and booby-trapped ONNX uploads, compressed bodies, path traversal in artifact
and line names, oversized headers, wrong / rotated / expired credentials, and
one device reaching for another's data.  (Plain non-ONNX, truncated, empty and
over-the-limit uploads are in tests/server/test_publish.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.blobs import BlobNotFound, LocalBlobStore
from server.dashboard import session as dashboard_session
from server.dashboard import session_store
from server.db import utcnow
from server.httpproto import MAX_HEAD_BYTES
from tests.hardening import hostile
from tests.server.factories import stored_state
from tests.support.live_server import LiveServer, run_live_server

ZOO = hostile.ZOO
PUBLISH = "/api/v1/lines/road-signs/versions"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """v1 stable for everyone, v2 rolled out to region=us only; car-eu and car-us have polled once."""
    with run_live_server(tmp_path_factory.mktemp("bad-input")) as srv:
        v1 = srv.publish(ZOO / "v1.onnx")
        v2 = srv.publish(ZOO / "v2.onnx")
        r = srv.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2, "selector": {"region": "us"}})
        assert r.status_code == 201, r.text
        cars = {}
        for name, region in (("car-eu", "eu"), ("car-us", "us")):
            token = srv.enroll(name, {"region": region})["device_token"]
            offer = srv.device(token).post("/api/v1/device/poll", json={"line": "road-signs"}).json()["offer"]
            cars[name] = {"token": token, "offer": offer["signed"]}
        assert cars["car-eu"]["offer"]["target_version"] == 1 and cars["car-us"]["offer"]["target_version"] == 2
        yield {"srv": srv, "v1": v1, "v2": v2, "cars": cars, "rollout": r.json()["id"]}


def refused_and_nothing_stored(srv: LiveServer, send: Any, status: int, error: str, needle: str) -> None:
    before = stored_state(srv)
    r = send()
    assert r.status_code == status, r.text
    assert r.json()["error"] == error, r.text
    assert needle in r.json()["detail"], r.json()["detail"]
    assert stored_state(srv) == before


@pytest.mark.parametrize(("name", "data", "needle"), [
    ("external data outside the upload", hostile.external_data_model("../../../../etc/passwd"), "outside"),
    ("external data naming a server file", hostile.external_data_model("registry.db"), "registry.db"),
    ("external data naming a file that exists", hostile.external_data_model(str(Path(hostile.__file__).name)),
     ""),
    ("weight claiming 640 billion elements", hostile.huge_declared_tensor_model(), "onnx.checker"),
    ("300 bytes asking for a 160 GB tensor", hostile.expanding_graph_model(), "ONNX Runtime could not run"),
    ("a zip archive of a model", b"PK\x03\x04" + (ZOO / "v1.onnx").read_bytes()[:50_000], "not an ONNX"),
])
def test_booby_trapped_models_are_400_invalid_model_and_store_nothing(
        fleet: dict[str, Any], name: str, data: bytes, needle: str) -> None:
    srv = fleet["srv"]
    refused_and_nothing_stored(srv, lambda: srv.admin().post(PUBLISH, files={"file": ("m.onnx", data)}),
                               400, "invalid_model", needle)


def test_gzip_bomb_body_is_not_inflated_and_is_refused(fleet: dict[str, Any]) -> None:
    srv = fleet["srv"]
    bomb = hostile.gzip_bomb()
    assert len(bomb) < 100_000
    send = lambda: srv.admin().post(PUBLISH, files={"file": ("m.onnx.gz", bomb)},  # noqa: E731
                                    headers={"Content-Encoding": "gzip"})
    refused_and_nothing_stored(srv, send, 400, "invalid_model", f"{len(bomb)} bytes")


def test_malformed_publish_requests_are_refused_with_the_field_named(fleet: dict[str, Any]) -> None:
    srv = fleet["srv"]
    admin = srv.admin()
    refused_and_nothing_stored(srv, lambda: admin.post(PUBLISH, data={"notes": "no file"}), 422, "validation_error",
                               "file")
    refused_and_nothing_stored(srv, lambda: admin.post(PUBLISH, json={"file": "AAAA"}), 422, "validation_error", "file")
    refused_and_nothing_stored(
        srv, lambda: admin.post(PUBLISH, files={"file": ("m.onnx", (ZOO / "v1.onnx").read_bytes())},
                                data={"min_agreement": "lots"}),
        422, "validation_error", "min_agreement")
    broken = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nnot closed"
    r = admin.post(PUBLISH, content=broken, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert 400 <= r.status_code < 500


@pytest.mark.parametrize("path", [
    "/api/v1/artifacts/..%2F..%2Fregistry.db",
    "/api/v1/artifacts/%2e%2e%2f%2e%2e%2fsigning-key.pem",
    "/api/v1/artifacts/..%5C..%5Cadmin-token",
    "/api/v1/artifacts/%2Fetc%2Fpasswd",
    "/api/v1/artifacts/" + "a" * 62 + "%2F..",
])
def test_path_traversal_in_artifact_names_finds_nothing(fleet: dict[str, Any], path: str) -> None:
    srv = fleet["srv"]
    r = srv.admin().get(path)
    assert r.status_code in (404, 400), r.text
    for secret in (b"SQLite format", b"PRIVATE KEY", srv.admin_token.encode(), b"root:"):
        assert secret not in r.content


def test_raw_dot_dot_segments_never_reach_the_data_directory(fleet: dict[str, Any]) -> None:
    srv = fleet["srv"]
    for target in ("/api/v1/artifacts/../../../../etc/passwd", "/api/v1/artifacts/../../registry.db",
                   "/../../../registry.db"):
        raw = hostile.raw_http(srv.url, f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                        f"{srv.admin_token}\r\nConnection: close\r\n\r\n".encode())
        status = int(raw.split(b" ", 2)[1])
        assert 400 <= status < 500, raw[:200]
        assert b"SQLite format" not in raw and b"root:" not in raw


def test_blob_store_never_builds_a_path_from_a_non_digest(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    (tmp_path / "secret").write_bytes(b"secret")
    for name in ("../secret", "../../secret", "/etc/passwd", "ab/../../secret", "A" * 64):
        with pytest.raises(BlobNotFound):
            store.get(name)
        assert not store.exists(name)


def test_traversal_in_line_names_is_refused_and_stores_nothing(fleet: dict[str, Any]) -> None:
    srv = fleet["srv"]
    data = (ZOO / "v1.onnx").read_bytes()
    for line in ("..%2F..%2Fetc", "%2e%2e", "road-signs%00", "..."):
        before = stored_state(srv)
        r = srv.admin().post(f"/api/v1/lines/{line}/versions", files={"file": ("m.onnx", data)})
        assert r.status_code in (400, 404), (line, r.text)
        assert stored_state(srv) == before


def test_oversized_headers_are_refused_and_the_server_keeps_serving(fleet: dict[str, Any]) -> None:
    srv = fleet["srv"]
    raw = hostile.raw_http(srv.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200_000
                           + b"\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 431 "), raw[:200]  # server/httpproto.py: refused, never served
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
    raw = hostile.raw_http(srv.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"Connection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 431 "), raw[:200]
    # a head just under the limit is still served
    under = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (MAX_HEAD_BYTES - 200)
    raw = hostile.raw_http(srv.url, under + b"\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
    huge_token = srv.anonymous().post("/api/v1/device/poll", json={"line": "road-signs"},
                                      headers={"Authorization": "Bearer " + "x" * 8000})
    assert huge_token.status_code == 401
    assert srv.anonymous().get("/healthz").status_code == 200


def test_wrong_credentials_are_401_everywhere(fleet: dict[str, Any]) -> None:
    srv, cars = fleet["srv"], fleet["cars"]
    device_token = cars["car-eu"]["token"]
    poll = {"line": "road-signs"}
    for header in ("Basic " + device_token, "Bearer", "Token " + device_token, device_token,
                   "Bearer " + device_token[:-1] + "x", "Bearer " + srv.admin_token + " " + device_token):
        r = srv.anonymous().post("/api/v1/device/poll", json=poll, headers={"Authorization": header})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", header
    # Each credential works only where it belongs.
    assert srv.admin().post("/api/v1/device/poll", json=poll).status_code == 401
    assert srv.device(srv.enrollment_token).post("/api/v1/device/poll", json=poll).status_code == 401
    for token in (device_token, srv.enrollment_token):
        assert srv.device(token).get("/api/v1/devices").status_code == 401
        assert srv.device(token).post("/api/v1/rollouts/1/abort").status_code == 401
    r = srv.admin().post("/api/v1/devices/enroll", json={"device_id": "car-admin"})
    assert r.status_code == 401 and "enrollment token" in r.json()["detail"]


def test_rotated_device_token_is_dead_for_poll_reports_and_downloads(fleet: dict[str, Any]) -> None:
    srv = fleet["srv"]
    old = srv.enroll("car-rotate", {"region": "eu"})["device_token"]
    offer = srv.device(old).post("/api/v1/device/poll", json={"line": "road-signs"}).json()["offer"]["signed"]
    new = srv.reenroll("car-rotate", {"region": "eu"})["device_token"]  # re-enrolment rotates the token
    stale = srv.device(old)
    assert stale.post("/api/v1/device/poll", json={"line": "road-signs"}).status_code == 401
    report = {"seq": 1, "rollout_id": offer["rollout_id"], "target_version": offer["target_version"],
              "state": "downloading"}
    assert stale.post("/api/v1/device/reports", json={"reports": [report]}).status_code == 401
    assert stale.get(offer["package"]["url"]).status_code == 401
    assert srv.device(new).get(offer["package"]["url"]).status_code == 200


def test_expired_dashboard_session_sends_the_browser_to_log_in(fleet: dict[str, Any]) -> None:
    srv = fleet["srv"]
    with srv.ctx.db.session_scope() as db:  # a session that ended an hour ago, stored as a login stores it
        expired = session_store.attempt_login(
            db, client="127.0.0.1", token_ok=True, admin_token=srv.admin_token, now=utcnow() - timedelta(hours=2),
            lifetime_s=3600, limit=5, window_s=60).session_id
    with httpx.Client(base_url=srv.url, follow_redirects=False, timeout=30) as login:
        assert login.post("/dashboard/login", data={"token": srv.admin_token}).status_code == 303
        fresh = login.cookies[dashboard_session.COOKIE]
    with httpx.Client(base_url=srv.url, follow_redirects=False, timeout=30) as browser:
        r = browser.get("/dashboard/rollouts", headers={"Cookie": f"{dashboard_session.COOKIE}={expired}"})
        assert r.status_code == 303 and "/login" in r.headers["location"]
        r = browser.get("/dashboard/rollouts", headers={"Cookie": f"{dashboard_session.COOKIE}={fresh}"})
        assert r.status_code == 200  # the same request with a live session gets in


def test_a_device_cannot_read_or_change_another_devices_data(fleet: dict[str, Any]) -> None:
    srv, cars = fleet["srv"], fleet["cars"]
    eu = srv.device(cars["car-eu"]["token"])
    us_offer = cars["car-us"]["offer"]
    before_us = srv.admin().get("/api/v1/devices/car-us").json()
    # Another car's artifact (v2 went to region=us only): 403, nothing streamed.
    for art in (us_offer["package"], us_offer.get("delta")):
        if art:
            r = eu.get(art["url"])
            assert r.status_code == 403 and r.json()["error"] == "forbidden"
    # The inventory is the operator's, not a car's.
    assert eu.get("/api/v1/devices/car-us").status_code == 401
    assert eu.patch("/api/v1/devices/car-us", json={"poll_interval_s": 1}).status_code == 401
    # Reporting against car-us's offer only ever touches car-eu's own records: there is no such offer for it.
    report = {"seq": 10, "rollout_id": us_offer["rollout_id"], "target_version": 2, "state": "failed",
              "reason": "sabotage"}
    r = eu.post("/api/v1/device/reports", json={"reports": [report]})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    # A poll answers with an offer signed for the caller, whatever the body claims.
    mine = eu.post("/api/v1/device/poll", json={"line": "road-signs", "device_id": "car-us"}).json()["offer"]
    assert mine["signed"]["device_id"] == "car-eu"
    after_us = srv.admin().get("/api/v1/devices/car-us").json()
    assert after_us["updates"] == before_us["updates"] and after_us["poll_interval_s"] == before_us["poll_interval_s"]


def test_malformed_device_requests_are_422_with_the_field_named(fleet: dict[str, Any]) -> None:
    srv, cars = fleet["srv"], fleet["cars"]
    car = srv.device(cars["car-eu"]["token"])
    before = stored_state(srv)
    cases = [
        ("/api/v1/device/poll", {"line": "road-signs", "current_version": 2**40}, "current_version"),
        ("/api/v1/device/poll", {"line": ""}, "line"),
        ("/api/v1/device/reports", {"reports": []}, "reports"),
        ("/api/v1/device/reports", {"reports": [{"seq": 1, "target_version": 1, "state": "owned"}]}, "state"),
        ("/api/v1/device/reports", {"reports": [{"seq": 2**70, "target_version": 1, "state": "failed"}]}, "seq"),
        ("/api/v1/device/reports", {"reports": [{"seq": 1, "target_version": 1, "state": "failed"}] * 1001},
         "reports"),
    ]
    for path, body, field in cases:
        r = car.post(path, json=body)
        assert r.status_code == 422 and field in r.json()["detail"], (path, r.text[:300])
    r = car.post("/api/v1/device/poll", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    assert srv.admin().get("/api/v1/rollouts/99999999999999").status_code in (400, 404, 422)
    assert stored_state(srv) == before
