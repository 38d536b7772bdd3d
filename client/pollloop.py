"""The car's wake-up loop, shared by the one-line ``Agent`` and the several-line ``MultiAgent``.

Poll at the server's interval with jitter; on an error back off exponentially with full jitter (a fleet
that lost the registry must not come back in step); on a refused token forget the identity and re-enrol by
proving the car's key.  The classes that use it say what one poll is, how long the server asked them to
wait, how to forget their identity, and how to wait (judging health windows meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from client.errors import DownloadError, ServerError, StorageError, Unauthorized, VerificationError

if TYPE_CHECKING:
    from client.config import AgentConfig

log = logging.getLogger("client.agent")


class PollLoop:
    """``run``/``run_once``/``run_forever`` over the hooks below (a mixin: no state of its own)."""

    config: AgentConfig
    _rng: random.Random
    _stop: asyncio.Event

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def ensure_enrolled(self) -> None:
        raise NotImplementedError

    async def poll_once(self) -> None:
        raise NotImplementedError

    async def _wait(self, delay: float) -> None:
        raise NotImplementedError

    def _server_interval(self) -> float:
        """Seconds the registry asked this car to wait between polls."""
        raise NotImplementedError

    def _forget_identity(self) -> None:
        """The device token was refused (rotated, lost): enrol again on the next step."""
        raise NotImplementedError

    async def poll_cycle(self) -> None:
        """Start, enrol if needed, poll once (installing any offer), then close: one car wake-up."""
        try:
            await self.start()
            await self.ensure_enrolled()
            await self.poll_once()
        finally:
            await self.aclose()

    def run_once(self) -> None:
        """Blocking ``poll_cycle`` for ``ota agent --once``, scripts and benchmarks."""
        asyncio.run(self.poll_cycle())

    def run(self) -> None:
        """Blocking entry point for ``ota agent``: start, then poll until stopped (Ctrl-C)."""

        async def main() -> None:
            try:
                await self.start()
                await self.run_forever()
            finally:
                await self.aclose()

        asyncio.run(main())

    async def run_forever(self) -> None:
        """Poll at the server's interval with jitter; back off exponentially (full jitter) on errors."""
        failures = 0
        while not self._stop.is_set():
            try:
                await self.ensure_enrolled()
                await self.poll_once()
                failures = 0
                base = self.config.poll_interval_s or self._server_interval()
                j = self.config.poll_jitter_fraction
                delay = base * self._rng.uniform(1 - j, 1 + j)
            except Unauthorized as e:
                log.warning("%s; re-enrolling", e)
                self._forget_identity()
                failures += 1
                delay = self._backoff(failures)
            except (ServerError, DownloadError, StorageError, VerificationError) as e:
                failures += 1
                delay = self._backoff(failures)
                log.warning("poll failed (%s); retrying in %.1fs", e, delay)
            await self._wait(delay)

    def _backoff(self, failures: int) -> float:
        cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (failures - 1))
        return self._rng.uniform(0, cap)  # full jitter: a fleet that lost the server does not return in step
