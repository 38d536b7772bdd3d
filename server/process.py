"""The registry as a child process: ``ota serve`` on a free port, waited on until ``/readyz`` answers.

``ota demo``, the tests that need a real ``ota serve`` (several uvicorn workers, SIGKILL, TLS, the
CLI's own flags) and the benchmarks all start the registry the way an operator does and wait for
it; this module is the one place that does it, so a change to how the server starts or says it is
ready is made once.

- ``free_port()``      a port nobody listens on right now.
- ``wait_ready()``     poll ``/readyz`` until 200; fail fast, with the log's tail, if the process exits.
- ``ServedRegistry``   one ``ota serve`` child in its own process group: ``start``, ``stop`` (SIGTERM),
                       ``kill`` (SIGKILL of the supervisor and its workers, as a power cut would),
                       ``restart`` on the same port and data.
- ``serve()``          the context manager around it.

Only the standard library and httpx: the module starts the server, it does not import it.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

# The environment tests and benchmarks start it with: codecs that pack in well under a second and
# background periods short enough to wait out (the defaults are the production ones).
FAST_ENV = {"OTA_DEFAULT_CODECS": "lossless", "OTA_ROLLOUT_TICK_S": "0.5", "OTA_LAST_SEEN_FLUSH_S": "0.5"}


class ServerDidNotStart(RuntimeError):
    """``ota serve`` exited, or did not answer ``/readyz`` in time; the message ends with its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` at the time of the call (another process may still take it later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already accepts connections on ``host:port``."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def wait_ready(url: str, proc: subprocess.Popen[Any], timeout_s: float, log: Callable[[], str] = lambda: "",
               name: str = "ota serve", verify: ssl.SSLContext | bool = True) -> None:
    """Return once ``url``/readyz answers 200; raise as soon as ``proc`` has exited instead of waiting out
    ``timeout_s``.  ``log`` gives the server's output so that the error shows why it never came up
    (keep that output in a file: reading a pipe of a live process would block here).

    Raises:
        ServerDidNotStart: the process exited, or was not ready within ``timeout_s``; the message ends
            with the last 2,000 characters of ``log()``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise ServerDidNotStart(f"{name} exited with status {proc.returncode}; its log ends:\n{log()[-2000:]}")
        if time.monotonic() > deadline:
            raise ServerDidNotStart(f"{name} was not ready after {timeout_s:.0f} s; its log ends:\n{log()[-2000:]}")
        time.sleep(0.1)


def child_env(extra: Mapping[str, str] | None = None, *, inherit_ota: bool = False) -> dict[str, str]:
    """This process's environment for an ``ota serve`` child: development mode plus ``extra``.

    ``DATABASE_URL`` is always dropped (the child uses SQLite in its data dir unless ``extra`` or the
    ``--database-url`` flag says otherwise), and so are the caller's ``OTA_*`` settings unless
    ``inherit_ota``: a test must not pick up whatever the shell that runs it exported.
    """
    env = {k: v for k, v in os.environ.items()
           if k != "DATABASE_URL" and (inherit_ota or not k.startswith("OTA_"))}
    env["OTA_ENVIRONMENT"] = "development"
    env.update(extra or {})
    return env


@dataclass
class ServedRegistry:
    """One ``ota serve`` child process on ``port``, with its data (and SQLite file) in ``data_dir``."""

    data_dir: Path
    port: int
    workers: int = 1
    database_url: str | None = None
    env: dict[str, str] = field(default_factory=child_env)
    log_path: Path | None = None  # default: serve-PORT.log beside the data dir
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the registry is not running"
        return self.proc.pid

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def enrollment_token(self) -> str:
        return (self.data_dir / "enrollment-token").read_text().strip()

    @property
    def log_file(self) -> Path:
        return self.log_path or self.data_dir.parent / f"serve-{self.port}.log"

    def start(self, timeout_s: float = 60.0) -> None:
        """Start ``ota serve`` (it migrates, then forks its workers) and wait until it is ready.

        Raises:
            ServerDidNotStart: it exited or was not ready within ``timeout_s`` (the child is stopped).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "cli.main", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
               "--workers", str(self.workers), "--log-level", "warning"]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        self._log = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop() / kill()
        # Its own process group: stop() and kill() reach the supervisor and every worker at once.
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            wait_ready(self.url, self.proc, timeout_s, log=self.log_text)
        except ServerDidNotStart:
            self.stop()
            raise

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def worker_pids(self) -> list[int]:
        import psutil  # a dev dependency: only tests and benchmarks look at the workers

        return [c.pid for c in psutil.Process(self.pid).children(recursive=True)]

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker at once (no shutdown hooks run)."""
        self._signal_group(signal.SIGKILL, wait_s=15)

    def stop(self) -> None:
        """SIGTERM the supervisor and its workers (a graceful shutdown); SIGKILL after 20 s."""
        self._signal_group(signal.SIGTERM, wait_s=20)

    def restart(self, timeout_s: float = 60.0) -> None:
        self.start(timeout_s)

    def _signal_group(self, signum: int, wait_s: float) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signum)
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def admin(self, timeout: float = 120.0) -> httpx.Client:
        """An httpx client that sends the admin token (the caller closes it)."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.admin_token}"},
                            timeout=timeout)


@contextmanager
def serve(data_dir: Path, *, workers: int = 1, port: int | None = None, database_url: str | None = None,
          env: dict[str, str] | None = None, log_path: Path | None = None,
          startup_timeout_s: float = 60.0) -> Iterator[ServedRegistry]:
    """``ota serve --workers N`` on ``port`` (a free one if None), stopped on exit.

    ``env`` is the child's whole environment (default: ``child_env()``).

    Raises:
        ServerDidNotStart: the port is taken, or the server exited or was not ready in time.
    """
    port = port or free_port()
    if port_taken(port):
        raise ServerDidNotStart(f"port {port} is already in use; pick another")
    reg = ServedRegistry(Path(data_dir).resolve(), port, workers, database_url,
                         env if env is not None else child_env(), log_path)
    reg.start(startup_timeout_s)
    try:
        yield reg
    finally:
        reg.stop()
