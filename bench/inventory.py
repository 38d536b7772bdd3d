"""Inventory at a million cars (issue 21): how long one page of ``GET /api/v1/devices`` and the Fleet page take.

    .venv/bin/python bench/inventory.py                          # 1,000,000 cars and update rows
    .venv/bin/python bench/inventory.py --devices 100000 --json
    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres  (the cluster; the default)

It makes a scratch PostgreSQL database (``server.scratchdb`` through ``server.inprocess.run_in_thread``, dropped
afterwards), starts the real registry on it, publishes the shipped v1 (the update rows need a version), then seeds
``--devices`` cars, one line row each and one update row each with SQL (``generate_series``: enrolling a million
cars over HTTP would measure enrolment, not the inventory), runs ``VACUUM ANALYZE`` as a database that has been up
for a while would have, and times each request ``--repeat`` times after one warm-up, printing the median and the
worst against the 300 ms target:

- ``GET /api/v1/devices?limit=100``: the first page, a filtered page (tag, line, version), a deep cursor page
  (90% of the way through), a state filter, a device-id search;
- ``/dashboard/fleet``: the first page (its cards aggregate the whole fleet), a filtered page and a deep page.

The seeded fleet: 3 regions and 2 networks as tags, line ``road-signs`` running v1..v5, one car in 1,000 drifting,
one in 100 stuck mid-download for a day, one in 100 failed, the rest installed; last seen over the past two hours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.devices.service import encode_cursor  # noqa: E402
from server.inprocess import run_in_thread  # noqa: E402

TARGET_MS = 300.0
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

SEED = [
    """INSERT INTO devices (id, device_id, token_sha256, tags, created_at, last_seen_at, manifest_version, last_seq,
                            proof_ms)
       SELECT g, 'car-' || lpad(g::text, 7, '0'), md5(g::text) || md5('t' || g::text),
              json_build_object('region', (ARRAY['eu', 'us', 'apac'])[1 + g %% 3],
                                'network', CASE WHEN g %% 4 = 0 THEN 'wifi' ELSE 'lte' END),
              now() - interval '30 days', now() - (g %% 7200) * interval '1 second', 0, 0, 0
       FROM generate_series(1, %(n)s) g""",
    "SELECT setval(pg_get_serial_sequence('devices', 'id'), %(n)s)",
    """INSERT INTO device_lines (id, device_pk, line, running_version, running_model_sha256, reported_version,
                                 drift, drift_detail)
       SELECT g, g, 'road-signs', 1 + g %% 5, md5(g::text), 1 + g %% 5 + CASE WHEN g %% 1000 = 0 THEN 1 ELSE 0 END,
              g %% 1000 = 0, CASE WHEN g %% 1000 = 0 THEN 'reported a newer version than it polls with' END
       FROM generate_series(1, %(n)s) g""",
    "SELECT setval(pg_get_serial_sequence('device_lines', 'id'), %(n)s)",
    """INSERT INTO device_updates (id, device_pk, rollout_id, rollout_key, version_id, target_version, codec,
                                   package_sha256, rollback, manifest_version, envelope, expires_at, state,
                                   bytes_reported, created_at, updated_at)
       SELECT g, 1 + (g - 1) %% %(n)s, NULL, 0, %(version_id)s, 1, 'lossless', md5(g::text) || md5(g::text), false, 0,
              '{}', now() + interval '1 day',
              CASE WHEN g %% 100 = 0 THEN 'downloading' WHEN g %% 100 = 1 THEN 'failed' ELSE 'installed' END, 0,
              now() - interval '2 days', now() - interval '1 day'
       FROM generate_series(1, %(updates)s) g""",
    "SELECT setval(pg_get_serial_sequence('device_updates', 'id'), %(updates)s)",
]


def seed(database_url: str, devices: int, updates: int, version_id: int) -> float:
    """Seed the cars with SQL and analyse; returns the seconds it took."""
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        for sql in SEED:
            conn.execute(sql, {"n": devices, "updates": updates, "version_id": version_id})
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def timed(client: httpx.Client, path: str, params: dict[str, Any] | None, repeat: int) -> dict[str, Any]:
    r = client.get(path, params=params)  # warm-up (and a check that it answers)
    assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text[:300]}"
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        r = client.get(path, params=params)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200
    rows = len(r.json()) if path.startswith("/api/") else None
    return {"path": path, "params": params or {}, "rows": rows, "median_ms": round(statistics.median(times), 1),
            "max_ms": round(max(times), 1), "bytes": len(r.content)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--updates", type=int, default=None, help="update rows (default: as many as devices)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    updates = args.updates if args.updates is not None else args.devices
    deep = f"car-{int(args.devices * 0.9):07d}"
    with tempfile.TemporaryDirectory() as tmp, \
            run_in_thread(Path(tmp), database=os.environ.get("DATABASE_URL") or DEFAULT_PG) as srv:
        version_id = _version_id(srv)
        seconds = seed(srv.database_url, args.devices, updates, version_id)
        print(f"seeded {args.devices:,} cars and {updates:,} update rows in {seconds:.1f} s", file=sys.stderr)
        api = srv.admin(timeout=120)
        dash = httpx.Client(base_url=srv.url, timeout=120)
        r = dash.post("/dashboard/login", data={"token": srv.admin_token})
        assert r.status_code in (200, 303), r.text
        results = [
            timed(api, "/api/v1/devices", {"limit": 100}, args.repeat),
            timed(api, "/api/v1/devices", {"limit": 100, "tag": "region=eu", "line": "road-signs", "version": 3},
                  args.repeat),
            timed(api, "/api/v1/devices", {"limit": 100, "cursor": encode_cursor(deep)}, args.repeat),
            timed(api, "/api/v1/devices", {"limit": 100, "state": "failed"}, args.repeat),
            timed(api, "/api/v1/devices", {"limit": 100, "q": "car-09999"}, args.repeat),
            timed(api, "/api/v1/devices", {"limit": 100, "drift": "true"}, args.repeat),
            timed(dash, "/dashboard/fleet", None, args.repeat),
            timed(dash, "/dashboard/fleet", {"tag": "region=eu", "line": "road-signs", "version": "3"}, args.repeat),
            timed(dash, "/dashboard/fleet", {"after": deep}, args.repeat),
        ]
        dash.close()
    for res in results:
        res["target_ms"], res["ok"] = TARGET_MS, res["median_ms"] <= TARGET_MS
        res["devices"], res["updates"] = args.devices, updates
        if args.json:
            print(json.dumps(res, sort_keys=True))
        else:
            query = "&".join(f"{k}={v}" for k, v in res["params"].items())
            print(f"{res['path'] + ('?' + query if query else ''):72s} median {res['median_ms']:7.1f} ms  "
                  f"max {res['max_ms']:7.1f} ms  {'OK' if res['ok'] else 'OVER'} (target {TARGET_MS:.0f} ms)")
    return 0 if all(r["ok"] for r in results) else 1


def _version_id(srv: Any) -> int:
    """Publish the shipped v1 (lossless only: quick) and return its database id (update rows point at it)."""
    from sqlalchemy import select

    from server.orm import Version

    srv.publish(ROOT / "models" / "zoo" / "v1.onnx", codecs="lossless")
    with srv.ctx.db.read_scope() as session:
        vid = session.scalar(select(Version.id))
    assert vid is not None
    return int(vid)


if __name__ == "__main__":
    raise SystemExit(main())
