"""The poll path's per-process caches (server/devices/pollcache.py) over real HTTP.

A steady-state poll is answered with no SQL; a change made through this
process (new rollout, advance, token rotation, device PATCH) is seen on the
very next poll; a change made by another process sharing the database
reaches this one through the change feed, and an entry it has not heard
about stays valid past ``OTA_POLL_CACHE_S`` (a fleet polling every 60 s is
answered from memory).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, select

from server.devices import changefeed
from server.devices.decision import LineRun
from server.devices.pollcache import DeviceView, PollCache
from server.orm import Device
from server.rollouts.stages import bucket
from tests.conftest import ZOO
from tests.server.factories import Car
from tests.support.live_server import LiveServer, run_live_server

_lines = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # A long cache interval, flush period and rollout tick: nothing in the background reads or writes during
    # a test, so any SQL seen is the poll's own (the default 0.5 s tick's SELECT once landed inside the
    # counted window).  In-process invalidation must not depend on the interval.
    with run_live_server(tmp_path_factory.mktemp("pollcache"), poll_cache_s=120.0,
                         last_seen_flush_s=120.0, rollout_tick_s=120.0) as srv:
        yield srv


def _line(server: LiveServer) -> tuple[str, dict[str, Any]]:
    name = f"cache-{next(_lines)}"
    v1 = server.publish(ZOO / "v1.onnx", line=name)
    server.publish(ZOO / "v2.onnx", line=name)
    return name, v1


def _car_on_v1(server: LiveServer, line: str, v1: dict[str, Any], device_id: str) -> Car:
    car = Car(server, device_id, {"region": "eu"})
    car.version, car.model_sha256 = 1, v1["packages"]["lossless"]["model_sha256"]
    car.package_sha256 = v1["packages"]["lossless"]["sha256"]
    return car


class _SqlCounter:
    """Counts statements the server sends to its database."""

    def __init__(self, server: LiveServer) -> None:
        self.engine = server.ctx.db.engine
        self.statements: list[str] = []

    def _note(self, _conn: Any, _cursor: Any, statement: str, params: Any, *_args: Any) -> None:
        self.statements.append(f"{statement} {params}")

    def __enter__(self) -> _SqlCounter:
        event.listen(self.engine, "before_cursor_execute", self._note)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._note)


def test_unknown_and_missing_tokens_are_refused_even_when_cached(server: LiveServer) -> None:
    line, v1 = _line(server)
    car = _car_on_v1(server, line, v1, f"{line}-car")
    assert car.poll(line) is None  # device and line now cached
    body = {"line": line, "current_version": 1}
    assert server.anonymous().post("/api/v1/device/poll", json=body).status_code == 401
    r = server.device("not-a-token").post("/api/v1/device/poll", json=body)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = car.http.post("/api/v1/device/poll", json={"line": "no-such-line", "current_version": 1})
    assert r.status_code == 404 and "no-such-line" in r.json()["detail"]
    assert car.http.post("/api/v1/device/poll", json={"line": line, "current_version": -1}).status_code == 422


def test_steady_state_poll_sends_no_sql(server: LiveServer) -> None:
    line, v1 = _line(server)
    steady = _car_on_v1(server, line, v1, f"{line}-steady")
    fresh = Car(server, f"{line}-fresh", {"region": "eu"})  # no model yet: gets an offer
    # First polls write (running version, the offer) and so drop the device's entry; the second reloads it.
    assert steady.poll(line) is None and steady.poll(line) is None
    first = fresh.poll(line)
    assert first is not None and first["target_version"] == 1
    fresh.poll(line)
    # A load that raced any commit in this process is (conservatively) not stored: one more round settles it.
    steady.poll(line), fresh.poll(line)
    with _SqlCounter(server) as sql:
        for _ in range(10):
            assert steady.poll(line) is None
            again = fresh.poll(line)
            assert again is not None and again["manifest_version"] == first["manifest_version"]  # same offer
    assert sql.statements == [], sql.statements


def test_new_rollout_and_advance_reach_a_cached_device_on_its_next_poll(server: LiveServer) -> None:
    line, v1 = _line(server)
    cars = [_car_on_v1(server, line, v1, f"{line}-car-{i}") for i in range(12)]
    for car in cars:
        assert car.poll(line) is None  # cached: runs its desired version
    r = server.admin().post("/api/v1/rollouts", json={"line": line, "version": 2,
                                                       "stages": [{"percent": 1}, {"percent": 100}]})
    assert r.status_code == 201, r.text
    rollout = r.json()["id"]
    later = [c for c in cars if bucket(rollout, c.device_id) >= 1]  # not in stage 0
    assert later, "every car fell in the 1% stage"
    for car in later:
        assert car.poll(line) is None
    early = [c for c in cars if c not in later]
    for car in early:
        offer = car.poll(line)
        assert offer is not None and offer["rollout_id"] == rollout
    assert server.admin().post(f"/api/v1/rollouts/{rollout}/advance").status_code == 200
    for car in later:
        offer = car.poll(line)
        assert offer is not None and offer["target_version"] == 2 and offer["rollout_id"] == rollout
    assert server.admin().post(f"/api/v1/rollouts/{rollout}/pause").status_code == 200
    assert later[0].poll(line) is not None  # paused rollouts keep offering (PROTOCOL.md)
    assert server.admin().post(f"/api/v1/rollouts/{rollout}/abort").status_code == 200
    assert all(c.poll(line) is None for c in later)  # aborted: back to stable v1, which they run


def test_rotated_token_stops_working_at_once_on_this_server(server: LiveServer) -> None:
    line, v1 = _line(server)
    car = _car_on_v1(server, line, v1, f"{line}-car")
    assert car.poll(line) is None
    old = car.http
    new_token = server.reenroll(car.device_id, {"region": "eu"})["device_token"]
    r = old.post("/api/v1/device/poll", json={"line": line, "current_version": 1})
    assert r.status_code == 401
    car.http = server.device(new_token)
    assert car.poll(line) is None


def test_patched_poll_interval_is_answered_on_the_next_poll(server: LiveServer) -> None:
    line, v1 = _line(server)
    car = _car_on_v1(server, line, v1, f"{line}-car")
    body = {"line": line, "current_version": 1, "current_model_sha256": car.model_sha256}
    assert car.http.post("/api/v1/device/poll", json=body).json()["poll_interval_s"] == 60
    assert server.admin().patch(f"/api/v1/devices/{car.device_id}", json={"poll_interval_s": 7}).status_code == 200
    assert car.http.post("/api/v1/device/poll", json=body).json()["poll_interval_s"] == 7


def test_rolled_back_report_stops_the_cached_offer(server: LiveServer) -> None:
    line, v1 = _line(server)
    car = _car_on_v1(server, line, v1, f"{line}-car")
    r = server.admin().post("/api/v1/rollouts", json={"line": line, "version": 2})
    assert r.status_code == 201
    offer = car.poll(line)
    assert offer is not None and car.poll(line) is not None  # the second answer came from the cache
    for state in ("downloading", "downloaded", "verified", "installed", "rolled_back"):
        assert car.report(offer, state, running_version=1).status_code == 200
    assert car.poll(line) is None


def test_another_process_changes_reach_its_cache_and_unchanged_entries_outlive_the_interval(
        live_server_factory: Any) -> None:
    """Two registries on one database (as two uvicorn workers): B hears A's commits through the change feed."""
    interval = 1.0
    a = live_server_factory(poll_cache_s=interval)
    b = live_server_factory(poll_cache_s=interval, database_url=a.database_url, admin_token=a.admin_token,
                            enrollment_token=a.enrollment_token, signing_key_path=a.data_dir / "signing-key.pem")
    line = "shared"
    v1 = a.publish(ZOO / "v1.onnx", line=line)
    a.publish(ZOO / "v2.onnx", line=line)
    car = _car_on_v1(a, line, v1, "two-workers-car")
    on_b = b.device(car.enrollment["device_token"])
    body = {"line": line, "current_version": 1, "current_model_sha256": car.model_sha256}

    def b_answer() -> tuple[int, Any]:
        r = on_b.post("/api/v1/device/poll", json=body)
        return r.status_code, r.json().get("offer")

    def seen(predicate: Any) -> None:
        # Bounded by the feed's own waits, well under the 1 s time-to-live the old design relied on; the
        # bound is generous for a loaded machine (this asserts that it arrives, not how fast).
        deadline = time.monotonic() + 10
        while not predicate(b_answer()):
            assert time.monotonic() < deadline, "B never heard A's change"
            time.sleep(0.02)

    _until_feeds_listen(a, b)
    assert b_answer() == (200, None)
    assert b_answer() == (200, None)  # B caches the device and the line (a first load may race a commit)
    time.sleep(interval * 1.5)  # older than OTA_POLL_CACHE_S: still valid, nothing changed
    with _SqlCounter(b) as sql:
        assert b_answer() == (200, None)
    assert sql.statements == [], sql.statements
    assert a.admin().post("/api/v1/rollouts", json={"line": line, "version": 2}).status_code == 201
    seen(lambda ans: ans[0] == 200 and ans[1] is not None)
    new_token = a.reenroll(car.device_id, {"region": "eu"})["device_token"]  # rotate on A
    seen(lambda ans: ans[0] == 401)
    on_b = b.device(new_token)
    assert b_answer()[0] == 200


def _until_feeds_listen(*servers: LiveServer) -> None:
    deadline = time.monotonic() + 10
    while any(s.ctx.pollcache.feed.trusted_since is None for s in servers):
        assert time.monotonic() < deadline, "change feeds never started listening"
        time.sleep(0.02)


def test_entries_fall_back_to_the_interval_while_the_feed_is_not_listening() -> None:
    now = [100.0]
    feed = changefeed.InProcessFeed()
    cache = PollCache(5.0, clock=lambda: now[0], max_age_s=600.0, feed=feed)
    feed.trust = (50.0, None)  # listening since before the load
    cache.store(cache.epochs(), "digest-a", _view(), None)
    now[0] += 60
    assert cache.device("digest-a") is not None  # trusted: valid past the interval
    feed.trust = (50.0, 159.0)  # the feed lost its connection a second ago: fresh as of then, for 5 s
    assert cache.device("digest-a") is not None  # (a poll during a brief database outage is answered)
    now[0] += 5
    assert cache.device("digest-a") is None
    feed.trust = (163.0, None)  # listening again, but since after the load: not trusted
    assert cache.device("digest-a") is None
    cache.store(cache.epochs(), "digest-a", _view(), None)
    now[0] += 599
    assert cache.device("digest-a") is not None
    now[0] += 2
    assert cache.device("digest-a") is None  # OTA_POLL_CACHE_MAX_S: reloaded even if nothing was heard


def _view(pk: int = 1) -> DeviceView:
    return DeviceView(pk, f"car-{pk}", {}, None, {"road-signs": LineRun(1, None, None, False, None)}, {})


def test_cache_entries_expire_after_the_interval_and_loads_racing_a_commit_are_not_kept() -> None:
    now = [100.0]
    cache = PollCache(5.0, clock=lambda: now[0])
    epochs = cache.epochs()
    cache.store(epochs, "digest-a", _view(), None)
    assert cache.device("digest-a") is not None
    now[0] += 4.9
    assert cache.device("digest-a") is not None
    now[0] += 0.2
    assert cache.device("digest-a") is None  # older than the interval: the next poll reloads
    epochs = cache.epochs()
    cache.invalidate([1])  # a commit that changed this device in this process while a load was reading it
    cache.store(epochs, "digest-a", _view(), None)
    assert cache.device("digest-a") is None
    epochs = cache.epochs()
    cache.invalidate([42])  # another car's commit: this device's load is as fresh as before, and kept
    cache.store(epochs, "digest-a", _view(), None)
    assert cache.device("digest-a") is not None
    cache.invalidate([1])
    epochs = cache.epochs()
    cache.clear()  # a gap in the change feed: every load in flight is refused
    cache.store(epochs, "digest-a", _view(), None)
    assert cache.device("digest-a") is None
    cache.store(cache.epochs(), "digest-a", _view(), None)
    cache.store(cache.epochs(), "digest-b", _view(), None)  # same device, rotated token
    assert cache.device("digest-a") is None and cache.device("digest-b") is not None
    cache.invalidate([1])
    assert cache.device("digest-b") is None


def test_zero_interval_turns_the_cache_off() -> None:
    cache = PollCache(0.0)
    cache.store(cache.epochs(), "digest-a", _view(), None)
    assert cache.device("digest-a") is None


def test_cached_polls_still_record_last_seen_in_one_batched_flush(server: LiveServer) -> None:
    line, v1 = _line(server)
    cars = [_car_on_v1(server, line, v1, f"{line}-car-{i}") for i in range(3)]
    for car in cars:
        car.poll(line), car.poll(line), car.poll(line)  # the last ones come from the cache
    presence = server.ctx.presence
    presence.flush(server.ctx.db)
    with server.ctx.db.engine.connect() as conn:
        seen = conn.execute(select(Device.device_id, Device.last_seen_at)
                            .where(Device.device_id.in_([c.device_id for c in cars]))).all()
    assert len(seen) == 3 and all(at is not None for _, at in seen)
