"""Transfer accounting equals the bytes that crossed the socket, including resumed and aborted downloads."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.server.factories import Car, stored_state
from tests.support.live_server import LiveServer, run_live_server

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with run_live_server(tmp_path_factory.mktemp("accounting"), socket_sndbuf=32768) as srv:
        v1 = srv.publish(ZOO / "v1.onnx")
        srv.publish(ZOO / "v2.onnx")
        srv.v1 = v1  # type: ignore[attr-defined]
        yield srv


def _on_v1(server: LiveServer, device_id: str) -> Car:
    car = Car(server, device_id, {"t": device_id})
    pkg = server.v1["packages"]["lossless"]  # type: ignore[attr-defined]
    car.version, car.model_sha256, car.package_sha256 = 1, pkg["model_sha256"], pkg["sha256"]
    return car


def _rollout(server: LiveServer, device_id: str) -> int:
    r = server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2,
                                                      "selector": {"t": device_id}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _transfers(server: LiveServer, device_id: str) -> list[dict[str, Any]]:
    rows = server.admin().get("/api/v1/accounting/transfers", params={"limit": 10000}).json()
    return [r for r in rows if r["device_id"] == device_id]


def _wait_for(server: LiveServer, device_id: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while len(rows := _transfers(server, device_id)) < n and time.monotonic() < deadline:
        time.sleep(0.05)  # the record is written as the response ends
    return rows


def test_resumed_delta_download_is_counted_exactly_and_aggregated(server: LiveServer) -> None:
    car = _on_v1(server, "car-resume")
    rollout_id = _rollout(server, "car-resume")
    offer = car.poll()
    delta = offer["delta"]
    assert delta is not None and delta["size"] < offer["package"]["size"]
    half = delta["size"] // 2
    first = car.http.get(delta["url"], headers={"Range": f"bytes=0-{half - 1}"})
    assert first.status_code == 206 and len(first.content) == half
    etag = first.headers["etag"]
    rest = car.http.get(delta["url"], headers={"Range": f"bytes={half}-", "If-Range": etag})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes {half}-{delta['size'] - 1}/{delta['size']}"
    received = len(first.content) + len(rest.content)
    assert received == delta["size"]
    rows = _wait_for(server, "car-resume", 2)
    assert sorted(r["bytes_sent"] for r in rows) == sorted([half, delta["size"] - half])
    assert {r["kind"] for r in rows} == {"delta"} and {r["rollout_id"] for r in rows} == {rollout_id}
    assert all(r["complete"] for r in rows)
    metrics = server.anonymous().get("/metrics").text
    assert 'ota_artifact_bytes_sent_total{kind="delta"}' in metrics
    car.install(offer, download=False)
    acc = server.admin().get(f"/api/v1/accounting/rollouts/{rollout_id}").json()
    totals = acc["totals"]
    assert totals["bytes_sent"] == received and totals["requests"] == 2 and totals["resumes"] == 1
    assert totals["devices_updated"] == 1 and totals["bytes_per_updated_car"] == received
    source = (ZOO / "v2.onnx").stat().st_size
    assert totals["fp32_bytes_equivalent"] == source
    assert totals["savings_vs_fp32"] == pytest.approx(1 - received / source, abs=1e-4)
    assert totals["savings_vs_package"] == pytest.approx(1 - received / offer["package"]["size"], abs=1e-4)
    assert acc["stages"][0]["bytes_sent"] == received
    largest = acc["largest"][0]
    assert largest["device_id"] == "car-resume" and largest["base_version"] == 1 and largest["kind"] == "delta"
    assert largest["requests"] == 2 and largest["first_request_at"] <= largest["last_request_end_at"]


def test_if_range_mismatch_sends_the_whole_artifact(server: LiveServer) -> None:
    car = _on_v1(server, "car-ifrange")
    _rollout(server, "car-ifrange")
    offer = car.poll()
    r = car.http.get(offer["package"]["url"], headers={"Range": "bytes=100-", "If-Range": '"somethingelse"'})
    assert r.status_code == 200 and len(r.content) == offer["package"]["size"]
    assert r.headers["cache-control"] == "private, max-age=31536000, immutable"
    rows = _wait_for(server, "car-ifrange", 1)
    assert [(x["kind"], x["range_start"], x["bytes_sent"]) for x in rows] == [("full", 0, offer["package"]["size"])]


def test_range_past_the_end_is_416_and_counts_nothing(server: LiveServer) -> None:
    car = _on_v1(server, "car-416")
    _rollout(server, "car-416")
    offer = car.poll()
    before = stored_state(server)
    r = car.http.get(offer["package"]["url"], headers={"Range": f"bytes={offer['package']['size']}-"})
    assert r.status_code == 416
    assert stored_state(server) == before


def test_aborted_download_counts_what_was_written_not_the_artifact_size(server: LiveServer) -> None:
    car = _on_v1(server, "car-abort")
    _rollout(server, "car-abort")
    offer = car.poll()
    size = offer["package"]["size"]
    url = urlparse(server.url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect, so the window stays small
    sock.connect((url.hostname, url.port))
    sock.sendall(f"GET {offer['package']['url']} HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {car.enrollment['device_token']}\r\n\r\n".encode())
    received = 0
    while received < 200_000:
        chunk = sock.recv(65536)
        assert chunk
        received += len(chunk)
    time.sleep(0.3)  # let the server fill every buffer it can and stall
    sock.close()  # walk away mid-download
    rows = _wait_for(server, "car-abort", 1)
    assert len(rows) == 1 and rows[0]["complete"] is False
    # the server counts what it handed to the socket: at least what we read (minus headers), and at most
    # that plus what the buffers between us hold (kernel send/receive buffers, uvicorn's 64 KiB, one chunk)
    assert received - 1000 <= rows[0]["bytes_sent"] <= received + 512 * 1024 < size


def test_accounting_endpoints_need_the_admin_token(server: LiveServer) -> None:
    assert server.anonymous().get("/api/v1/accounting/transfers").status_code == 401
    assert server.anonymous().get("/api/v1/accounting/rollouts/1").status_code == 401
    assert server.admin().get("/api/v1/accounting/rollouts/99999").status_code == 404


def test_head_gives_size_and_etag_and_counts_nothing(server: LiveServer) -> None:
    car = _on_v1(server, "car-head")
    _rollout(server, "car-head")
    offer = car.poll()
    before = stored_state(server)
    r = car.http.head(offer["package"]["url"])
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == offer["package"]["size"]
    assert r.headers["etag"] == f'"{offer["package"]["sha256"]}"'
    time.sleep(0.2)
    assert stored_state(server) == before
