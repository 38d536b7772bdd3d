"""Token bucket that paces downloads to a byte rate.

The bucket holds up to ``burst_bytes`` tokens and refills at
``rate_bytes_per_s``.  ``acquire(n)`` waits until ``n`` tokens are there.
Clock and sleep are injectable so a simulator can run thousands of buckets on
scaled time in one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    """Paces a byte stream; one bucket per download (or per shared link)."""

    def __init__(
        self,
        rate_bytes_per_s: float,
        burst_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError(f"rate_bytes_per_s must be positive, got {rate_bytes_per_s}")
        if burst_bytes <= 0:
            raise ValueError(f"burst_bytes must be positive, got {burst_bytes}")
        self.rate_bytes_per_s = float(rate_bytes_per_s)
        self.burst_bytes = int(burst_bytes)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst_bytes)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst_bytes, self._tokens + (now - self._last) * self.rate_bytes_per_s)
        self._last = now

    def wait_time_s(self, n: int) -> float:
        """Seconds until ``n`` tokens are available (0 if they are now); does not consume."""
        self._refill()
        return max(0.0, (n - self._tokens) / self.rate_bytes_per_s)

    async def acquire(self, n: int) -> None:
        """Take ``n`` tokens, sleeping as long as the rate requires.

        Requests larger than the burst are allowed: the bucket goes into debt
        and the next caller waits it off, so the long-run rate still holds.
        """
        self._refill()
        self._tokens -= n
        if self._tokens < 0:
            await self._sleep(-self._tokens / self.rate_bytes_per_s)
