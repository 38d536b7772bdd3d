"""Power cuts: a real ``ota agent`` process, SIGKILLed at random points of downloads and installs.

Each kill is followed by checks on what the car left on disk (the journal
names a slot whose files hash to what it promises) and by a restart that must
boot that verified model.  The server's transfer log shows every resumed
request starting exactly where the car's partial file ended, so only the
missing bytes cross the link.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agent_factories import zoo_model
from test_client_registry import release, transfers

from tests.support.live_server import LiveServer

ROOT = Path(__file__).resolve().parents[2]


class AgentProcess:
    """``ota agent`` in its own process; its log lines are read by a thread so waits can time out."""

    def __init__(self, server: LiveServer, state: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "cli.main", "agent", "--server", server.url, "--device-id", "car-1",
               "--root-key", str(server.data_dir / "root.pub"), "--state-dir", str(state), "--poll-interval", "0.3", *extra]
        # The token travels in the environment, not argv, where every user's `ps` would show it.
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1",
                                          "OTA_ENROLL_TOKEN": server.enrollment_token})
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.01, left))
            except queue.Empty:
                line = None
            if line is not None:
                self.log.append(line)
                if m := re.search(pattern, line):
                    return m
            if left <= 0 or (line is None and self.proc.poll() is not None):
                raise AssertionError(f"agent never logged {pattern!r}; log:\n{''.join(self.log[-30:])}")

    def drained(self) -> list[str]:
        """Every line logged so far (call after ``kill``)."""
        while not self.lines.empty():
            self.log.append(self.lines.get())
        return self.log

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def sha_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def assert_boots_verified(state: Path) -> int:
    """What a power cut left: a readable journal whose active slot's files hash as promised."""
    j = json.loads((state / "journal.json").read_text())
    active = j["active"]
    assert active is not None, "a car that had a model lost it"
    slot = state / "slots" / active["slot"]
    assert sha_file(slot / "package") == active["package_sha256"]
    assert sha_file(slot / "model.onnx") == active["model_sha256"]
    return int(active["version"])


def requests_in(agent: AgentProcess) -> list[int]:
    """Range starts of the artifact requests a (killed) agent process logged."""
    return [int(m.group(1)) for line in agent.drained() if (m := re.search(r"request \w+ from byte (\d+) ", line))]


def install_first(server: LiveServer, state: Path) -> None:
    release(server, zoo_model(1))
    agent = AgentProcess(server, state)
    try:
        agent.expect(r"installed v1 ")
    finally:
        agent.kill()


def wait_transfers(server: LiveServer, target: int, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        rows = [t for t in transfers(server, "car-1") if t["target_version"] == target]
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@pytest.mark.slow
def test_sigkill_at_random_points_of_a_download_resumes_fetching_only_the_missing_bytes(
        live_server: LiveServer, tmp_path: Path) -> None:
    rng = random.Random(1234)
    state = tmp_path / "car"
    install_first(live_server, state)
    target = release(live_server, zoo_model(5))  # retrained from scratch: the delta is as big as the package
    rate = 1_200_000  # bytes/s: the ~2 MB artifact takes ~2 s, long enough to cut it eight times
    starts = []  # bytes on the car's disk when each process started its download
    requested: list[int] = []  # every Range start the car asked for, as its log says
    kills = 0
    artifact: Path | None = None
    for _ in range(8):
        agent = AgentProcess(live_server, state, "--max-rate", str(rate))
        try:
            agent.expect(r"booted v1 ")
            m = agent.expect(r"download ([0-9a-f]{12}) \((\d+) bytes\)")
            parts = list((state / "downloads").glob(f"{m.group(1)}*.part"))
            starts.append(parts[0].stat().st_size if parts else 0)
            time.sleep(rng.uniform(0.02, 0.15))
        finally:
            agent.kill()
        kills += 1
        run_requests = requests_in(agent)  # none if the cut came before the request left
        assert run_requests[:1] in ([], [starts[-1]])  # a restart asks from where its file ends
        requested += run_requests
        assert assert_boots_verified(state) == 1  # still on v1, verified
        artifact = next((p for p in (state / "downloads").iterdir() if not p.name.endswith(".part")), None)
        assert artifact is None, "the download finished before the kill: lower the rate"
    agent = AgentProcess(live_server, state, "--max-rate", str(rate))
    try:
        agent.expect(r"booted v1 ")
        m = agent.expect(r"download [0-9a-f]{12} done: (\d+) bytes on the wire, resumed from (\d+)")
        starts.append(int(m.group(2)))
        agent.expect(rf"installed v{target['version']} ", timeout=30)
    finally:
        agent.kill()
    run_requests = requests_in(agent)
    assert run_requests[0] == starts[-1]
    requested += run_requests
    assert assert_boots_verified(state) == target["version"]
    assert kills == 8

    # Every request the server saw is one the car made, and each process began exactly where its partial
    # file ended: only missing bytes were asked for.  (A process may also resume itself after a stalled read.)
    rows = wait_transfers(live_server, target["version"], len(requested))
    assert sorted(r["range_start"] for r in rows) == sorted(requested)
    size = rows[0]["artifact_bytes"]
    assert set(starts) <= set(requested)
    assert len(set(starts)) > 5 and starts == sorted(starts)  # the cuts landed at different, advancing points
    # The last run read exactly the rest.  (The server counts what it wrote into its socket; on loopback the
    # kernel buffers take the whole remainder at once, so after a kill that over-counts what the car got.)
    assert int(m.group(1)) == size - starts[-1]


def log_time(m: re.Match[str]) -> float:
    """Seconds-of-day from the agent's log timestamp (``HH:MM:SS,mmm``) on a matched line."""
    h, mi, sec = re.search(r"(\d\d):(\d\d):(\d\d),(\d{3})", m.string).groups()[:3]  # type: ignore[union-attr]
    ms = re.search(r",(\d{3}) ", m.string).group(1)  # type: ignore[union-attr]
    return int(h) * 3600 + int(mi) * 60 + int(sec) + int(ms) / 1000


@pytest.mark.slow
def test_sigkill_at_random_points_of_an_install_always_restarts_on_a_verified_model(
        live_server: LiveServer, tmp_path: Path) -> None:
    rng = random.Random(99)
    state = tmp_path / "car"
    install_first(live_server, state)
    kills = 0
    install_s = 0.15  # learnt from each completed install: cuts fall uniformly over a whole install
    landed_after_commit = 0
    for version in (2, 3, 4):
        release(live_server, zoo_model(version))
        for _ in range(4):
            agent = AgentProcess(live_server, state)
            try:
                m = agent.expect(r"booted v(\d+) ")
                if int(m.group(1)) == version:
                    break  # the last cut came after the commit: the car already runs it
                begin = agent.expect(rf"installing v{version}: decode")
                time.sleep(rng.uniform(0.0, install_s))
            finally:
                agent.kill()
            kills += 1
            end = next((m for line in agent.drained() if (m := re.search(rf"installed v{version} ", line))), None)
            if end is not None:  # the cut came after the commit: learn how long an install takes
                install_s = max(0.02, 0.9 * (log_time(end) - log_time(begin)))
            running = assert_boots_verified(state)
            assert running in (version - 1, version)
            landed_after_commit += running == version
        agent = AgentProcess(live_server, state)
        try:
            m = agent.expect(r"booted v(\d+) ")
            if int(m.group(1)) != version:
                begin = agent.expect(rf"installing v{version}: decode")
                end = agent.expect(rf"installed v{version} ", timeout=30)
                install_s = max(0.05, log_time(end) - log_time(begin))
        finally:
            agent.kill()
        assert assert_boots_verified(state) == version
        rows = wait_transfers(live_server, version, 1)
        assert len(rows) == 1, "a restart fetched the artifact again"
    assert kills >= 6, f"only {kills} cuts ({landed_after_commit} landed after the commit)"
    final = AgentProcess(live_server, state)
    try:
        final.expect(r"booted v4 ")
    finally:
        final.kill()
