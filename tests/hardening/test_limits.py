"""Limits before work (issue 15, findings 3 and 4): a stranger's huge or slow request costs the server O(KB).

The body tests run ``ota serve`` in its own process (tests/hardening/workers.py) so that its resident
set can be measured (tests/hardening/rawhttp.py): each sends a 400 MB body (or a 1 GB upload) from a
generator, and stops as soon as the server answers or closes.  The schema bounds and the rate limit
run against the in-process live server.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hardening.rawhttp import MB, Outcome, PeakRss, repeated, send_body
from tests.hardening.workers import ServedRegistry, serve
from tests.support.live_server import LiveServer

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
HUGE = 400 * MB
UPLOAD_LIMIT = 2 * MB  # the served registry's OTA_MAX_UPLOAD_BYTES, so the admin's oversized upload is quick
MAX_GROWTH = 20 * MB
WRONG = {"Authorization": "Bearer not-a-token", "Content-Type": "application/json"}
DEVICE_ROUTES = ["/api/v1/devices/enroll", "/api/v1/device/poll", "/api/v1/device/reports"]
FILLER = b"a" * MB


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedRegistry, Path]]:
    """One ``ota serve`` process (one worker: its pid is the one to measure), spooling under its own TMPDIR."""
    root = tmp_path_factory.mktemp("limits")
    spool = root / "spool"
    spool.mkdir()
    env = {"TMPDIR": str(spool), "OTA_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT), "OTA_HEAD_TIMEOUT_S": "2",
           "OTA_BODY_TIMEOUT_S": "3", "OTA_AUTH_FAILURE_BURST": "1000"}
    with serve(root / "data", workers=1, env=env) as reg:
        with reg.admin() as admin:  # warm up the paths the tests hit, so first-use allocations are not counted
            admin.get("/api/v1/lines")
            httpx.post(f"{reg.url}/api/v1/device/poll", json={"line": "x"}, headers=WRONG)
        yield reg, spool


def _json_body(total: int) -> tuple[bytes, Iterator[bytes], bytes]:
    """A syntactically valid JSON object of ``total`` bytes: the old server parsed every byte of it."""
    prefix, suffix = b'{"device_id":"car-1","line":"road-signs","tags":{"a":"', b'"}}'
    return prefix, repeated(FILLER, total - len(prefix) - len(suffix)), suffix


def _send_huge(reg: ServedRegistry, path: str, chunked: bool) -> Outcome:
    prefix, body, suffix = _json_body(HUGE)
    return send_body(reg.port, "POST", path, WRONG, body, length=None if chunked else HUGE, prefix=prefix,
                     suffix=suffix)


@pytest.mark.parametrize("chunked", [False, True], ids=["declared-length", "chunked"])
@pytest.mark.parametrize("path", DEVICE_ROUTES)
def test_a_400mb_body_with_a_wrong_token_is_refused_413_costing_under_20mb(
        served: tuple[ServedRegistry, Path], path: str, chunked: bool) -> None:
    reg, _ = served
    assert reg.proc is not None
    with PeakRss(reg.proc.pid) as peak:
        out = _send_huge(reg, path, chunked)
    assert out.status == 413, out.response[:300]
    assert b'"error":"too_large"' in out.response
    assert out.body_bytes_sent < 64 * MB, f"the server read {out.body_bytes_sent} bytes before refusing"
    assert peak.growth < MAX_GROWTH, f"RSS grew {peak.growth / MB:.0f} MB"


def test_four_concurrent_400mb_bodies_cost_under_20mb(served: tuple[ServedRegistry, Path]) -> None:
    reg, _ = served
    assert reg.proc is not None
    outcomes: list[Outcome] = []
    with PeakRss(reg.proc.pid) as peak:
        threads = [threading.Thread(target=lambda p=p, c=c: outcomes.append(_send_huge(reg, p, c)))
                   for p, c in zip(DEVICE_ROUTES + DEVICE_ROUTES[:1], [True, False, True, False], strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [o.status for o in outcomes] == [413] * 4
    assert peak.growth < MAX_GROWTH, f"RSS grew {peak.growth / MB:.0f} MB"


def _multipart(size: int) -> tuple[dict[str, str], bytes, Iterator[bytes], bytes]:
    boundary = "limits-test-boundary"
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    prefix = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.onnx\"\r\n"
              "Content-Type: application/octet-stream\r\n\r\n").encode()
    suffix = f"\r\n--{boundary}--\r\n".encode()
    return headers, prefix, repeated(b"\0" * MB, size), suffix


def _lines(reg: ServedRegistry) -> list[Any]:
    with reg.admin() as admin:
        return admin.get("/api/v1/lines").json()


@pytest.mark.parametrize("chunked", [False, True], ids=["declared-length", "chunked"])
def test_a_strangers_1gb_upload_is_refused_401_with_nothing_spooled(served: tuple[ServedRegistry, Path],
                                                                    chunked: bool) -> None:
    reg, spool = served
    assert reg.proc is not None
    headers, prefix, body, suffix = _multipart(1024 * MB)
    length = len(prefix) + 1024 * MB + len(suffix)
    with PeakRss(reg.proc.pid, spool_dir=spool) as peak:
        out = send_body(reg.port, "POST", "/api/v1/lines/road-signs/versions",
                        {**headers, "Authorization": "Bearer wrong"}, body, length=None if chunked else length,
                        prefix=prefix, suffix=suffix)
    assert out.status == 401, out.response[:300]
    assert b"admin token required" in out.response
    assert peak.spooled == 0, f"{peak.spooled} bytes were spooled to a temporary file before the 401"
    assert out.body_bytes_sent < 64 * MB
    assert peak.growth < MAX_GROWTH, f"RSS grew {peak.growth / MB:.0f} MB"
    assert _lines(reg) == []


@pytest.mark.parametrize("chunked", [False, True], ids=["declared-length", "chunked"])
def test_an_admin_upload_above_the_limit_is_refused_413_while_streaming_and_nothing_stored(
        served: tuple[ServedRegistry, Path], chunked: bool) -> None:
    reg, spool = served
    assert reg.proc is not None
    headers, prefix, body, suffix = _multipart(64 * MB)
    length = len(prefix) + 64 * MB + len(suffix)
    with PeakRss(reg.proc.pid, spool_dir=spool) as peak:
        out = send_body(reg.port, "POST", "/api/v1/lines/road-signs/versions",
                        {**headers, "Authorization": f"Bearer {reg.admin_token}"}, body,
                        length=None if chunked else length, prefix=prefix, suffix=suffix)
    assert out.status == 413, out.response[:300]
    assert b"OTA_MAX_UPLOAD_BYTES" in out.response
    assert peak.spooled <= UPLOAD_LIMIT + 64 * 1024, f"{peak.spooled} bytes spooled past the upload limit"
    assert peak.growth < MAX_GROWTH, f"RSS grew {peak.growth / MB:.0f} MB"
    assert _lines(reg) == []


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes) -> float | None:
    """Send one byte of ``trickle`` every 0.2 s; the seconds until the server closed (or answered), else None."""
    start = time.monotonic()
    sock.settimeout(0.2)
    for i in range(int(seconds / 0.2)):
        try:
            sock.sendall(trickle[i % len(trickle):][:1])
            if sock.recv(4096) == b"":
                return time.monotonic() - start
            return time.monotonic() - start  # an answer (408) is as good as a close
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start
    return None


def test_a_slowloris_head_is_closed_after_the_head_timeout(served: tuple[ServedRegistry, Path]) -> None:
    reg, _ = served
    with socket.create_connection(("127.0.0.1", reg.port)) as sock:
        sock.sendall(b"POST /api/v1/device/poll HTTP/1.1\r\nHost: registry\r\nX-Slow: ")
        closed_after = _closed_within(sock, 8.0, b"abcdefgh")
    assert closed_after is not None, "a connection trickling its headers was still open after 8 s"
    assert closed_after < 5.0


def test_a_slowloris_body_is_closed_after_the_body_timeout(served: tuple[ServedRegistry, Path]) -> None:
    reg, _ = served
    with socket.create_connection(("127.0.0.1", reg.port)) as sock:
        sock.sendall(b"POST /api/v1/device/poll HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer x\r\nContent-Length: 4000\r\n\r\n")
        closed_after = _closed_within(sock, 8.0, b"          ")
    assert closed_after is not None, "a connection trickling its body was still open after 8 s"
    assert closed_after < 6.0


# Device-supplied text: bounded by the schemas (422, nothing stored) and by the body limit (413).

def _device_ids(srv: LiveServer) -> list[str]:
    return [d["device_id"] for d in srv.admin().get("/api/v1/devices").json()]


@pytest.mark.parametrize(("tags", "where"), [
    ({f"k{i}": "v" for i in range(100)}, "tags"),
    ({"k" * 200: "v"}, "tags"),
    ({"region": "v" * 2000}, "tags.region"),
], ids=["too-many-tags", "long-key", "long-value"])
def test_enrolment_with_tags_beyond_the_bounds_is_refused_422_and_nothing_stored(
        live_server: LiveServer, tags: dict[str, str], where: str) -> None:
    r = live_server._client(live_server.enrollment_token, 30.0).post(
        "/api/v1/devices/enroll", json={"device_id": "car-1", "tags": tags})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error" and r.json()["detail"].startswith(f"body.{where}")
    assert _device_ids(live_server) == []


def test_30mb_of_tags_is_refused_413_and_nothing_stored(live_server: LiveServer) -> None:
    r = live_server._client(live_server.enrollment_token, 30.0).post(
        "/api/v1/devices/enroll", json={"device_id": "car-1", "tags": {"region": "v" * (30 * MB)}})
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"] == "too_large"
    assert _device_ids(live_server) == []


def _failed_report(reason: str) -> dict[str, Any]:
    return {"reports": [{"seq": 1, "target_version": 1, "state": "failed", "reason": reason}]}


@pytest.mark.parametrize(("reason", "status"), [("x" * 5000, 422), ("x" * (30 * MB), 413)],
                         ids=["5kb-reason", "30mb-reason"])
def test_a_failure_reason_beyond_the_bound_is_refused_and_nothing_stored(
        live_server: LiveServer, reason: str, status: int) -> None:
    token = live_server.enroll("car-1")["device_token"]
    r = live_server.device(token).post("/api/v1/device/reports", json=_failed_report(reason))
    assert r.status_code == status, r.text[:300]
    assert live_server.admin().get("/api/v1/devices/car-1").json()["updates"] == []


def test_operator_tags_and_poll_text_are_bounded_too(live_server: LiveServer) -> None:
    token = live_server.enroll("car-1", {"region": "eu"})["device_token"]
    r = live_server.admin().patch("/api/v1/devices/car-1", json={"tags": {"region": "v" * 2000}})
    assert r.status_code == 422 and r.json()["detail"].startswith("body.tags.region"), r.text
    r = live_server.device(token).post("/api/v1/device/poll", json={"line": "road-signs", "agent_state": "x" * 500})
    assert r.status_code == 422 and r.json()["detail"].startswith("body.agent_state"), r.text
    assert live_server.admin().get("/api/v1/devices/car-1").json()["tags"] == {"region": "eu"}


def test_publish_notes_and_publisher_are_bounded(live_server: LiveServer) -> None:
    model = (ZOO / "v1.onnx").read_bytes()
    r = live_server.admin().post("/api/v1/lines/road-signs/versions", files={"file": ("m.onnx", model)},
                                 data={"notes": "n" * 20_000, "publisher": "p"})
    assert r.status_code == 422 and "notes" in r.json()["detail"], r.text[:300]
    r = live_server.admin().post("/api/v1/lines/road-signs/versions", files={"file": ("m.onnx", model)},
                                 data={"publisher": "p" * 1000})
    assert r.status_code == 422 and "publisher" in r.json()["detail"], r.text[:300]
    assert live_server.admin().get("/api/v1/lines").json() == []


# Rate limits: per client address, for credential failures and for enrolment.

def test_repeated_wrong_tokens_get_429_with_retry_after(live_server_factory: Callable[..., LiveServer]) -> None:
    srv = live_server_factory(auth_failure_burst=5, auth_failure_rate_per_s=0.5)
    token = srv.enroll("car-1")["device_token"]
    stranger = srv.device("wrong-token")
    statuses = [stranger.post("/api/v1/device/poll", json={"line": "road-signs"}).status_code for _ in range(7)]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses
    r = srv.device(token).post("/api/v1/device/poll", json={"line": "road-signs"})
    assert r.status_code == 429, "the limit is per client address, whatever the credential"
    assert r.json()["error"] == "rate_limited" and 1 <= int(r.headers["retry-after"]) <= 3
    time.sleep(int(r.headers["retry-after"]))
    assert srv.device(token).post("/api/v1/device/poll", json={"line": "road-signs"}).status_code == 404


def test_enrolment_is_rate_limited_per_address(live_server_factory: Callable[..., LiveServer]) -> None:
    srv = live_server_factory(enroll_burst=3, enroll_rate_per_s=0.5)
    for i in range(3):
        srv.enroll(f"car-{i}")
    r = srv._client(srv.enrollment_token, 30.0).post("/api/v1/devices/enroll", json={"device_id": "car-3"})
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1 and "enrol" in r.json()["detail"]
    assert sorted(_device_ids(srv)) == ["car-0", "car-1", "car-2"]


@pytest.mark.parametrize("chunked", [False, True], ids=["declared-length", "chunked"])
def test_an_oversized_poll_from_a_cached_device_is_refused_before_the_fast_path_reads_it(
        live_server: LiveServer, chunked: bool) -> None:
    """The fast path (server/devices/fastpoll.py) answers cached polls below FastAPI: the limit sits outside it."""
    live_server.publish(ZOO / "v1.onnx")
    token = live_server.enroll("car-1")["device_token"]
    poll = {"line": "road-signs", "current_version": 0}
    assert live_server.device(token).post("/api/v1/device/poll", json=poll).status_code == 200  # now cached
    prefix, suffix = b'{"line":"road-signs","current_version":0,"padding":"', b'"}'
    out = send_body(int(live_server.url.rsplit(":", 1)[1]), "POST", "/api/v1/device/poll",
                    {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    repeated(b"x" * 4096, 4 * MB), length=None if chunked else len(prefix) + 4 * MB + len(suffix),
                    prefix=prefix, suffix=suffix)
    assert out.status == 413, out.response[:300]
    assert b"OTA_MAX_DEVICE_BODY_BYTES" in out.response


# Connection limits of `ota serve` (uvicorn's limit_concurrency and keep-alive timeout, from the Settings).

@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedRegistry]:
    env = {"OTA_LIMIT_CONCURRENCY": "2", "OTA_KEEP_ALIVE_TIMEOUT_S": "1"}
    with serve(tmp_path_factory.mktemp("crowded") / "data", workers=1, env=env) as reg:
        yield reg


def test_connections_beyond_the_concurrency_limit_get_503(crowded: ServedRegistry) -> None:
    with socket.create_connection(("127.0.0.1", crowded.port)):  # holds one of the two places, sending nothing
        time.sleep(0.2)
        assert httpx.get(f"{crowded.url}/healthz").status_code == 503
    time.sleep(0.2)
    assert httpx.get(f"{crowded.url}/healthz").status_code == 200


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(crowded: ServedRegistry) -> None:
    with socket.create_connection(("127.0.0.1", crowded.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: registry\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):  # head and body may come in two reads
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert sock.recv(4096) == b"", "the server should close an idle connection"
        assert time.monotonic() - start < 3.0


def test_the_agent_cuts_a_long_failure_reason_to_the_bound_so_the_report_is_accepted(live_server: LiveServer) -> None:
    from client.reports import enqueue
    from client.slots import Journal

    live_server.publish(ZOO / "v1.onnx")
    token = live_server.enroll("car-1")["device_token"]
    offer = live_server.device(token).post("/api/v1/device/poll", json={"line": "road-signs"}).json()["offer"]
    journal = Journal()
    report = enqueue(journal, state="failed", rollout_id=offer["signed"]["rollout_id"],
                     manifest_version=offer["signed"]["manifest_version"], target_version=1,
                     reason="RuntimeError: " + "x" * 10_000)
    r = live_server.device(token).post("/api/v1/device/reports", json={"reports": [report]})
    assert r.status_code == 200 and r.json()["accepted"] == [report["seq"]], r.text[:300]
    stored = live_server.admin().get("/api/v1/devices/car-1").json()["updates"][0]["reason"]
    assert stored.startswith("RuntimeError: xxx") and len(stored) == 2000


def test_ota_serve_flags_set_the_connection_limits(tmp_path: Path) -> None:
    """``ota serve --head-timeout 1 --keep-alive-timeout 1 --limit-concurrency 2``, as an operator types it."""
    import subprocess
    import sys

    from server.process import free_port, wait_ready

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_") and k != "DATABASE_URL"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--data-dir",
                                 str(tmp_path / "data"), "--log-level", "warning", "--head-timeout", "1",
                                 "--keep-alive-timeout", "1", "--limit-concurrency", "2"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, 60, log=lambda: log.read_text(errors="replace"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            time.sleep(0.2)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 503
            start = time.monotonic()
            assert idle.recv(4096).startswith(b"HTTP/1.1 408"), "a connection that sends nothing is timed out"
            assert time.monotonic() - start < 2.5
        with socket.create_connection(("127.0.0.1", port), timeout=5) as kept:
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: registry\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += kept.recv(4096)
            start = time.monotonic()
            assert kept.recv(4096) == b"" and time.monotonic() - start < 2.5, "kept alive past --keep-alive-timeout"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
