"""Dashboard pages, live.json and the operator's lists read through read sessions: they answer while another
writer holds the database's write lock, and take no write lock themselves (issue 16).

Before, every page and live.json refresh opened a write transaction (``session_scope``: ``BEGIN IMMEDIATE`` on
SQLite), so an operator's open dashboard queued behind, and held up, the fleet's enrolments and reports.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg

from tests.support.live_server import LiveServer

HOLD_S = 3.0
READS = ["/dashboard/rollouts", "/dashboard/fleet", "/dashboard/fleet/car-1", "/dashboard/models",
         "/dashboard/bandwidth", "/dashboard/live.json"]
ADMIN_READS = ["/api/v1/rollouts", "/api/v1/devices", "/api/v1/devices/car-1", "/api/v1/lines", "/api/v1/audit"]


@contextmanager
def another_writer(database_url: str) -> Iterator[None]:
    """Hold the write lock as a busy writer would: SQLite's (``BEGIN IMMEDIATE``), or on PostgreSQL an EXCLUSIVE
    lock on ``devices`` (every write to it waits; plain reads do not)."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://", 1)) as pg:
        pg.execute("LOCK TABLE devices IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            pg.rollback()


def test_dashboard_and_operator_reads_answer_while_another_writer_holds_the_lock(live_server: LiveServer) -> None:
    live_server.enroll("car-1", tags={"region": "eu"})
    dashboard = httpx.Client(base_url=live_server.url, timeout=HOLD_S * 4)
    assert dashboard.post("/dashboard/login", data={"token": live_server.admin_token}).status_code == 303
    admin = live_server.admin(timeout=HOLD_S * 4)
    write: dict[str, float] = {}

    def patch_device() -> None:  # a write: it must wait for the lock, proving the lock was held
        start = time.perf_counter()
        r = admin.patch("/api/v1/devices/car-1", json={"tags": {"region": "us"}})
        write["status"], write["s"] = r.status_code, time.perf_counter() - start

    with another_writer(live_server.database_url):
        started = time.perf_counter()
        slow = {}
        for path in READS:
            t = time.perf_counter()
            r = dashboard.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            slow[path] = time.perf_counter() - t
        for path in ADMIN_READS:
            t = time.perf_counter()
            r = admin.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            slow[path] = time.perf_counter() - t
        writer = threading.Thread(target=patch_device)
        writer.start()
        time.sleep(max(0.0, HOLD_S - (time.perf_counter() - started)))
        assert "s" not in write, f"a write finished while the lock was held: {write}"
    writer.join(timeout=HOLD_S * 4)
    assert write.get("status") == 200, write
    assert max(slow.values()) < HOLD_S / 2, f"reads waited for the writer: {slow}"
    assert "region" in dashboard.get("/dashboard/fleet/car-1").text  # the write landed once the lock was released
    dashboard.close()
