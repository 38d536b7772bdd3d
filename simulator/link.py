"""A simulated cellular link as an httpx transport wrapper.

The outside world we do not own (a 2G link in a tunnel) is the one thing the
simulator fakes.  ``LinkTransport`` wraps a real transport: every request
pays the profile's round-trip latency, response bodies trickle at the
profile's bandwidth, a connection may drop part-way through a body (the agent
sees ``httpx.ReadError`` and must resume), and while the car is "offline"
(tunnel, parking garage) requests fail at once with ``httpx.ConnectError``.
All delays are divided by ``time_scale`` so a rehearsal of hours runs in
minutes; all randomness comes from the ``random.Random`` passed in.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class NetworkProfile:
    """Bandwidth, latency and unreliability of one kind of link."""

    name: str
    bytes_per_s: float
    rtt_s: float
    drop_per_mb: float  # probability that a connection drops while moving 1 MB
    offline_per_hour: float  # expected offline spells (tunnels, garages) per hour
    offline_mean_s: float

    def __post_init__(self) -> None:
        if self.bytes_per_s <= 0 or self.rtt_s < 0:
            raise ValueError(f"profile {self.name!r}: bandwidth must be > 0 and latency >= 0")


PROFILES: dict[str, NetworkProfile] = {
    "2g": NetworkProfile("2g", 100_000 / 8, 0.6, 0.6, 4.0, 120.0),
    "3g": NetworkProfile("3g", 1_000_000 / 8, 0.2, 0.2, 2.0, 60.0),
    "lte": NetworkProfile("lte", 10_000_000 / 8, 0.06, 0.05, 1.0, 30.0),
    "wifi": NetworkProfile("wifi", 50_000_000 / 8, 0.01, 0.01, 0.0, 0.0),
}

#: The share of each profile in a ``--networks mixed`` fleet.
MIXED_SHARES = {"2g": 0.1, "3g": 0.25, "lte": 0.5, "wifi": 0.15}

_CHUNK = 16 * 1024
_ARTIFACTS = "/api/v1/artifacts/"


class LinkClock:
    """Simulated time: real monotonic time multiplied by ``time_scale``."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.time_scale = time_scale
        self._start = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._start) * self.time_scale

    async def sleep(self, simulated_s: float) -> None:
        if simulated_s > 0:
            await asyncio.sleep(simulated_s / self.time_scale)


class _TrickleStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.Response, link: LinkTransport, artifact: bool) -> None:
        self._inner = inner
        self._link = link
        self._artifact = artifact

    def _count(self, n: int) -> None:
        self._link.bytes_delivered += n
        if self._artifact:
            self._link.artifact_bytes += n

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner.aiter_raw(_CHUNK):
            if self._link.offline():
                self._link.drops += 1
                raise httpx.ReadError("link lost (car went offline)")
            if self._link.rng.random() < self._link.profile.drop_per_mb * len(chunk) / 1_000_000:
                # hand over part of the chunk, then drop: the agent must resume from here
                cut = self._link.rng.randrange(len(chunk)) if len(chunk) > 1 else 0
                if cut:
                    self._count(cut)
                    yield chunk[:cut]
                self._link.drops += 1
                raise httpx.ReadError("connection dropped mid-transfer (simulated)")
            await self._link.clock.sleep(len(chunk) / self._link.profile.bytes_per_s)
            self._count(len(chunk))
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class LinkTransport(httpx.AsyncBaseTransport):
    """Wraps a real transport with one car's simulated link."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        profile: NetworkProfile,
        rng: random.Random,
        clock: LinkClock,
    ) -> None:
        self.inner = inner
        self.profile = profile
        self.rng = rng
        self.clock = clock
        #: Response body bytes handed to the agent: everything, and artifact downloads only.
        self.bytes_delivered = 0
        self.artifact_bytes = 0
        #: Bodies cut short (a drop, or the car going offline mid-transfer).
        self.drops = 0
        self._offline_until = 0.0
        self._next_check = 0.0

    def offline(self) -> bool:
        """Whether the car is in a dead zone now; decides new spells lazily."""
        now = self.clock.now()
        if now < self._offline_until:
            return True
        if self.profile.offline_per_hour > 0 and now >= self._next_check:
            self._next_check = now + 60.0
            if self.rng.random() < self.profile.offline_per_hour / 60.0:
                self._offline_until = now + self.rng.expovariate(1.0 / self.profile.offline_mean_s)
                return True
        return False

    def go_offline(self, simulated_s: float) -> None:
        """Force a dead zone (tests and scripted scenarios)."""
        self._offline_until = self.clock.now() + simulated_s

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.offline():
            raise httpx.ConnectError("no network (car offline)", request=request)
        await self.clock.sleep(self.profile.rtt_s)
        response = await self.inner.handle_async_request(request)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_TrickleStream(response, self, artifact=_ARTIFACTS in request.url.path),
            extensions=response.extensions,
            request=request,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()
