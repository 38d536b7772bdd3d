"""Rollout schedules and maintenance windows over real HTTP (issue 21 item 2): bad schedules are refused naming
the field with nothing stored; a rollout before its start or outside its windows makes no new offer and never
advances, even with every car installed; inside its windows it advances."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from sqlalchemy import update

from server.orm import Rollout, RolloutStage
from server.rollouts.windows import DAYS
from tests.conftest import ZOO
from tests.server.factories import Car, create_rollout, show_rollout, stored_state
from tests.support.live_server import LiveServer

_lines = count(1)
ALWAYS = {"days": "daily", "start": "00:00", "end": "24:00", "tz": "UTC"}


def closed_now() -> dict[str, str]:
    """A one-hour window three days from today (UTC): closed now, whatever the time of the run."""
    day = DAYS[(datetime.now(UTC).weekday() + 3) % 7]
    return {"days": day, "start": "00:00", "end": "01:00", "tz": "UTC"}


def _line(server: LiveServer, cars: int) -> tuple[str, list[Car]]:
    """A fresh line (v1 stable, v2 published) and ``cars`` cars running v1 that have polled it."""
    name = f"windows-{next(_lines)}"
    v1 = server.publish(ZOO / "v1.onnx", line=name, codecs="lossless")
    server.publish(ZOO / "v2.onnx", line=name, codecs="lossless")
    fleet = []
    for i in range(cars):
        car = Car(server, f"{name}-car-{i:02d}", {"region": "eu"})
        car.version, car.model_sha256 = 1, v1["packages"]["lossless"]["model_sha256"]
        car.package_sha256 = v1["packages"]["lossless"]["sha256"]
        assert car.poll(name) is None
        fleet.append(car)
    return name, fleet


def _wait(server: LiveServer, rollout_id: int, done: Callable[[dict[str, Any]], bool],
          timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    shown = show_rollout(server, rollout_id)
    while not done(shown) and time.monotonic() < deadline:
        time.sleep(0.1)
        shown = show_rollout(server, rollout_id)
    return shown


def _set(server: LiveServer, rollout_id: int, **values: Any) -> None:
    """Change a stored rollout as time would (its window closing or opening) without waiting for the clock."""
    with server.ctx.db.engine.begin() as conn:
        conn.execute(update(Rollout).where(Rollout.id == rollout_id).values(**values))


@pytest.mark.parametrize(("change", "field"), [
    ({"starts_at": "2030-01-01T01:00:00"}, "starts_at"),
    ({"starts_at": "next tuesday"}, "starts_at"),
    ({"windows": [{**ALWAYS, "tz": "Europe/Atlantis"}]}, "tz"),
    ({"windows": [{**ALWAYS, "days": "mon-fry"}]}, "days"),
    ({"windows": [{**ALWAYS, "start": "25:00"}]}, "start"),
    ({"windows": [{**ALWAYS, "start": "01:00", "end": "01:00"}]}, "end"),
    ({"windows": []}, "windows"),
    ({"windows": [ALWAYS] * 17}, "windows"),
])
def test_bad_schedule_is_a_422_naming_the_field_and_stores_nothing(server: LiveServer, change: dict[str, Any],
                                                                    field: str) -> None:
    line, _ = _line(server, 0)
    before = stored_state(server)
    r = server.admin().post("/api/v1/rollouts", json={"line": line, "version": 2, **change})
    assert r.status_code == 422, r.text
    assert field in r.text
    assert stored_state(server) == before


def test_unauthenticated_schedule_is_refused(server: LiveServer) -> None:
    line, _ = _line(server, 0)
    r = server.device("not-a-token").post("/api/v1/rollouts", json={"line": line, "version": 2,
                                                                     "windows": [ALWAYS]})
    assert r.status_code == 401


def test_a_rollout_starting_tomorrow_makes_no_offer_and_says_when_it_starts(server: LiveServer) -> None:
    line, cars = _line(server, 2)
    start = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    r = create_rollout(server, line=line, version=2, starts_at=start.isoformat(),
                       stages=[{"percent": 100, "min_soak_s": 0, "success_threshold_pct": 50, "min_installed": 0}])
    assert r["open"] is False and datetime.fromisoformat(r["next_open"]) == start
    assert [car.poll(line) for car in cars] == [None, None]
    shown = _wait(server, r["id"], lambda x: (x["reason"] or "").startswith("scheduled:"))
    assert (shown["state"], shown["current_stage"]) == ("running", 0)
    assert "waits for its start" in shown["reason"]
    _set(server, r["id"], starts_at=datetime.now(UTC) - timedelta(seconds=1),
         stage_started_at=datetime.now(UTC))
    server.ctx.pollcache.clear()  # a direct write is not on the change feed
    assert cars[0].poll(line) is not None  # once started, the cars are offered it


def test_a_rollout_outside_its_window_makes_no_new_offer_and_never_advances_even_all_installed(
        server: LiveServer) -> None:
    line, cars = _line(server, 3)
    # open while the cars are offered and install; a long soak holds the stage until the window is closed
    r = create_rollout(server, line=line, version=2, windows=[ALWAYS],
                       stages=[{"percent": 100, "min_soak_s": 3600, "success_threshold_pct": 50}])
    assert r["open"] is True and r["windows"] == [ALWAYS]
    offers = [cars[0].poll(line), cars[1].poll(line)]
    assert all(offers)
    _set(server, r["id"], windows=[closed_now()])
    with server.ctx.db.engine.begin() as conn:
        conn.execute(update(RolloutStage).where(RolloutStage.rollout_id == r["id"]).values(min_soak_s=0))
    server.ctx.pollcache.clear()  # a direct write is not on the change feed
    for car, offer in zip(cars, offers, strict=False):
        car.install(offer, download=False)  # cars already offered go on
    assert cars[2].poll(line) is None  # but nobody new is offered
    shown = _wait(server, r["id"], lambda x: (x["reason"] or "").startswith("scheduled:"))
    time.sleep(0.6)  # three more ticks
    shown = show_rollout(server, r["id"])
    assert (shown["state"], shown["current_stage"]) == ("running", 0), shown
    assert shown["stages"][0]["counts"]["installed"] == 2
    assert shown["open"] is False and "outside its maintenance windows; next opens" in shown["reason"]
    assert datetime.fromisoformat(shown["next_open"]) > datetime.now(UTC)
    _set(server, r["id"], windows=[ALWAYS])  # the window opens: the soaked stage completes
    shown = _wait(server, r["id"], lambda x: x["state"] != "running")
    assert shown["state"] == "completed" and "2 of 3 installed" in shown["reason"], shown


def test_a_rollout_inside_its_window_advances(server: LiveServer) -> None:
    line, cars = _line(server, 2)
    r = create_rollout(server, line=line, version=2, windows=[ALWAYS],
                       starts_at=(datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
                       stages=[{"percent": 100, "min_soak_s": 0, "success_threshold_pct": 50}])
    offer = cars[0].poll(line)
    assert offer is not None
    cars[0].install(offer, download=False)
    shown = _wait(server, r["id"], lambda x: x["state"] != "running")
    assert shown["state"] == "completed", shown
