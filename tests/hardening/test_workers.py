"""Two uvicorn worker processes (``ota serve --workers 2``, a real subprocess) sharing one database.

Runs on SQLite by default and on PostgreSQL when ``DATABASE_URL`` is set.
Every request opens its own connection, so the kernel spreads them over both
workers.  Checked: concurrent polls never assign a device twice, concurrent
downloads are counted exactly once each, duplicated reports are applied once,
and racing operator actions walk the rollout state machine exactly as far as
it goes -- no 5xx anywhere, and the database is intact afterwards.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hardening.workers import ServedRegistry, serve

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
CARS = 24


def fresh(method: str, url: str, token: str, **kw: Any) -> httpx.Response:
    """One request on its own connection (so that both workers get some)."""
    return httpx.request(method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kw)


def in_parallel(jobs: list[Callable[[], Any]], threads: int = 16) -> list[Any]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda job: job(), jobs))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    # A poll cache interval far longer than any test: a change on one worker reaches the other's cached
    # entries only through the change feed (server/devices/changefeed.py), never by the entries expiring.
    with serve(tmp_path_factory.mktemp("workers") / "data", workers=2, env={"OTA_POLL_CACHE_S": "300"}) as reg:
        assert len(reg.worker_pids()) >= 2, "uvicorn did not fork two workers"
        with reg.admin() as admin:
            for n in (1, 2):
                r = admin.post("/api/v1/lines/road-signs/versions",
                               files={"file": ("m.onnx", (ZOO / f"v{n}.onnx").read_bytes())})
                assert r.status_code == 201, r.text
        enrolled = in_parallel([
            lambda i=i: fresh("POST", f"{reg.url}/api/v1/devices/enroll", reg.enrollment_token,
                              json={"device_id": f"car-{i:03d}", "tags": {"region": "eu"}}) for i in range(CARS)])
        assert all(r.status_code == 201 for r in enrolled)
        yield {"reg": reg, "tokens": {r.json()["device_id"]: r.json()["device_token"] for r in enrolled}}


def admin_get(reg: ServedRegistry, path: str) -> Any:
    r = fresh("GET", f"{reg.url}{path}", reg.admin_token)
    assert r.status_code == 200, r.text
    return r.json()


def test_concurrent_polls_report_and_downloads_over_two_workers_assign_and_count_once(
        registry: dict[str, Any]) -> None:
    reg, tokens = registry["reg"], registry["tokens"]
    r = fresh("POST", f"{reg.url}/api/v1/rollouts", reg.admin_token, json={"line": "road-signs", "version": 2})
    assert r.status_code == 201, r.text
    rollout = r.json()["id"]
    body = {"line": "road-signs", "current_version": 1}
    polls = in_parallel([lambda t=t: fresh("POST", f"{reg.url}/api/v1/device/poll", t, json=body)
                         for t in tokens.values() for _ in range(3)])
    assert [p.status_code for p in polls] == [200] * len(polls)
    offers = {p.json()["offer"]["signed"]["device_id"]: p.json()["offer"]["signed"] for p in polls}
    assert set(offers) == set(tokens)
    # Each car fetches its package twice at once (a retry racing the first try) and reports twice at once.
    sizes = {d: o["package"]["size"] for d, o in offers.items()}
    gets = in_parallel([lambda d=d, t=t: (d, fresh("GET", f"{reg.url}{offers[d]['package']['url']}", t))
                        for d, t in tokens.items() for _ in range(2)])
    for d, resp in gets:
        assert resp.status_code == 200 and hashlib.sha256(resp.content).hexdigest() == offers[d]["package"]["sha256"]
    reports = in_parallel([
        lambda d=d, t=t, s=s, st=st: fresh("POST", f"{reg.url}/api/v1/device/reports", t, json={"reports": [
            {"seq": s, "rollout_id": rollout, "target_version": 2, "state": st, "artifact": "full",
             "bytes_received": sizes[d]}]})
        for d, t in tokens.items() for s, st in ((1, "downloading"),) for _ in range(2)])
    assert all(r.status_code == 200 for r in reports), [r.text for r in reports if r.status_code != 200]
    for t in tokens.values():  # the rest of the walk, in order
        for seq, state in ((2, "downloaded"), (3, "verified"), (4, "installed")):
            r = fresh("POST", f"{reg.url}/api/v1/device/reports", t, json={"reports": [
                {"seq": seq, "rollout_id": rollout, "target_version": 2, "state": state}]})
            assert r.status_code == 200 and r.json()["accepted"] == [seq], r.text

    expected_bytes = 2 * sum(sizes.values())
    deadline = time.monotonic() + 10
    while True:  # transfer rows are written as each response ends
        acct = admin_get(reg, f"/api/v1/accounting/rollouts/{rollout}")
        if acct["totals"]["requests"] >= 2 * CARS or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert acct["totals"]["requests"] == 2 * CARS
    assert acct["totals"]["bytes_sent"] == expected_bytes  # every byte written counted once, none twice
    assert acct["totals"]["devices_updated"] == CARS
    detail = admin_get(reg, f"/api/v1/rollouts/{rollout}")
    assert sum(s["assigned"] for s in detail["stages"]) == CARS  # one assignment per car, not per poll
    for d in tokens:
        updates = [u for u in admin_get(reg, f"/api/v1/devices/{d}")["updates"] if u["rollout_id"] == rollout]
        assert len(updates) == 1 and updates[0]["state"] == "installed", (d, updates)


def test_racing_operator_actions_take_each_legal_step_exactly_once(registry: dict[str, Any]) -> None:
    reg = registry["reg"]
    stages = [{"percent": 10}, {"percent": 50}, {"percent": 100}]
    r = fresh("POST", f"{reg.url}/api/v1/rollouts", reg.admin_token,
              json={"line": "road-signs", "version": 1, "rollback": True, "stages": stages})
    assert r.status_code == 201, r.text
    rollout = r.json()["id"]
    advances = in_parallel([lambda: fresh("POST", f"{reg.url}/api/v1/rollouts/{rollout}/advance", reg.admin_token)
                            for _ in range(12)], threads=12)
    codes = Counter(a.status_code for a in advances)
    assert codes == {200: 3, 409: 9}, codes  # stage 0->1, 1->2, 2->completed; the rest are illegal
    assert admin_get(reg, f"/api/v1/rollouts/{rollout}")["state"] == "completed"
    audit = admin_get(reg, "/api/v1/audit?limit=1000")
    steps = [a["action"] for a in audit if a["detail"].get("rollout_id") == rollout and a["action"] != "rollout.create"]
    assert len(steps) == 3, steps  # one audit entry per step actually taken, none for the refused ones

    r = fresh("POST", f"{reg.url}/api/v1/rollouts", reg.admin_token, json={"line": "road-signs", "version": 2})
    other = r.json()["id"]
    actions = ["pause", "resume", "abort", "pause", "resume", "abort"] * 2
    results = in_parallel([lambda a=a: fresh("POST", f"{reg.url}/api/v1/rollouts/{other}/{a}", reg.admin_token)
                           for a in actions], threads=12)
    assert all(res.status_code in (200, 409) for res in results), [res.text for res in results]
    assert Counter(a for a, res in zip(actions, results, strict=True) if res.status_code == 200)["abort"] == 1
    assert admin_get(reg, f"/api/v1/rollouts/{other}")["state"] == "aborted"


def test_token_rotation_and_patch_on_one_worker_reach_cached_entries_on_every_worker(
        registry: dict[str, Any]) -> None:
    reg, tokens = registry["reg"], registry["tokens"]
    cars = sorted(tokens)[:6]
    body = {"line": "road-signs", "current_version": 0}

    def polls(token: str) -> list[httpx.Response]:  # fresh connections: both workers answer some
        return in_parallel([lambda: fresh("POST", f"{reg.url}/api/v1/device/poll", token, json=body)
                            for _ in range(8)], threads=8)

    for d in cars:
        assert {r.status_code for r in polls(tokens[d])} == {200}
        assert {r.status_code for r in polls(tokens[d])} == {200}  # now answered from both workers' caches
    old = {d: tokens[d] for d in cars}
    for d in cars:  # rotate each token with one request (one worker), and change its poll interval
        r = fresh("POST", f"{reg.url}/api/v1/devices/{d}/reauthorize", reg.admin_token, json={})
        assert r.status_code == 200, r.text
        r = fresh("POST", f"{reg.url}/api/v1/devices/enroll", reg.enrollment_token,
                  json={"device_id": d, "tags": {"region": "eu"}})
        assert r.status_code == 201
        tokens[d] = r.json()["device_token"]
        r = fresh("PATCH", f"{reg.url}/api/v1/devices/{d}", reg.admin_token, json={"poll_interval_s": 17})
        assert r.status_code == 200
    deadline = time.monotonic() + 20  # the feed takes milliseconds; far less than the 300 s cache interval
    for d in cars:
        while True:
            stale = [r.status_code for r in polls(old[d]) if r.status_code != 401]
            if not stale:
                break
            assert time.monotonic() < deadline, f"{d}'s rotated token still answered on a worker: {stale}"
            time.sleep(0.05)
        answers = polls(tokens[d])
        assert {(r.status_code, r.json()["poll_interval_s"]) for r in answers} == {(200, 17)}


def test_database_is_intact_and_both_workers_still_answer(registry: dict[str, Any]) -> None:
    reg = registry["reg"]
    if reg.database_url is None:
        import sqlite3

        with sqlite3.connect(reg.data_dir / "registry.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    answers = in_parallel([lambda: httpx.get(f"{reg.url}/readyz", timeout=10) for _ in range(20)])
    assert all(a.status_code == 200 for a in answers)
    assert len(reg.worker_pids()) >= 2


def test_revoked_device_is_refused_on_every_worker_from_its_very_next_poll(registry: dict[str, Any]) -> None:
    reg, tokens = registry["reg"], registry["tokens"]
    cars = sorted(tokens)[-3:]  # not the ones the rotation test re-enrols
    body = {"line": "road-signs", "current_version": 0}

    def polls(token: str) -> list[int]:  # fresh connections: both workers answer some
        return [r.status_code for r in in_parallel(
            [lambda: fresh("POST", f"{reg.url}/api/v1/device/poll", token, json=body) for _ in range(8)], threads=8)]

    for d in cars:
        assert set(polls(tokens[d])) == {200}
        assert set(polls(tokens[d])) == {200}  # now answered from both workers' caches
    for d in cars:
        r = fresh("POST", f"{reg.url}/api/v1/devices/{d}/revoke", reg.admin_token)
        assert r.status_code == 200, r.text
        assert set(polls(tokens[d])) == {401}, d  # no worker answers from its cache any more
        package = fresh("GET", f"{reg.url}/api/v1/artifacts/{'0' * 64}", tokens[d])
        assert package.status_code == 401
