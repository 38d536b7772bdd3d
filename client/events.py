"""What an agent tells whoever watches it: polls answered, reports queued, installs, rollbacks.

The agent decides; an observer only listens (a fleet simulator counting installs and bytes, a car
application logging, a test).  Override the methods you need; each is called on the agent's event loop
right after the fact, must return quickly and must not raise (an exception would fail the agent's step).
Before this existed the simulator overrode four of the agent's private methods and replaced its API
client's ``poll``: any rename inside the agent broke it silently (issue 16).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol.offer import Offer


class AgentEvents:
    """No-op observer: the default of every agent."""

    def polled(self, offer: Mapping[str, Any] | None) -> None:
        """A poll was answered: the signed offer envelope as received (not yet verified), or None."""

    def reported(self, offer: Offer, state: str, reason: str | None) -> None:
        """A report of ``offer`` reaching ``state`` was queued (sent with the next flush)."""

    def installed(self, offer: Offer, artifact: str, received: int, timings: Mapping[str, float]) -> None:
        """``offer``'s version went live.  ``artifact``: delta, full or staged (from the shadow slot);
        ``received``: artifact bytes read for it; ``timings``: the agent's ``last_install``."""

    def rolled_back(self, version: int, reason: str) -> None:
        """The live ``version`` is being replaced by the previous one (health window or signed rollback)."""
