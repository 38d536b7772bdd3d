"""Cached polls answered below FastAPI (server/devices/fastpoll.py) say exactly what the route says.

Over real HTTP to a real registry: a cached poll gets the same body as one
answered by the route, is counted by the metrics under the poll's route, and
every request the fast path does not answer (malformed, oversized, another
content type, unknown token) reaches the route and gets its usual answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from server.devices import fastpoll
from tests.conftest import ZOO
from tests.server.factories import Car
from tests.support.live_server import LiveServer, run_live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_live_server(tmp_path_factory.mktemp("fastpoll"), poll_cache_s=120.0, last_seen_flush_s=120.0) as srv:
        srv.publish(ZOO / "v1.onnx", line="fast")
        yield srv


def _steady_car(server: LiveServer, device_id: str) -> tuple[Car, dict[str, Any]]:
    car = Car(server, device_id, {"region": "eu"})
    assert car.poll("fast") is not None  # no model yet: a signed offer, written by the route
    body = {"line": "fast", "current_version": 0, "current_model_sha256": None, "current_package_sha256": None,
            "agent_state": "idle"}
    return car, body


def _fast_answers(server: LiveServer) -> float:
    text = server.anonymous().get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ota_http_requests_total{") and 'route="/api/v1/device/poll"' in line)


def test_cached_poll_gets_the_routes_answer_and_is_counted_under_the_poll_route(server: LiveServer) -> None:
    car, body = _steady_car(server, "fast-same")
    by_route = car.http.post("/api/v1/device/poll", json=body)  # loads the cache entry
    counted = _fast_answers(server)
    cached = car.http.post("/api/v1/device/poll", json=body)
    assert cached.status_code == by_route.status_code == 200
    assert cached.headers["content-type"] == "application/json"
    assert json.loads(cached.content) == json.loads(by_route.content)  # the very same signed offer
    assert _fast_answers(server) == counted + 1


def test_requests_the_fast_path_does_not_answer_reach_the_route(server: LiveServer) -> None:
    car, body = _steady_car(server, "fast-fallback")
    car.http.post("/api/v1/device/poll", json=body)  # cached from here on
    r = car.http.post("/api/v1/device/poll", content=b'{"line": "fast", ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    # read past the fast path's limit, then replayed (an unknown field: agent_state is bounded, issue 15)
    big = {**body, "padding": "x" * (fastpoll.MAX_FAST_BODY + 10)}
    r = car.http.post("/api/v1/device/poll", json=big)
    assert r.status_code == 200 and r.json()["offer"] is not None
    r = car.http.post("/api/v1/device/poll", content=json.dumps(body), headers={"content-type": "text/plain"})
    assert r.status_code == 422  # FastAPI does not read a text/plain body as JSON; neither do we
    r = server.device("nobody").post("/api/v1/device/poll", json=body)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = car.http.post("/api/v1/device/poll", json={**body, "line": "no-such-line"})
    assert r.status_code == 404
