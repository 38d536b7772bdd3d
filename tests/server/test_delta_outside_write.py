"""Transfer deltas are made outside write transactions: on demand at a poll (issue 15, finding 6) and for the
fleet at publish (issue 16).

On SQLite the registry has one write slot.  A poll whose offer needs a delta nobody has made yet used to
compute it (materialize both packages, diff, entropy-code) inside its write transaction, so every other
write (another car's enrolment, reports) waited for the codec.  These tests time a real on-demand delta
and another car's enrolment made while it is being computed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from server.registry import storage as storage_module
from tests.support.live_server import LiveServer

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def test_another_cars_enrolment_is_not_held_up_by_an_on_demand_delta(
        live_server_factory: Callable[..., LiveServer]) -> None:
    srv = live_server_factory(fleet_delta_bases=0, default_codecs="lossless")  # v1 -> v3 is made on demand
    v1 = srv.publish(ZOO / "v1.onnx")
    srv.publish(ZOO / "v2.onnx")
    srv.publish(ZOO / "v3.onnx")
    r = srv.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 3})
    assert r.status_code == 201, r.text
    car = srv.device(srv.enroll("car-old")["device_token"])
    poll = {"line": "road-signs", "current_version": 1, "current_model_sha256": v1["packages"]["lossless"]["model_sha256"],
            "current_package_sha256": v1["packages"]["lossless"]["sha256"]}
    timings: dict[str, float] = {}

    def slow_poll() -> None:
        start = time.perf_counter()
        answer = car.post("/api/v1/device/poll", json=poll)
        timings["poll"] = time.perf_counter() - start
        assert answer.status_code == 200 and answer.json()["offer"]["signed"]["delta"] is not None, answer.text

    poller = threading.Thread(target=slow_poll)
    poller.start()
    time.sleep(0.15)  # the poll is now computing the delta
    enrol_latencies = []
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.enrollment_token}"},
                      timeout=60) as fleet:
        for i in range(3):
            start = time.perf_counter()
            assert fleet.post("/api/v1/devices/enroll", json={"device_id": f"car-new-{i}"}).status_code == 201
            enrol_latencies.append(time.perf_counter() - start)
    poller.join()
    assert timings["poll"] > 0.3, f"the delta took {timings['poll']:.2f} s: too fast to show anything"
    assert max(enrol_latencies) < timings["poll"] / 4, (
        f"enrolments took {[round(t, 3) for t in enrol_latencies]} s while a {timings['poll']:.2f} s delta was made")


def _write_lock_is_free(database_url: str, within_s: float = 0.25) -> bool:
    """Whether another writer can start within ``within_s``: nobody holds SQLite's write lock for longer (or, on
    PostgreSQL, sits in an open transaction of the registry's while Python computes).

    The window lets the server's own background ticks (last-seen flush, rollout tick: a few ms each) pass; a
    transaction held across a diff (hundreds of ms, and the diff waits for this check) never does.
    """
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=within_s, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
    deadline = time.monotonic() + within_s
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as pg:
        while True:
            row = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()").fetchone()
            if row is not None and row[0] == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


@dataclass
class DiffWatch:
    """Every transfer delta the in-process server diffs, with whether the write lock was free while it did."""

    database_url: str = ""
    seen: list[bool] = field(default_factory=list)


@pytest.fixture
def diffs(monkeypatch: pytest.MonkeyPatch) -> DiffWatch:
    """Watch ``codec.diff`` in the in-process server: the real function runs; the wrapper looks at the database
    first.  The test sets ``database_url`` once its server is up."""
    watch = DiffWatch()
    real = storage_module.codec.diff

    def observed(base: bytes, target: bytes) -> bytes:
        watch.seen.append(_write_lock_is_free(watch.database_url))
        return real(base, target)

    monkeypatch.setattr(storage_module.codec, "diff", observed)
    return watch


def test_fleet_deltas_at_publish_are_diffed_outside_any_write_transaction(
        live_server_factory: Callable[..., LiveServer], diffs: DiffWatch) -> None:
    srv = live_server_factory(fleet_delta_bases=3, default_codecs="lossless")
    diffs.database_url = srv.database_url
    v1 = srv.publish(ZOO / "v1.onnx")
    car = srv.device(srv.enroll("car-on-v1")["device_token"])
    answer = car.post("/api/v1/device/poll", json={
        "line": "road-signs", "current_version": 1,
        "current_model_sha256": v1["packages"]["lossless"]["model_sha256"]})
    assert answer.status_code == 200 and answer.json()["offer"] is None  # the fleet now runs v1
    srv.publish(ZOO / "v2.onnx")
    diffs.seen.clear()
    srv.publish(ZOO / "v3.onnx")  # v2 -> v3 is packed; v1 -> v3 is the fleet delta made at publish
    with srv.admin() as admin:
        assert admin.get("/api/v1/lines/road-signs/versions/3").status_code == 200
    assert diffs.seen, "publishing v3 for a fleet on v1 made no fleet delta"
    assert all(diffs.seen), f"a delta was diffed inside a write transaction: {diffs.seen}"


def test_an_on_demand_delta_is_diffed_outside_the_polls_write_transaction(
        live_server_factory: Callable[..., LiveServer], diffs: DiffWatch) -> None:
    srv = live_server_factory(fleet_delta_bases=0, default_codecs="lossless")
    diffs.database_url = srv.database_url
    v1 = srv.publish(ZOO / "v1.onnx")
    srv.publish(ZOO / "v2.onnx")
    srv.publish(ZOO / "v3.onnx")
    assert srv.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 3}).status_code == 201
    diffs.seen.clear()
    car = srv.device(srv.enroll("car-old")["device_token"])
    answer = car.post("/api/v1/device/poll", json={
        "line": "road-signs", "current_version": 1, "current_model_sha256": v1["packages"]["lossless"]["model_sha256"],
        "current_package_sha256": v1["packages"]["lossless"]["sha256"]})
    assert answer.status_code == 200 and answer.json()["offer"]["signed"]["delta"] is not None, answer.text
    assert diffs.seen == [True], f"the poll's delta was diffed holding the write lock: {diffs.seen}"
