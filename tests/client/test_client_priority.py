"""The agent's update threads run at a lower CPU priority than the thread that calls ``predict``."""

from __future__ import annotations

import os
import threading

from client.priority import update_executor


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_update_threads_are_niced_and_the_caller_is_not() -> None:
    before = _own_nice()
    ex = update_executor(7)
    nices = {ex.submit(_own_nice).result() for _ in range(4)}
    assert nices == {min(19, before + 7)}
    assert _own_nice() == before  # the calling (camera) thread keeps its priority
    assert update_executor(7) is ex  # one executor per process and nice value


def test_zero_nice_leaves_the_threads_alone() -> None:
    before = _own_nice()
    assert update_executor(0).submit(_own_nice).result() == before
