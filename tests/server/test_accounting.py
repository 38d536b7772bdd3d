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


def _fetch_bytes(server: LiveServer, car: Car, url: str, start: int, length: int = 1) -> None:
    """One ranged request, waited for until its transfer record is written (so records are in request order)."""
    before = len(_transfers(server, car.device_id))
    r = car.http.get(url, headers={"Range": f"bytes={start}-{start + length - 1}"})
    assert r.status_code == 206
    _wait_for(server, car.device_id, before + 1)


def _pages(server: LiveServer, params: dict[str, Any], between: Any = None) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        r = server.admin().get("/api/v1/accounting/transfers", params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        assert isinstance(r.json(), list)  # the body stays a list: readers from before cursors still work
        pages.append(r.json())
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            return pages
        if between is not None and len(pages) == 1:
            between()


def test_transfer_pages_are_newest_first_every_record_once_while_cars_keep_downloading(server: LiveServer) -> None:
    car = _on_v1(server, "car-pages")
    rollout_id = _rollout(server, "car-pages")
    url = car.poll()["package"]["url"]  # type: ignore[index]
    for start in range(12):
        _fetch_bytes(server, car, url, start)
    params = {"rollout_id": rollout_id, "device_id": "car-pages", "limit": 5}

    def more_downloads() -> None:  # written between the first and the second page: newer than the cursor
        for start in (100, 101, 102):
            _fetch_bytes(server, car, url, start)

    pages = _pages(server, params, between=more_downloads)
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [t["range_start"] for p in pages for t in p] == list(range(11, -1, -1))  # each once, newest first
    everything = [t["range_start"] for p in _pages(server, {**params, "limit": 4}) for t in p]
    assert everything == [102, 101, 100, *range(11, -1, -1)]
    assert _pages(server, {**params, "kind": "delta"}) == [[]]  # the filters run in SQL: this car fetched no delta
    assert _pages(server, {"device_id": "no-such-car"}) == [[]]


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": 0}, "limit"), ({"limit": 10001}, "limit"), ({"limit": "many"}, "limit"),
    ({"cursor": "!!not-base64!!"}, "cursor"), ({"cursor": "Zm9vYmFy"}, "cursor"), ({"cursor": "dDp4"}, "cursor"),
    ({"cursor": "x" * 101}, "cursor"), ({"kind": "partial"}, "kind"), ({"rollout_id": 0}, "rollout_id"),
    ({"device_id": "x" * 201}, "device_id"),
])
def test_bad_transfer_cursor_limit_or_filter_is_422_naming_the_field_and_stores_nothing(
        server: LiveServer, params: dict[str, Any], field: str) -> None:
    before = stored_state(server, audit=True)
    r = server.admin().get("/api/v1/accounting/transfers", params=params)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert stored_state(server, audit=True) == before


def test_rollout_accounting_sums_each_car_and_lists_the_largest_first(server: LiveServer) -> None:
    cars = [Car(server, f"car-sum-{i}", {"group": "sum"}) for i in range(3)]
    pkg = server.v1["packages"]["lossless"]  # type: ignore[attr-defined]
    for car in cars:
        car.version, car.model_sha256, car.package_sha256 = 1, pkg["model_sha256"], pkg["sha256"]
    r = server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2, "selector": {"group": "sum"}})
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    sent = {}
    for i, car in enumerate(cars):
        offer = car.poll()
        assert offer is not None
        url = (offer["delta"] or offer["package"])["url"]
        for k in range(i + 1):  # car i makes i + 1 requests of 100 * (i + 1) bytes, the later ones resumed
            _fetch_bytes(server, car, url, k * 100 * (i + 1), 100 * (i + 1))
        sent[car.device_id] = 100 * (i + 1) ** 2
    acc = server.admin().get(f"/api/v1/accounting/rollouts/{rollout_id}", params={"largest": 2}).json()
    assert acc["totals"]["bytes_sent"] == sum(sent.values()) and acc["totals"]["devices"] == 3
    assert acc["totals"]["requests"] == 6 and acc["totals"]["resumes"] == 3
    assert sum(s["bytes_sent"] for s in acc["stages"]) == sum(sent.values())
    assert [(d["device_id"], d["bytes_sent"], d["requests"]) for d in acc["largest"]] == [
        ("car-sum-2", 900, 3), ("car-sum-1", 400, 2)]
    assert {d["state"] for d in acc["largest"]} == {"offered"}


@pytest.mark.parametrize("points", [2000, 1])
def test_bandwidth_chart_buckets_sum_every_byte_per_rollout_and_network(
        server: LiveServer, monkeypatch: pytest.MonkeyPatch, points: int) -> None:
    from collections import Counter

    from server.dashboard import queries

    car = _on_v1(server, f"car-buckets-{points}")  # at least one record, whatever ran before
    _rollout(server, car.device_id)
    offer = car.poll()
    assert offer is not None
    _fetch_bytes(server, car, offer["package"]["url"], 0, 10)
    monkeypatch.setattr(queries, "CHART_POINTS", points)  # 1: every group's bytes fall in a single bucket
    with server.ctx.db.read_scope() as session:
        buckets = queries.transfer_buckets(session, "t")  # these cars are tagged t=<their id>
    records = server.admin().get("/api/v1/accounting/transfers", params={"limit": 10000}).json()
    by_rollout: Counter[int | None] = Counter()
    by_network: Counter[str | None] = Counter()
    for _at, rid, net, n in buckets:
        by_rollout[rid] += n
        by_network[net] += n
    assert +by_rollout == +Counter({rid: sum(r["bytes_sent"] for r in records if r["rollout_id"] == rid)
                                    for rid in {r["rollout_id"] for r in records}})
    expected: Counter[str | None] = Counter()
    for r in records:  # the car-sum-* cars carry no "t" tag
        d = r["device_id"]
        expected[None if d is None or d.startswith("car-sum-") else d] += r["bytes_sent"]
    assert +by_network == +expected
    assert records and by_network[car.device_id] == 10
    times = [at for at, *_ in buckets]
    assert times == sorted(times) and len(buckets) <= len(records)
    if points == 1:
        assert len({at for at in times}) == 1  # one bucket, stamped at the last transfer's end
