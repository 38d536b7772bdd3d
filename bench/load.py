"""Poll-path load benchmark: how many car polls per second the registry carries.

    .venv/bin/python bench/load.py                      # SQLite x1, PostgreSQL x1, PostgreSQL x2
    .venv/bin/python bench/load.py --json               # one JSON object per configuration
    .venv/bin/python bench/load.py --configs sqlite:1 --devices 500 --duration 5

For each configuration it starts the real server (``ota serve``, N uvicorn
workers) on a fresh SQLite file or a fresh PostgreSQL database, publishes the
shipped v1, enrolls ``--devices`` cars over HTTP, and then drives signed-in
polls from a second process on loopback with ``wrk`` (C, so the load
generator does not eat the CPU it is measuring).  Each request is a different
device; 90% of them already run v1 (empty offer), 10% have no model and get a
signed offer, as in a fleet between rollouts.  Every device polls once before
the measured run (a steady-state fleet has polled before; those first polls
write the running version and sign the offers).  It reports polls/s, p50/p99
latency (wrk's HdrHistogram) and the server's CPU use.  The target on this
2-core machine is >= 2,000 polls/s at p99 <= 50 ms (a 120,000-car fleet at
60 s polls).  Needs ``wrk`` (Debian package; ``make bench-tools``) and, for
the PostgreSQL configurations, a server at --pg-url.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "models" / "zoo"
TARGET_POLLS_PER_S = 2000
TARGET_P99_MS = 50.0

LUA = r"""
local tokens = {}
local bodies = {}
local n = 0
local i = 0
for line in io.lines("%(requests)s") do
  local tab = line:find("\t")
  n = n + 1
  tokens[n] = line:sub(1, tab - 1)
  bodies[n] = line:sub(tab + 1)
end
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("start", thread_count * 7919)
end
function init(args)
  i = start %% n
end
request = function()
  i = i %% n + 1
  return wrk.format("POST", "/api/v1/device/poll",
    {["Authorization"] = "Bearer " .. tokens[i], ["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("WRKJSON {\"requests\": %%d, \"duration_us\": %%d, \"errors_status\": %%d, " ..
    "\"errors_connect\": %%d, \"errors_read\": %%d, \"errors_timeout\": %%d, " ..
    "\"p50_us\": %%d, \"p90_us\": %%d, \"p99_us\": %%d, \"max_us\": %%d}\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_database(pg_url: str) -> tuple[str, str]:
    import psycopg

    name = f"ota_load_{uuid.uuid4().hex[:10]}"
    libpq = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, pg_url.rpartition("/")[0] + "/" + name


def _drop_pg_database(pg_url: str, name: str) -> None:
    import psycopg

    libpq = pg_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def _enroll(url: str, enroll_token: str, devices: int) -> list[str]:
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> str:
            async with sem:
                r = await client.post("/api/v1/devices/enroll", headers={"Authorization": f"Bearer {enroll_token}"},
                                      json={"device_id": f"load-{i:06d}", "tags": {"network": "lte"}})
                r.raise_for_status()
                return r.json()["device_token"]

        return list(await asyncio.gather(*(one(i) for i in range(devices))))


async def _poll_each(url: str, lines: list[str]) -> None:
    """One poll per device (token TAB body lines), 16 at a time."""
    async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=16), timeout=60) as client:
        sem = asyncio.Semaphore(16)

        async def one(line: str) -> None:
            token, _, body = line.partition("\t")
            async with sem:
                r = await client.post("/api/v1/device/poll", content=body,
                                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
                r.raise_for_status()

        await asyncio.gather(*(one(line) for line in lines))


def run_config(backend: str, workers: int, args: argparse.Namespace) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix=f"ota-load-{backend}-"))
    env = {**os.environ, "OTA_DATA_DIR": str(data_dir), "OTA_DEFAULT_CODECS": "lossless"}
    env.pop("DATABASE_URL", None)
    pg_name = None
    if backend == "postgres":
        pg_name, env["OTA_DATABASE_URL"] = _pg_database(args.pg_url)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    ota = str(Path(sys.executable).with_name("ota"))
    server = subprocess.Popen([ota, "serve", "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {server.stderr.read().decode() if server.stderr else ''}")
            time.sleep(0.2)
        admin = (data_dir / "admin-token").read_text().strip()
        enroll = (data_dir / "enrollment-token").read_text().strip()
        r = httpx.post(f"{url}/api/v1/lines/road-signs/versions", headers={"Authorization": f"Bearer {admin}"},
                       files={"file": ("v1.onnx", (ZOO / "v1.onnx").read_bytes())}, timeout=120)
        r.raise_for_status()
        package = r.json()["packages"]["lossless"]
        tokens = asyncio.run(_enroll(url, enroll, args.devices))
        lines = []
        for i, token in enumerate(tokens):
            if i % 10 == 0:  # no model yet: gets a signed offer
                body = {"line": "road-signs", "current_version": 0, "current_model_sha256": None,
                        "current_package_sha256": None, "agent_state": "idle"}
            else:
                body = {"line": "road-signs", "current_version": 1, "current_model_sha256": package["model_sha256"],
                        "current_package_sha256": package["sha256"], "agent_state": "idle"}
            lines.append(f"{token}\t{json.dumps(body, separators=(',', ':'))}")
        work = Path(tempfile.mkdtemp(prefix="ota-wrk-"))
        (work / "requests.tsv").write_text("\n".join(lines) + "\n")
        (work / "poll.lua").write_text(LUA % {"requests": work / "requests.tsv"})
        # warm-up: every device polls once (a fleet in steady state has polled before: its first poll's
        # writes, such as the running version and the 10% first offers, are not what we measure), then
        # imports, caches and connection pools under wrk, then the measured run
        asyncio.run(_poll_each(url, lines))
        subprocess.run(["wrk", "-t1", "-c8", "-d2s", "-s", str(work / "poll.lua"), url],
                       capture_output=True, check=True)
        proc = psutil.Process(server.pid)
        cpu0, t0 = _cpu_seconds(proc), time.monotonic()
        out = subprocess.run(["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
                              "--timeout", "5s", "-s", str(work / "poll.lua"), url],
                             capture_output=True, text=True, check=True).stdout
        cpu1, t1 = _cpu_seconds(proc), time.monotonic()
        shutil.rmtree(work, ignore_errors=True)
        stats = json.loads(next(line for line in out.splitlines() if line.startswith("WRKJSON "))[8:])
        errors = stats["errors_status"] + stats["errors_connect"] + stats["errors_read"] + stats["errors_timeout"]
        return {
            "backend": backend,
            "workers": workers,
            "devices": args.devices,
            "connections": args.connections,
            "polls_per_s": round(stats["requests"] / (stats["duration_us"] / 1e6), 1),
            "p50_ms": round(stats["p50_us"] / 1000, 2),
            "p99_ms": round(stats["p99_us"] / 1000, 2),
            "max_ms": round(stats["max_us"] / 1000, 2),
            "errors": errors,
            "server_cpu_cores": round((cpu1 - cpu0) / (t1 - t0), 2),
            "target": {"polls_per_s": TARGET_POLLS_PER_S, "p99_ms": TARGET_P99_MS},
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        if pg_name:
            _drop_pg_database(args.pg_url, pg_name)
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="sqlite:1,postgres:1,postgres:2",
                    help="comma list of backend:workers (backend sqlite or postgres)")
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=10, help="seconds of measured load per configuration")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (the server needs the other core)")
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--json", action="store_true", help="print one JSON object per configuration")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("bench/load.py needs wrk: run `make bench-tools` (apt-get install wrk)", file=sys.stderr)
        return 2
    results = []
    for spec in args.configs.split(","):
        backend, _, workers = spec.partition(":")
        if backend not in ("sqlite", "postgres"):
            print(f"unknown backend {backend!r}; use sqlite or postgres", file=sys.stderr)
            return 2
        result = run_config(backend, int(workers or 1), args)
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
    if not args.json:
        print(f"{'backend':<10}{'workers':>8}{'polls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'server CPU':>12}"
              f"   vs target ({TARGET_POLLS_PER_S}/s at p99 <= {TARGET_P99_MS:.0f} ms)")
        for r in results:
            verdict = "meets" if r["polls_per_s"] >= TARGET_POLLS_PER_S and r["p99_ms"] <= TARGET_P99_MS else "misses"
            print(f"{r['backend']:<10}{r['workers']:>8}{r['polls_per_s']:>10.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                  f"{r['errors']:>8}{r['server_cpu_cores']:>10.2f} c   {verdict} "
                  f"({r['polls_per_s'] / TARGET_POLLS_PER_S:.2f}x rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
