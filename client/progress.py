"""The car's side of an update's progress: one typed record in the journal, stepped through the protocol's table.

The registry replays every report through :data:`protocol.report.TRANSITIONS` and refuses an illegal step;
the car walks the same table here, so a step the registry would refuse is a bug caught on the car, where it
happens, not a refused report found later in the server's log.  The record survives power cuts inside the
journal (``Journal.pending``), which is why it is plain data with a stable JSON form (the keys an agent of
before this module wrote: ``mv``, ``model_sha256``, ``started_at``, ``state``, ``delta_failed``).

    offered -> downloading -> downloaded -> verified -> installed
       |            |              |            |
       +------------+--------------+------------+--> failed -> downloading (retry)

``installed`` ends the record (the journal's slot records take over); ``rolled_back`` is reported about a
slot record, never about a pending update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.report import IllegalStep, UpdateState, state, transition

#: The order in which an install reports its states up to ``verified``: a resumed install skips the ones
#: already reported before a restart (``PendingUpdate.reported``).
PROGRESS: tuple[UpdateState, ...] = (UpdateState.OFFERED, UpdateState.DOWNLOADING, UpdateState.DOWNLOADED,
                                     UpdateState.VERIFIED)

__all__ = ["PROGRESS", "IllegalStep", "PendingUpdate"]


@dataclass
class PendingUpdate:
    """The update in progress: which offer, which model, since when, the last state reported."""

    manifest_version: int
    model_sha256: str | None
    started_at: float  # wall-clock seconds: a report's ``elapsed_s`` counts from here, across restarts
    state: UpdateState = UpdateState.OFFERED
    delta_failed: bool = False  # the delta did not apply here: this update takes the full package

    def step(self, to: str | UpdateState) -> UpdateState:
        """Move to ``to`` (the report about to be queued).

        Raises:
            IllegalStep: the protocol's table does not allow it from the current state; nothing changes.
        """
        self.state = transition(self.state, str(to))
        return self.state

    def reported(self, s: str | UpdateState) -> bool:
        """Whether this update already reported ``s`` (or a later state of the install's progress)."""
        want = state(str(s))
        if self.state not in PROGRESS or want not in PROGRESS:
            return False
        return PROGRESS.index(self.state) >= PROGRESS.index(want)

    @property
    def retrying(self) -> bool:
        """Nothing reported yet, or the last attempt failed: the next attempt starts with ``downloading``."""
        return self.state in (UpdateState.OFFERED, UpdateState.FAILED)

    def to_dict(self) -> dict[str, Any]:
        return {"mv": self.manifest_version, "model_sha256": self.model_sha256, "started_at": self.started_at,
                "state": str(self.state), "delta_failed": self.delta_failed}

    @classmethod
    def from_dict(cls, d: Any) -> PendingUpdate | None:
        """The record a journal holds; None for a missing or unreadable one (the update starts over: the
        registry offers it again, and a repeated ``downloading`` report is legal)."""
        if not isinstance(d, dict):
            return None
        try:
            return cls(manifest_version=int(d["mv"]), model_sha256=d.get("model_sha256"),
                       started_at=float(d["started_at"]), state=state(str(d.get("state", "offered"))),
                       delta_failed=bool(d.get("delta_failed", False)))
        except (KeyError, TypeError, ValueError, IllegalStep):
            return None
