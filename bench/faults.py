"""Fault runs: the registry and the car agent under kills, corruption, outages and full disks (issue 8, item 4).

    .venv/bin/python bench/faults.py                   # every fault, a table of figures
    .venv/bin/python bench/faults.py --json            # one JSON object per fault
    .venv/bin/python bench/faults.py --only agent_kills --agent-kills 100

Everything is real: ``ota serve`` subprocesses (2 uvicorn workers) or the
in-process test registry, ``ota agent`` subprocesses, real SQLite/PostgreSQL,
real tmpfs mounts for the full disks (needs root, as in CI here).  The
faults are the outside world: SIGKILL, a link that flips bits or cuts
bodies short, PostgreSQL refusing connections, a lock held on the SQLite
file, a filesystem with no space left.

Faults and what each row says:
  server_kill    SIGKILL of the server (supervisor and workers) mid-rollout while cars poll and
                 download; restarted on the same data: rows lost, rollout state kept, rollout completes.
  agent_kills    N SIGKILLs of ``ota agent`` at random points of downloads and installs: corrupt
                 installs found on disk, requests that did not resume where the partial file ended.
  transit        bit flips and truncations of artifact bodies on the link: how many were caught
                 (never installed) and how many installs ended on the right model.
  db_outage      PostgreSQL refusing connections for a few seconds (and a SQLite lock held as long):
                 what polls got meanwhile (503, never another 5xx) and how soon they recovered.
  disk_full      server: publishing onto a full data disk; car: downloading onto a full flash: the
                 error each side gave, and whether anything half-written was left behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client import Agent, AgentConfig  # noqa: E402
from server.inprocess import LiveServer, run_in_thread  # noqa: E402
from server.process import FAST_ENV, ServedRegistry, child_env, free_port  # noqa: E402
from server.process import serve as serve_process  # noqa: E402
from server.scratchdb import temporary_database  # noqa: E402

ZOO = ROOT / "models" / "zoo"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# The registries of the faults other than db_outage run where the tests do: a throwaway database on the cluster
# at DATABASE_URL when it is set, else SQLite in their data dir.
CLUSTER = os.environ.get("DATABASE_URL")


@contextmanager
def serve(data_dir: Path, workers: int) -> Iterator[ServedRegistry]:
    """``ota serve --workers N`` with the tests' fast settings, on CLUSTER or SQLite."""
    with temporary_database(CLUSTER) as pg_url, serve_process(data_dir, workers=workers, database_url=pg_url,
                                                              env=child_env(FAST_ENV)) as reg:
        yield reg


def run_live_server(data_dir: Path) -> AbstractContextManager[LiveServer]:
    """The registry in a thread of this process (its ``ctx`` is at hand), on CLUSTER or SQLite."""
    return run_in_thread(data_dir, database=CLUSTER)


def model(n: int) -> bytes:
    return (ZOO / f"v{n}.onnx").read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- a protocol-speaking car (plain httpx; fast enough for dozens) ------------------------------------------------

class WireCar:
    def __init__(self, url: str, enrollment_token: str, device_id: str) -> None:
        self.url, self.device_id = url, device_id
        r = httpx.post(f"{url}/api/v1/devices/enroll", json={"device_id": device_id, "tags": {"region": "eu"}},
                       headers={"Authorization": f"Bearer {enrollment_token}"}, timeout=30)
        r.raise_for_status()
        self.token = r.json()["device_token"]
        self.version, self.seq = 0, 0

    def _h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def update(self) -> bool:
        """Poll; if offered, download, verify and report the walk to installed.  True if it installed."""
        r = httpx.post(f"{self.url}/api/v1/device/poll", json={"line": "road-signs", "current_version": self.version},
                       headers=self._h(), timeout=30)
        r.raise_for_status()
        offer = r.json()["offer"]
        if not offer:
            return False
        s = offer["signed"]
        body = httpx.get(self.url + s["package"]["url"], headers=self._h(), timeout=60)
        body.raise_for_status()
        assert sha(body.content) == s["package"]["sha256"], "corrupt artifact"
        for state in ("downloading", "downloaded", "verified", "installed"):
            self.seq += 1
            rep = {"seq": self.seq, "rollout_id": s["rollout_id"], "target_version": s["target_version"],
                   "manifest_version": s["manifest_version"], "state": state, "artifact": "full",
                   "bytes_received": len(body.content)}
            httpx.post(f"{self.url}/api/v1/device/reports", json={"reports": [rep]}, headers=self._h(),
                       timeout=30).raise_for_status()
        self.version = s["target_version"]
        return True


def _every_transfer(url: str, h: dict[str, str]) -> list[dict[str, Any]]:
    """Every transfer record: pages of 10,000, following ``X-Next-Cursor``."""
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 10000}
    while True:
        r = httpx.get(f"{url}/api/v1/accounting/transfers", params=params, headers=h, timeout=30)
        r.raise_for_status()
        rows += r.json()
        if "X-Next-Cursor" not in r.headers:
            return rows
        params["cursor"] = r.headers["X-Next-Cursor"]


def snapshot(url: str, admin: str, rollout: int) -> dict[str, Any]:
    h = {"Authorization": f"Bearer {admin}"}
    ro = httpx.get(f"{url}/api/v1/rollouts/{rollout}", headers=h, timeout=30).json()
    devices = httpx.get(f"{url}/api/v1/devices", params={"limit": 1000}, headers=h, timeout=30).json()  # one page
    transfers = _every_transfer(url, h)
    audit = httpx.get(f"{url}/api/v1/audit", params={"limit": 100000}, headers=h, timeout=30).json()
    installed = sum(st["counts"].get("installed", 0) for st in ro["stages"])
    return {"state": ro["state"], "stage": ro["current_stage"], "installed": installed, "devices": len(devices),
            "transfers": len(transfers), "audit": len(audit)}


def fault_server_kill(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cars_n = args.cars
    with serve(workdir / "server-kill" / "data", workers=2) as reg:
        admin = {"Authorization": f"Bearer {reg.admin_token}"}
        for n in (1, 2):
            httpx.post(f"{reg.url}/api/v1/lines/road-signs/versions", files={"file": ("m.onnx", model(n))},
                       headers=admin, timeout=120).raise_for_status()
        cars = [WireCar(reg.url, reg.enrollment_token, f"car-{i:03d}") for i in range(cars_n)]
        for c in cars:
            c.version = 1
        r = httpx.post(f"{reg.url}/api/v1/rollouts", headers=admin, timeout=30,
                       json={"line": "road-signs", "version": 2, "stages": [{"percent": 50}, {"percent": 100}]})
        r.raise_for_status()
        rollout = r.json()["id"]
        for c in cars:
            c.update()
        busy_errors: Counter[str] = Counter()
        stop = threading.Event()

        def traffic() -> None:  # cars keep polling and downloading while the server dies
            while not stop.is_set():
                for c in cars:
                    try:
                        c.update()
                    except (httpx.HTTPError, AssertionError) as e:
                        busy_errors[type(e).__name__] += 1
                    if stop.is_set():
                        return

        before = snapshot(reg.url, reg.admin_token, rollout)
        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        time.sleep(1.0)
        reg.kill()
        killed_at = time.monotonic()
        time.sleep(0.5)
        reg.restart()
        restart_s = time.monotonic() - killed_at - 0.5
        stop.set()
        t.join(timeout=60)
        after = snapshot(reg.url, reg.admin_token, rollout)
        httpx.post(f"{reg.url}/api/v1/rollouts/{rollout}/advance", headers=admin, timeout=30).raise_for_status()
        advanced = time.monotonic()
        # Cars keep polling, as real ones do: each worker's poll cache (OTA_POLL_CACHE_S) may answer
        # "nothing new" for a few seconds after the advance was committed by the other worker.
        while not all(c.version == 2 for c in cars) and time.monotonic() - advanced < 60:
            for c in cars:
                if c.version != 2:
                    c.update()
            time.sleep(0.2)
        converge_s = time.monotonic() - advanced
        httpx.post(f"{reg.url}/api/v1/rollouts/{rollout}/advance", headers=admin, timeout=30)
        final = snapshot(reg.url, reg.admin_token, rollout)
    lost = {k: before[k] - after[k] for k in ("installed", "devices", "transfers", "audit") if after[k] < before[k]}
    return {"fault": "server_kill", "cars": cars_n, "restart_s": round(restart_s, 2),
            "state_before": f"{before['state']}/stage {before['stage']}",
            "state_after_restart": f"{after['state']}/stage {after['stage']}",
            "installed_before": before["installed"], "installed_after_restart": after["installed"],
            "rows_lost": sum(lost.values()), "client_errors_during_outage": sum(busy_errors.values()),
            "stage2_all_installed_after_s": round(converge_s, 2),
            "final_state": final["state"], "installed_final": final["installed"],
            "ok": not lost and after["state"] == "running" and final["state"] == "completed"
            and final["installed"] == cars_n}


# -- agent kills ----------------------------------------------------------------------------------------------

def _verify_disk(state: Path) -> int | None:
    """The running version a restart would boot, after checking its slot; raises on a corrupt install."""
    jpath = state / "journal.json"
    if not jpath.exists():
        return None
    j = json.loads(jpath.read_text())
    active = j.get("active")
    if not active:
        return None
    slot = state / "slots" / active["slot"]
    if sha((slot / "package").read_bytes()) != active["package_sha256"] or \
            sha((slot / "model.onnx").read_bytes()) != active["model_sha256"]:
        raise AssertionError(f"corrupt install in {slot}")
    return int(active["version"])


def _release(srv: LiveServer, n: int) -> int:
    v = srv.publish(model(n))
    if v["version"] > 1:
        r = srv.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": v["version"]})
        assert r.status_code == 201, r.text
    return v["version"]


def fault_agent_kills(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    kills = corrupt = 0
    resume_mismatch = resumed = 0
    installs = 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with run_live_server(workdir / "agent-kills" / "srv") as srv:
        env["OTA_ENROLL_TOKEN"] = srv.enrollment_token  # in the environment, not argv (`ps` shows argv to all)
        _release(srv, 1)
        size = srv.admin().get("/api/v1/lines/road-signs/versions/1").json()["packages"]["lossless"]["bytes"]
        # Cuts fall uniformly from just after start-up (~1.5 s of imports) to just after a whole download and
        # install, so they hit polls, every part of the download, decode, smoke test and the slot commit.
        window = (1.2, 1.5 + size / args.kill_rate + 1.0)
        car = 0
        while kills < args.agent_kills:
            car += 1
            state = workdir / "agent-kills" / f"car-{car}"
            target = 1
            while kills < args.agent_kills:
                cmd = [sys.executable, "-m", "cli.main", "agent", "--server", srv.url, "--device-id", f"car-{car}",
                       "--root-key", str(srv.data_dir / "root.pub"), "--state-dir", str(state), "--poll-interval", "0.3", "--max-rate", str(args.kill_rate)]
                log = state.with_suffix(".log")
                state.mkdir(parents=True, exist_ok=True)
                part_before = sum(p.stat().st_size for p in (state / "downloads").glob("*.part")) \
                    if (state / "downloads").exists() else 0
                with open(log, "w") as out:
                    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
                    time.sleep(rng.uniform(*window))
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
                kills += 1
                text = log.read_text(errors="replace")
                starts = [int(m.group(1)) for m in re.finditer(r"request \w+ from byte (\d+) ", text)]
                if starts and part_before and starts[0] != part_before:
                    resume_mismatch += 1
                resumed += sum(1 for s in starts if s > 0)
                try:
                    running = _verify_disk(state)
                except AssertionError:
                    corrupt += 1
                    break
                if running == target:
                    installs += 1
                    break
    return {"fault": "agent_kills", "kills": kills, "kill_window_s": [round(w, 1) for w in window], "cars": car,
            "installs_completed": installs,
            "corrupt_installs": corrupt, "resumed_requests": resumed, "resumes_not_at_partial_end": resume_mismatch,
            "ok": corrupt == 0 and resume_mismatch == 0}


# -- corruption in transit ------------------------------------------------------------------------------------

class _Mangled(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, at: int, mode: str) -> None:
        self.inner, self.at, self.mode, self.pos = inner, at, mode, 0

    async def __aiter__(self) -> Iterator[bytes]:  # type: ignore[override]
        async for chunk in self.inner:
            if self.mode == "truncate" and self.pos + len(chunk) > self.at:
                yield chunk[: self.at - self.pos]
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
            if self.mode == "flip" and self.pos <= self.at < self.pos + len(chunk):
                b = bytearray(chunk)
                b[self.at - self.pos] ^= 1 << random.Random(self.at).randrange(8)
                chunk = bytes(b)
            self.pos += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class MangleLink(httpx.AsyncBaseTransport):
    """The first artifact response of each car is flipped or cut at a random byte; later ones pass."""

    def __init__(self, mode: str, rng: random.Random) -> None:
        self.inner, self.mode, self.rng, self.done = httpx.AsyncHTTPTransport(), mode, rng, False
        self.mangled = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        if "/artifacts/" in request.url.path and resp.status_code in (200, 206) and not self.done:
            self.done = True
            self.mangled += 1
            size = int(resp.headers.get("content-length", "1000"))
            at = self.rng.randrange(max(1, size))
            assert isinstance(resp.stream, httpx.AsyncByteStream)
            return httpx.Response(resp.status_code, headers=resp.headers, request=request,
                                  stream=_Mangled(resp.stream, at, self.mode), extensions=resp.extensions)
        return resp

    async def aclose(self) -> None:
        await self.inner.aclose()


def fault_transit(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    out: dict[str, Any] = {"fault": "transit"}
    with run_live_server(workdir / "transit" / "srv") as srv:
        v1 = srv.publish(model(1))["packages"]["lossless"]
        ok = True
        for mode in ("flip", "truncate"):
            caught = installed_right = installed_wrong = 0
            for i in range(args.transit_trials):
                link = MangleLink(mode, rng)
                agent = Agent(AgentConfig(server_url=srv.url, device_id=f"{mode}-{i}",
                                          state_dir=workdir / "transit" / f"{mode}-{i}",
                                          enroll_token=srv.enrollment_token, root_public_key=srv.root_public_key,
                                          backoff_initial_s=0.05),
                              transport=link)
                agent.run_once()
                active = agent.journal.active
                if active is not None and active.package_sha256 == v1["sha256"]:
                    installed_right += 1
                    caught += link.mangled
                elif active is not None:
                    installed_wrong += 1
            out[f"{mode}_trials"] = args.transit_trials
            out[f"{mode}_caught"] = caught
            out[f"{mode}_installed_right"] = installed_right
            out[f"{mode}_installed_corrupt"] = installed_wrong
            ok = ok and installed_wrong == 0 and caught == args.transit_trials
        out["ok"] = ok
    return out


# -- database outage --------------------------------------------------------------------------------------------

def _poll_loop(url: str, token: str, admin: str, stop: threading.Event,
               log: list[tuple[float, int, float, str]], kind: str) -> None:
    """Request ``kind`` in a loop: ``poll``, a steady-state poll (often answered from the poll cache), or ``sql``,
    an inventory read (always SQL).  Each kind has its own thread, so a read stuck behind a database lock does not
    hide what the polls got meanwhile."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                if kind == "poll":
                    code = client.post(f"{url}/api/v1/device/poll", headers={"Authorization": f"Bearer {token}"},
                                       json={"line": "road-signs", "current_version": 1}).status_code
                else:
                    code = client.get(f"{url}/api/v1/devices/car-db",
                                      headers={"Authorization": f"Bearer {admin}"}).status_code
            except httpx.HTTPError:
                code = 0
            log.append((t0, code, time.monotonic() - t0, kind))
            time.sleep(0.05)


def _outage_figures(log: list[tuple[float, int, float, str]], start: float, end: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("poll", "sql"):
        rows = [(t, c, d) for t, c, d, k in log if k == kind]
        back = next((t for t, c, _ in rows if t >= end and c == 200), None)
        out[kind] = {"during": dict(Counter(c for t, c, _ in rows if start <= t < end)),
                     "max_ms": round(max(d for _, _, d in rows) * 1000, 1),
                     "ok_again_after_s": round(back - end, 2) if back is not None else None}
    out["other_5xx"] = sum(1 for _, c, _, _ in log if c >= 500 and c != 503)
    return out


@contextmanager
def _registry_with_car(data: Path, database_url: str | None) -> Iterator[tuple[Any, str]]:
    """``ota serve`` (1 worker) on SQLite in ``data`` or on ``database_url``, v1 published, one car enrolled."""
    data.mkdir(parents=True, exist_ok=True)
    reg = ServedRegistry(data, free_port(), 1, database_url, child_env(FAST_ENV))
    reg.start()
    try:
        httpx.post(f"{reg.url}/api/v1/lines/road-signs/versions", files={"file": ("m.onnx", model(1))},
                   headers={"Authorization": f"Bearer {reg.admin_token}"}, timeout=120).raise_for_status()
        yield reg, WireCar(reg.url, reg.enrollment_token, "car-db").token
    finally:
        reg.stop()


@contextmanager
def _pg_database(base_url: str) -> Iterator[tuple[str, str]]:
    """A throwaway database on the cluster at ``base_url``: (its SQLAlchemy URL, its name)."""
    import psycopg

    libpq = base_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"ota_faults_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base_url.rpartition('/')[0]}/{name}", name
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _outage(reg: Any, token: str, outage_s: float, begin: Callable[[], None], end_: Callable[[], None]) -> dict:
    log: list[tuple[float, int, float, str]] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_poll_loop, args=(reg.url, token, reg.admin_token, stop, log, kind),
                                daemon=True) for kind in ("poll", "sql")]
    for t in threads:
        t.start()
    time.sleep(1.0)
    start = time.monotonic()
    begin()
    time.sleep(outage_s)
    end_()
    end = time.monotonic()
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    return _outage_figures(log, start, end)


def fault_db_outage(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import psycopg

    out: dict[str, Any] = {"fault": "db_outage", "outage_s": args.outage_s}
    libpq = args.pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    # PostgreSQL: the database refuses new connections and the open ones are terminated.
    with _pg_database(args.pg_url) as (url, name), _registry_with_car(workdir / "db-pg" / "data", url) as (reg, tok):
        admin = psycopg.connect(libpq, autocommit=True)

        def cut() -> None:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

        try:
            pg = _outage(reg, tok, args.outage_s, cut,
                         lambda: admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        finally:
            admin.close()
    # SQLite: another process holds the write lock on the file for as long.
    with _registry_with_car(workdir / "db-sqlite" / "data", None) as (reg, tok):
        lock = sqlite3.connect(reg.data_dir / "registry.db", isolation_level=None, timeout=30)
        try:
            lite = _outage(reg, tok, args.outage_s, lambda: lock.execute("BEGIN EXCLUSIVE"),
                           lambda: lock.execute("ROLLBACK"))
        finally:
            lock.close()
    out["postgresql"], out["sqlite_locked"] = pg, lite
    out["ok"] = (pg["other_5xx"] == 0 and lite["other_5xx"] == 0 and pg["sql"]["during"].get(503, 0) > 0
                 and all(f[k]["ok_again_after_s"] is not None for f in (pg, lite) for k in ("poll", "sql")))
    return out


# -- full disks -----------------------------------------------------------------------------------------------

@contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _leftovers(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and (".tmp" in p.name
                                                                                  or p.name.endswith(".part"))]


def fault_disk_full(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"fault": "disk_full"}
    # Server: the data disk has room for v1 and little more; v2 is published onto it.
    with run_live_server(workdir / "disk-probe") as probe:
        probe.publish(model(1))
        used = sum(p.stat().st_size for p in (probe.data_dir / "blobs").rglob("*") if p.is_file())
    disk = workdir / "disk-server"
    with tmpfs(disk, used + 1024 * 1024), run_live_server(disk / "data") as srv:
        srv.publish(model(1))
        versions_before = len(srv.admin().get("/api/v1/lines/road-signs/versions").json())
        blobs_before = srv.ctx.blobs.count()
        r = srv.admin().post("/api/v1/lines/road-signs/versions", files={"file": ("m.onnx", model(5))})
        versions_after = len(srv.admin().get("/api/v1/lines/road-signs/versions").json())
        pkg = srv.admin().get("/api/v1/lines/road-signs/versions/1").json()["packages"]["lossless"]
        still = srv.admin().get(f"/api/v1/artifacts/{pkg['sha256']}")
        out["server_status"] = r.status_code
        out["server_error"] = (r.json().get("detail", "") if r.headers.get("content-type", "").startswith(
            "application/json") else r.text)[:160]
        out["server_half_written"] = _leftovers(disk / "data")
        out["server_versions_added"] = versions_after - versions_before
        out["server_orphan_blobs"] = srv.ctx.blobs.count() - blobs_before  # whole, content-addressed, unreferenced
        out["server_v1_still_served"] = still.status_code == 200 and sha(still.content) == pkg["sha256"]
        server_ok = r.status_code == 507 and not out["server_half_written"] \
            and versions_after == versions_before and out["server_v1_still_served"]
    # Car: the flash has room for v1 installed and part of v2's download.
    with run_live_server(workdir / "disk-car-srv") as srv:
        p1 = srv.publish(model(1))["packages"]["lossless"]
        size = 2 * p1["bytes"] + len(model(1)) + 256 * 1024  # download + slot copy of v1, its model, the journal
        with tmpfs(workdir / "disk-car", size) as flash:
            def run_agent() -> Agent:
                a = Agent(AgentConfig(server_url=srv.url, device_id="car-full", state_dir=flash / "agent",
                                      enroll_token=srv.enrollment_token, root_public_key=srv.root_public_key,
                                      backoff_initial_s=0.05))
                a.run_once()
                return a

            a = run_agent()
            first = a.running_version
            _release(srv, 5)
            a = run_agent()
            failed = [rep for rep in a.journal.outbox if rep["state"] == "failed"]
            detail = srv.admin().get("/api/v1/devices/car-full").json()
            reasons = [u["reason"] for u in detail["updates"] if u["state"] == "failed"]
            out["car_first_install"] = first
            out["car_running_after"] = a.running_version
            out["car_error"] = (reasons or [rep.get("reason") for rep in failed] or [""])[0]
            out["car_boot_verified"] = _verify_disk(flash / "agent")
            car_ok = first == 1 and a.running_version == 1 and out["car_boot_verified"] == 1 and bool(out["car_error"])
    out["ok"] = server_ok and car_ok
    return out


FAULTS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "server_kill": fault_server_kill, "agent_kills": fault_agent_kills, "transit": fault_transit,
    "db_outage": fault_db_outage, "disk_full": fault_disk_full,
}


def _table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        lines.append(f"{row['fault']:<12} {'OK' if row.get('ok') else 'FAIL'}")
        for k, v in row.items():
            if k not in ("fault", "ok"):
                lines.append(f"    {k:<28} {v}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="one JSON object per fault")
    p.add_argument("--only", action="append", choices=sorted(FAULTS), help="run only these faults (repeatable)")
    p.add_argument("--cars", type=int, default=20, help="cars in the server_kill rollout")
    p.add_argument("--agent-kills", type=int, default=30, help="SIGKILLs of ota agent (issue 8 asks for 100)")
    p.add_argument("--kill-rate", type=float, default=800_000, help="agent download rate limit, bytes/s")
    p.add_argument("--transit-trials", type=int, default=50, help="flipped and truncated transfers, each")
    p.add_argument("--outage-s", type=float, default=3.0, help="how long the database is unreachable")
    p.add_argument("--pg-url", default=os.environ.get("DATABASE_URL", PG_DEFAULT))
    p.add_argument("--seed", type=int, default=8)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ota-faults-") as tmp:
        for name in args.only or list(FAULTS):
            t0 = time.monotonic()
            try:
                row = FAULTS[name](args, Path(tmp))
            except Exception as e:  # noqa: BLE001 - one fault's crash is a FAIL row, not the end of the run
                row = {"fault": name, "ok": False, "error": f"{type(e).__name__}: {e}"}
            row["seconds"] = round(time.monotonic() - t0, 1)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(_table(rows))
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
