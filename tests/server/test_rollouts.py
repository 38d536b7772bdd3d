"""Staged rollouts over real HTTP: stages, operator actions, auto-advance, auto-halt, rollback, overlap."""

from __future__ import annotations

import time
from itertools import count
from typing import Any

import pytest

from server.rollouts.stages import stage_of
from server.security import verify_envelope
from tests.conftest import ZOO
from tests.server.factories import Car, create_rollout, show_rollout, stored_state
from tests.support.live_server import LiveServer

_lines = count(1)


def _line(server: LiveServer) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A fresh line with v1 (stable) and v2 published."""
    name = f"line-{next(_lines)}"
    v1 = server.publish(ZOO / "v1.onnx", line=name)
    v2 = server.publish(ZOO / "v2.onnx", line=name)
    return name, v1, v2


@pytest.fixture(scope="module")
def shared(server: LiveServer) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One line (v1 stable, v2, v3) for tests whose rollouts never complete; they isolate
    themselves with a per-test tag selector, so their rollouts never reach each other's cars."""
    line, v1, v2 = _line(server)
    server.publish(ZOO / "v3.onnx", line=line)
    return line, v1, v2


def _fleet(server: LiveServer, line: str, v1: dict[str, Any], n: int, tags: dict[str, str] | None = None,
           prefix: str = "car") -> list[Car]:
    """``n`` cars that already run v1 of ``line`` and have polled it once."""
    cars = []
    for i in range(n):
        car = Car(server, f"{line}-{prefix}-{i:03d}", tags or {"region": "eu"})
        car.version, car.model_sha256 = 1, v1["packages"]["lossless"]["model_sha256"]
        car.package_sha256 = v1["packages"]["lossless"]["sha256"]
        assert car.poll(line) is None
        cars.append(car)
    return cars


def test_rollout_endpoints_need_the_admin_token(server: LiveServer) -> None:
    before = stored_state(server)
    assert server.anonymous().post("/api/v1/rollouts", json={"line": "x", "version": 1}).status_code == 401
    assert server.anonymous().get("/api/v1/rollouts").status_code == 401
    assert server.anonymous().post("/api/v1/rollouts/1/pause").status_code == 401
    assert stored_state(server) == before


def test_malformed_rollouts_are_rejected(server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    line, _, _ = shared
    admin = server.admin()
    assert admin.post("/api/v1/rollouts", json={"line": line, "version": 9}).status_code == 404
    r = admin.post("/api/v1/rollouts", json={"line": line, "version": 2, "stages": [{"percent": 50},
                                                                                  {"percent": 10}]})
    assert r.status_code == 422 and "increase" in r.json()["detail"]
    assert admin.post("/api/v1/rollouts", json={"line": line, "version": 2, "codec": "deep"}).status_code == 400
    assert admin.get("/api/v1/rollouts/999999").status_code == 404


def test_only_devices_in_reached_stages_get_the_offer_until_advanced(server: LiveServer) -> None:
    line, v1, _ = _line(server)
    cars = _fleet(server, line, v1, 30)
    r = create_rollout(server, line=line, version=2, stages=[{"percent": 20}, {"percent": 100}])
    first = {c.device_id for c in cars if stage_of(r["id"], c.device_id, [20, 100]) == 0}
    assert 0 < len(first) < 30
    offered = {c.device_id for c in cars if (o := c.poll(line)) and o["target_version"] == 2}
    assert offered == first
    assert sum(s["assigned"] for s in show_rollout(server, r["id"])["stages"]) == 30
    advanced = server.admin().post(f"/api/v1/rollouts/{r['id']}/advance").json()
    assert advanced["current_stage"] == 1 and advanced["state"] == "running"
    assert all((o := c.poll(line)) and o["rollout_id"] == r["id"] for c in cars)
    done = server.admin().post(f"/api/v1/rollouts/{r['id']}/advance").json()
    assert done["state"] == "completed"
    assert [x for x in server.admin().get("/api/v1/lines").json() if x["name"] == line][0]["stable_version"] == 2


def test_selector_limits_the_rollout_to_matching_tags(server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    line, v1, _ = shared
    eu = _fleet(server, line, v1, 3, {"region": "eu", "t": "selector"}, prefix="eu")
    us = _fleet(server, line, v1, 3, {"region": "us", "t": "selector"}, prefix="us")
    create_rollout(server, line=line, version=2, selector={"region": "eu", "t": "selector"})
    assert all(c.poll(line) for c in eu)
    assert not any(c.poll(line) for c in us)


def test_auto_advance_at_success_threshold_then_completion_makes_version_stable(server: LiveServer) -> None:
    line, v1, _ = _line(server)
    cars = _fleet(server, line, v1, 12)
    r = create_rollout(server, line=line, version=2, stages=[
        {"percent": 50, "success_threshold_pct": 100}, {"percent": 100, "success_threshold_pct": 100}])
    stage0 = [c for c in cars if stage_of(r["id"], c.device_id, [50, 100]) == 0]
    for i, car in enumerate(stage0):
        car.install(car.poll(line), download=False)
        expected = 0 if i < len(stage0) - 1 else 1  # advances exactly when the last one installs
        assert show_rollout(server, r["id"])["current_stage"] == expected
    for car in cars:
        if car not in stage0:
            car.install(car.poll(line), download=False)
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "completed"
    assert [x for x in server.admin().get("/api/v1/lines").json() if x["name"] == line][0]["stable_version"] == 2


def test_auto_advance_waits_for_the_soak_time(server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    line, v1, _ = shared
    sel = {"t": "soak"}
    cars = _fleet(server, line, v1, 4, sel, prefix=sel["t"])
    r = create_rollout(server, line=line, selector=sel, version=2, stages=[{"percent": 50, "success_threshold_pct": 50,
                                                        "min_soak_s": 1.0}, {"percent": 100}])
    for car in cars:
        if stage_of(r["id"], car.device_id, [50, 100]) == 0:
            car.install(car.poll(line), download=False)
    assert show_rollout(server, r["id"])["current_stage"] == 0
    deadline = time.monotonic() + 5
    while show_rollout(server, r["id"])["current_stage"] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert show_rollout(server, r["id"])["current_stage"] == 1  # the background tick advanced it after the soak


def test_the_soak_runs_from_the_stage_s_last_install_not_from_its_start(
        server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    """A canary that installs after the soak time has passed since the stage began has not yet run the version:
    the rollout must not widen until that car has run it for the soak time too (its health window may still
    roll it back)."""
    line, v1, _ = shared
    sel = {"t": "late-soak"}
    cars = _fleet(server, line, v1, 4, sel, prefix=sel["t"])
    r = create_rollout(server, line=line, selector=sel, version=2, stages=[{"percent": 50, "success_threshold_pct": 50,
                                                        "min_soak_s": 1.5}, {"percent": 100}])
    time.sleep(1.7)  # the stage has soaked since its start; nobody has installed yet
    canaries = [c for c in cars if stage_of(r["id"], c.device_id, [50, 100]) == 0]
    assert canaries
    for car in canaries:
        car.install(car.poll(line), download=False)
    installed_at = time.monotonic()
    assert show_rollout(server, r["id"])["current_stage"] == 0
    while show_rollout(server, r["id"])["current_stage"] == 0 and time.monotonic() < installed_at + 6:
        time.sleep(0.1)
    assert show_rollout(server, r["id"])["current_stage"] == 1
    assert time.monotonic() - installed_at >= 1.4  # advanced by the tick, a soak after the last install


def test_auto_halt_at_error_threshold_stops_offers(server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    line, v1, _ = shared
    sel = {"t": "halt"}
    cars = _fleet(server, line, v1, 10, sel, prefix=sel["t"])
    r = create_rollout(server, line=line, selector=sel, version=2, error_threshold_count=2)
    cars[0].fail(cars[0].poll(line))
    assert show_rollout(server, r["id"])["state"] == "running"  # one failure is below the threshold
    cars[1].fail(cars[1].poll(line))
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "halted" and "error threshold" in shown["reason"]
    halts = [a for a in server.admin().get("/api/v1/audit").json() if a["action"] == "rollout.halt"]
    assert halts[0]["actor"] == "auto" and halts[0]["detail"]["rollout_id"] == r["id"]
    assert cars[5].poll(line) is None  # halted rollouts offer nothing; the line's stable is v1, which it runs
    resumed = server.admin().post(f"/api/v1/rollouts/{r['id']}/resume").json()
    assert resumed["state"] == "running"
    time.sleep(0.5)  # background ticks evaluate it: old failures no longer count after a resume
    assert show_rollout(server, r["id"])["state"] == "running"
    cars[2].fail(cars[2].poll(line))
    assert show_rollout(server, r["id"])["state"] == "running"
    cars[3].fail(cars[3].poll(line))
    assert show_rollout(server, r["id"])["state"] == "halted"


def test_auto_halt_by_percent(server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    line, v1, _ = shared
    sel = {"t": "halt-pct"}
    cars = _fleet(server, line, v1, 10, sel, prefix=sel["t"])
    r = create_rollout(server, line=line, selector=sel, version=2, error_threshold_pct=25)
    for car in cars[:2]:
        car.fail(car.poll(line))
    assert show_rollout(server, r["id"])["state"] == "running"  # 20% < 25%
    cars[2].fail(cars[2].poll(line))
    assert show_rollout(server, r["id"])["state"] == "halted"


def test_operator_actions_follow_the_state_machine_and_illegal_ones_are_409(server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    line, v1, _ = shared
    sel = {"t": "ops"}
    car = _fleet(server, line, v1, 1, sel, prefix=sel["t"])[0]
    r = create_rollout(server, line=line, selector=sel, version=2)
    admin = server.admin()
    assert admin.post(f"/api/v1/rollouts/{r['id']}/pause").json()["state"] == "paused"
    assert car.poll(line) is not None  # paused keeps offering to reached stages, only progress stops
    before = stored_state(server)
    bad = admin.post(f"/api/v1/rollouts/{r['id']}/pause")
    assert bad.status_code == 409 and bad.json()["error"] == "illegal_transition"
    assert admin.post(f"/api/v1/rollouts/{r['id']}/advance").status_code == 409
    assert stored_state(server) == before
    assert admin.post(f"/api/v1/rollouts/{r['id']}/resume").json()["state"] == "running"
    assert admin.post(f"/api/v1/rollouts/{r['id']}/abort").json()["state"] == "aborted"
    assert car.poll(line) is None
    before = stored_state(server)
    for action in ("pause", "resume", "advance", "abort"):
        assert admin.post(f"/api/v1/rollouts/{r['id']}/{action}").status_code == 409
    assert admin.post(f"/api/v1/rollouts/{r['id']}/explode").status_code == 400
    assert stored_state(server) == before
    actions = [a["action"] for a in admin.get("/api/v1/audit").json() if a["detail"].get("rollout_id") == r["id"]]
    assert actions == ["rollout.abort", "rollout.resume", "rollout.pause", "rollout.create"]


def test_rollback_sends_cars_back_with_a_signed_rollback_offer(server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    line, v1, _ = shared
    sel = {"t": "rollback"}
    car = _fleet(server, line, v1, 1, sel, prefix=sel["t"])[0]
    r = create_rollout(server, line=line, selector=sel, version=2)
    car.install(car.poll(line))
    assert car.version == 2
    rb = server.admin().post(f"/api/v1/rollouts/{r['id']}/rollback", json={})
    assert rb.status_code == 201, rb.text
    assert rb.json()["rollback"] is True and rb.json()["target_version"] == 1
    assert show_rollout(server, r["id"])["state"] == "aborted"
    envelope = car.http.post("/api/v1/device/poll", json={
        "line": line, "current_version": 2, "current_model_sha256": car.model_sha256,
        "current_package_sha256": car.package_sha256}).json()["offer"]
    assert verify_envelope(envelope, server.public_key)
    assert envelope["signed"]["target_version"] == 1 and envelope["signed"]["rollback"] is True
    assert envelope["signed"]["delta"] is not None  # v2 -> v1 delta made on demand


def test_no_silent_downgrade_without_rollback(server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    line, v1, v2 = shared
    car = Car(server, f"{line}-ahead")
    car.version, car.model_sha256 = 2, v2["packages"]["lossless"]["model_sha256"]
    assert car.poll(line) is None  # stable is v1, but the car is ahead and this is no rollback


def test_overlapping_rollouts_newest_wins(server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    line, v1, _ = shared
    sel = {"t": "overlap"}
    car = _fleet(server, line, v1, 1, sel, prefix=sel["t"])[0]
    create_rollout(server, line=line, selector=sel, version=2)
    newer = create_rollout(server, line=line, selector=sel, version=3)
    offer = car.poll(line)
    assert offer["rollout_id"] == newer["id"] and offer["target_version"] == 3


def test_manifest_versions_strictly_increase_per_device(server: LiveServer, shared: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    line, v1, _ = shared
    sel = {"t": "manifest"}
    car = _fleet(server, line, v1, 1, sel, prefix=sel["t"])[0]
    first = create_rollout(server, line=line, selector=sel, version=2)
    m1 = car.poll(line)["manifest_version"]
    server.admin().post(f"/api/v1/rollouts/{first['id']}/abort")
    create_rollout(server, line=line, selector=sel, version=3)
    m2 = car.poll(line)["manifest_version"]
    assert m2 > m1
