"""A small in-memory token bucket per key (client address, enrolment credential), for enrolment.

Per process: with several workers or replicas the effective limit is that many times higher, which is
still a bound on how fast one address can guess tokens or mint phantom devices.  The table of buckets is
bounded; when full, buckets that have refilled completely (they hold no information) are dropped first.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

MAX_KEYS = 100_000


class RateLimiter:
    """``take(*keys)`` takes one token from each key's bucket, or none and says how long to wait."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s, self.burst, self.clock = rate_per_s, float(burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate_per_s)

    def take(self, *keys: str) -> float:
        """0.0 when every bucket had a token (one is taken from each), else the seconds until they all will."""
        now = self.clock()
        with self._lock:
            levels = {k: self._level(k, now) for k in keys}
            short = max((1.0 - level for level in levels.values()), default=0.0)
            if short > 0:
                return math.inf if self.rate_per_s <= 0 else short / self.rate_per_s
            if len(self._buckets) + len(keys) > MAX_KEYS:
                self._buckets = {k: v for k, v in self._buckets.items() if self._level(k, now) < self.burst}
                if len(self._buckets) + len(keys) > MAX_KEYS:
                    self._buckets.clear()
            for k, level in levels.items():
                self._buckets[k] = (level - 1.0, now)
            return 0.0
