"""The decode worker: a real child process patching and decoding real packages of the shipped models.

What must hold: the child gives back exactly what the codec gives in process,
its errors arrive as the same ``models.errors`` classes (so the agent's
fallbacks still fire), a child that vanishes is replaced without failing the
update, and a child never outlives its agent, even one killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_factories import zoo_model

from client.decode_worker import DecodeWorker, InProcessDecoder
from models import codec
from models.errors import BaseMismatch, CorruptPackage, DeltaError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def packages() -> dict[int, bytes]:
    return {v: codec.pack(zoo_model(v), "lossless").package for v in (1, 2, 3)}


@pytest.fixture
def worker() -> Iterator[DecodeWorker]:
    w = DecodeWorker(idle_s=30.0)
    yield w
    w.close()


def wait_gone(pid: int, within_s: float = 20.0) -> bool:
    """True once ``pid`` no longer exists (reaped or zombie-free); polls, asserts nothing about speed."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _is_zombie(pid):
            return True
        time.sleep(0.05)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def test_child_patches_and_decodes_to_the_same_bytes_as_the_codec_in_process(
        worker: DecodeWorker, packages: dict[int, bytes]) -> None:
    delta = codec.diff(packages[1], packages[2])
    assert worker.patch(packages[1], delta) == packages[2]
    assert worker.unpack(packages[2]) == codec.unpack(packages[2]) == InProcessDecoder().unpack(packages[2])
    assert worker.pid is not None and worker.pid != os.getpid()
    assert worker.starts == 1  # one child served both calls


def test_child_errors_arrive_as_the_codec_error_classes_the_agent_decides_on(
        worker: DecodeWorker, packages: dict[int, bytes]) -> None:
    delta = codec.diff(packages[1], packages[2])
    with pytest.raises(BaseMismatch, match="fetch the full package"):
        worker.patch(packages[3], delta)  # a delta made for another base
    with pytest.raises(DeltaError):
        worker.patch(packages[1], delta[: len(delta) // 2])
    with pytest.raises(CorruptPackage, match="not an OTA package"):
        worker.unpack(b"\x08\x07 not a package")
    assert worker.unpack(packages[1]) == codec.unpack(packages[1])  # the child survived its errors
    assert worker.starts == 1


def test_a_child_killed_from_outside_is_replaced_and_the_call_succeeds(
        worker: DecodeWorker, packages: dict[int, bytes]) -> None:
    worker.start()
    first = worker.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert wait_gone(first)
    assert worker.unpack(packages[2]) == codec.unpack(packages[2])
    assert worker.starts == 2 and worker.pid not in (None, first)


def test_an_idle_child_leaves_and_the_next_call_starts_a_fresh_one(packages: dict[int, bytes]) -> None:
    w = DecodeWorker(idle_s=0.5)
    try:
        assert w.unpack(packages[1]) == codec.unpack(packages[1])
        first = w.pid
        assert first is not None
        assert wait_gone(first), "an idle decode worker kept running"
        assert w.pid is None
        assert w.unpack(packages[2]) == codec.unpack(packages[2])
        assert w.starts == 2
    finally:
        w.close()


def test_bad_idle_time_is_refused() -> None:
    with pytest.raises(ValueError, match="idle_s must be > 0"):
        DecodeWorker(idle_s=0)


def test_the_child_does_not_outlive_an_agent_process_killed_with_sigkill() -> None:
    code = ("import sys; from client.decode_worker import DecodeWorker; w = DecodeWorker(idle_s=600); "
            "w.start(); print(w.pid, flush=True); sys.stdin.read()")
    with subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as parent:
        try:
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
            os.kill(child, 0)  # it is running
        finally:
            parent.kill()
            parent.wait()
    assert wait_gone(child), "the decode worker outlived its SIGKILLed agent"
