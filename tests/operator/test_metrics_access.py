"""/metrics tells a stranger the fleet's size, poll rate and rollout activity: it can be closed.

Two ways, both tested against real servers: ``OTA_METRICS_PUBLIC=false`` (the default in production)
makes ``/metrics`` require the admin token; ``OTA_METRICS_PORT`` (``ota serve --metrics-port``) serves the
metrics on a separate listener, meant for an address only the monitoring network reaches.
"""

from __future__ import annotations

import httpx
import pytest

from server.config import Settings
from server.process import free_port
from tests.support.live_server import LiveServer


def test_metrics_behind_the_admin_token_refuse_strangers_and_serve_the_admin(live_server_factory) -> None:
    server: LiveServer = live_server_factory(metrics_public=False)
    for headers in ({}, {"Authorization": "Bearer wrong-token"}):
        r = httpx.get(f"{server.url}/metrics", headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "unauthorized" and "admin token" in r.json()["detail"]
        assert "ota_http_requests_total" not in r.text
    r = server.admin().get("/metrics")
    assert r.status_code == 200 and "ota_http_requests_total" in r.text


def test_metrics_are_protected_by_default_in_production_and_public_in_development() -> None:
    assert Settings(environment="production").metrics_are_public is False
    assert Settings(environment="development").metrics_are_public is True
    assert Settings(environment="production", metrics_public=True).metrics_are_public is True


def test_metrics_on_a_separate_listener_and_not_on_the_api_port(live_server_factory) -> None:
    port = free_port()
    server: LiveServer = live_server_factory(metrics_port=port, metrics_host="127.0.0.1")
    server.anonymous().get("/healthz")
    r = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200 and 'ota_http_requests_total{method="GET",route="/healthz",status="200"}' in r.text
    api = httpx.get(f"{server.url}/metrics")  # the public API port no longer answers strangers
    assert api.status_code == 401


def test_a_metrics_port_with_several_workers_is_refused_clearly(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    code = main(["serve", "--data-dir", str(tmp_path), "--workers", "2", "--metrics-port", str(free_port())])
    assert code == 2
    assert "--metrics-port needs --workers 1" in capsys.readouterr().err
    assert not (tmp_path / "registry.db").exists()  # refused before migrating anything
