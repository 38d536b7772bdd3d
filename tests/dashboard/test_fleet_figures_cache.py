"""The Fleet figures cache (server/dashboard/fleetcache.py): fresh figures are reused, stale ones are served while
one background recomputation runs, and period 0 computes every time."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from server.dashboard.fleetcache import FleetFiguresCache, Snapshot


class Counter:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls = 0
        self.gate = gate

    def __call__(self) -> Snapshot:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(5)
        return Snapshot(datetime.now(UTC), self.calls)


def test_fresh_figures_are_reused_and_period_zero_computes_every_time() -> None:
    compute = Counter()
    cache = FleetFiguresCache(60)
    assert cache.get(compute).figures == 1 and cache.get(compute).figures == 1 and compute.calls == 1
    always = FleetFiguresCache(0)
    assert [always.get(compute).figures for _ in range(2)] == [2, 3]


def test_stale_figures_are_served_while_one_background_recomputation_runs() -> None:
    cache = FleetFiguresCache(0.2)
    assert cache.get(Counter()).figures == 1
    time.sleep(0.25)
    gate = threading.Event()
    slow = Counter(gate)
    slow.calls = 100
    assert cache.get(slow).figures == 1 and cache.get(slow).figures == 1  # stale, not waited for
    gate.set()
    deadline = time.monotonic() + 5
    while cache.get(Counter()).figures != 101:  # the recomputation lands (fresh now: nothing else computes)
        assert time.monotonic() < deadline, "the background recomputation never landed"
        time.sleep(0.01)
    assert slow.calls == 101  # one recomputation, however many requests saw the stale figures
