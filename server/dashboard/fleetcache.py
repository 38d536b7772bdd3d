"""The Fleet figures (cards, by-version bars, attention list) computed at most every few seconds per process.

At a million cars each aggregate is a scan of ~100 ms on PostgreSQL (counting a million index entries has no
shortcut), and every open dashboard tab asks for the cards every ``dashboard_refresh_s`` (``live.json``).  So a
process keeps the last figures and their time: a request within ``dashboard_fleet_counts_s`` reads them as they
are; a later one still reads them (stale by at most one period plus one computation) and starts one background
recomputation; only the first request of a process computes while it waits.  ``0`` computes on every request
(the tests' setting: they look right after a change).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    at: datetime  # when the figures were read
    figures: Any


class FleetFiguresCache:
    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._taken = 0.0  # time.monotonic() of the snapshot
        self._refreshing = False

    def get(self, compute: Callable[[], Snapshot]) -> Snapshot:
        """The figures: fresh, stale (then one background recomputation starts), or computed now if none yet."""
        with self._lock:
            snap, age = self._snapshot, time.monotonic() - self._taken
            if snap is not None and age <= self.max_age_s:
                return snap
            start_refresh = snap is not None and not self._refreshing and self.max_age_s > 0
            if start_refresh:
                self._refreshing = True
        if snap is None or self.max_age_s <= 0:
            return self._store(compute())
        if start_refresh:
            threading.Thread(target=self._refresh, args=(compute,), daemon=True, name="fleet-figures").start()
        return snap

    def _refresh(self, compute: Callable[[], Snapshot]) -> None:
        try:
            self._store(compute())
        except Exception:  # noqa: BLE001 - the stale figures stay; the next request retries
            log.exception("fleet figures refresh failed")
        finally:
            with self._lock:
                self._refreshing = False

    def _store(self, snap: Snapshot) -> Snapshot:
        with self._lock:
            self._snapshot, self._taken = snap, time.monotonic()
        return snap
