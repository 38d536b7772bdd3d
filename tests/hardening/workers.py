"""``ota serve`` as a real subprocess (optionally several uvicorn workers) for the hardening tests and bench/faults.py, bench/load.py.

``serve(data_dir, workers=2)`` starts the registry exactly as an operator
would (the CLI migrates, then uvicorn forks its workers), on a free port,
against SQLite in the data dir or, when ``DATABASE_URL`` is set, against a
throwaway PostgreSQL database.  ``ServedRegistry.kill()`` sends SIGKILL to
the whole process group (the supervisor and its workers), as a power cut or
the OOM killer would; ``restart()`` starts it again on the same port and data.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.live_server import temporary_database

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen[Any], timeout_s: float, log: Callable[[], str] = lambda: "",
               name: str = "ota serve") -> None:
    """Return once ``url``/readyz answers 200; raise as soon as ``proc`` has exited instead of waiting out
    ``timeout_s``.  ``log`` gives the server's output so that the error shows why it never came up
    (keep that output in a file: reading a pipe of a live process would block here).

    Raises:
        RuntimeError: the process exited, or was not ready within ``timeout_s``; the message ends with
            the last 2,000 characters of ``log()``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {log()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {timeout_s} s: {log()[-2000:]}")
        time.sleep(0.1)


@dataclass
class ServedRegistry:
    data_dir: Path
    port: int
    workers: int
    database_url: str | None
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def enrollment_token(self) -> str:
        return (self.data_dir / "enrollment-token").read_text().strip()

    def start(self, timeout_s: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_") and k != "DATABASE_URL"}
        env.update({"OTA_ENVIRONMENT": "development", "OTA_DEFAULT_CODECS": "lossless",
                    "OTA_ROLLOUT_TICK_S": "0.5", "OTA_LAST_SEEN_FLUSH_S": "0.5", **self.env_extra})
        cmd = [sys.executable, "-m", "cli.main", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
               "--workers", str(self.workers), "--log-level", "warning"]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        self.log = open(self.data_dir.parent / f"serve-{self.port}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_ready(self.url, self.proc, timeout_s, log=self.log_text)

    def log_text(self) -> str:
        path = self.data_dir.parent / f"serve-{self.port}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def worker_pids(self) -> list[int]:
        import psutil

        assert self.proc is not None
        return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker at once (no shutdown hooks run)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=15)
        self.proc = None
        self.log.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        self.proc = None
        self.log.close()

    def restart(self) -> None:
        self.start()

    def admin(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.admin_token}"},
                            timeout=timeout)


@contextmanager
def serve(data_dir: Path, workers: int = 2, env: dict[str, str] | None = None) -> Iterator[ServedRegistry]:
    """``ota serve --workers N`` on a free port; stopped (and its PostgreSQL database dropped) on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with temporary_database() as pg_url:
        reg = ServedRegistry(data_dir, free_port(), workers, pg_url, dict(env or {}))
        reg.start()
        try:
            yield reg
        finally:
            reg.stop()
