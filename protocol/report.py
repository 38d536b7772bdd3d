"""An update's progress on one car: the state names, the legal transitions, and the report a car sends.

One table for both ends: the car walks it as it installs (and writes each step to its journal),
the registry replays the car's reports through it and refuses an illegal step.

    offered -> downloading -> downloaded -> verified -> installed -> rolled_back
       |            |              |            |
       +------------+--------------+------------+--> failed -> downloading (retry)

``downloading -> downloading`` is a progress report (a resumed download after a restart reports
``downloading`` again).  The registry creates ``offered``; a car reports every other state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from protocol.errors import MalformedMessage

#: The registry refuses a longer ``reason`` (docs/PROTOCOL.md, "Limits"); the car cuts it to this.
MAX_REASON_CHARS = 2000


class UpdateState(StrEnum):
    OFFERED = "offered"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    INSTALLED = "installed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


#: States a car reports (``offered`` is the registry's own).
REPORTED: tuple[UpdateState, ...] = tuple(s for s in UpdateState if s is not UpdateState.OFFERED)
#: States of an update still under way.
ACTIVE = frozenset({UpdateState.OFFERED, UpdateState.DOWNLOADING, UpdateState.DOWNLOADED, UpdateState.VERIFIED})
#: States that count against a rollout's error threshold.
ERRORS = frozenset({UpdateState.FAILED, UpdateState.ROLLED_BACK})

TRANSITIONS: dict[UpdateState, frozenset[UpdateState]] = {
    UpdateState.OFFERED: frozenset({UpdateState.DOWNLOADING, UpdateState.FAILED}),
    UpdateState.DOWNLOADING: frozenset({UpdateState.DOWNLOADING, UpdateState.DOWNLOADED, UpdateState.FAILED}),
    UpdateState.DOWNLOADED: frozenset({UpdateState.VERIFIED, UpdateState.FAILED}),
    UpdateState.VERIFIED: frozenset({UpdateState.INSTALLED, UpdateState.FAILED}),
    UpdateState.INSTALLED: frozenset({UpdateState.ROLLED_BACK}),
    UpdateState.FAILED: frozenset({UpdateState.DOWNLOADING}),
    UpdateState.ROLLED_BACK: frozenset(),
}


class IllegalStep(MalformedMessage):
    """A state change the table does not allow (or an unknown state name)."""


def state(name: str) -> UpdateState:
    """The state called ``name``.  Raises IllegalStep for an unknown name."""
    try:
        return UpdateState(name)
    except ValueError as e:
        raise IllegalStep(f"unknown update state {name!r}; expected one of {', '.join(UpdateState)}") from e


def transition(current: str, new: str) -> UpdateState:
    """The state after reporting ``new`` in ``current``.

    Raises:
        IllegalStep: the pair is not in the table, or a state is unknown; the caller changes nothing.
    """
    to = state(new)
    allowed = TRANSITIONS[state(current)]
    if to not in allowed:
        names = ", ".join(sorted(allowed)) or "nothing (final state)"
        raise IllegalStep(f"cannot go from {str(current)!r} to {str(new)!r}; from {str(current)!r} the device may "
                          f"report {names}")
    return to


@dataclass(frozen=True)
class Report:
    """One state change a car reports (docs/PROTOCOL.md, "Report"); ``seq`` makes re-sending a no-op."""

    seq: int
    rollout_id: int | None
    manifest_version: int
    target_version: int
    state: UpdateState
    reason: str | None
    bytes_received: int
    artifact: str | None  # "delta" | "full" | None
    elapsed_s: float
    running_version: int
    running_model_sha256: str | None
    at: str  # ISO 8601 UTC, protocol.offer.format_time

    def __post_init__(self) -> None:
        if self.state not in REPORTED:
            raise IllegalStep(f"a car does not report {str(self.state)!r}; one of {', '.join(REPORTED)}")
        if self.artifact not in (None, "delta", "full"):
            raise MalformedMessage(f"report.artifact must be 'delta', 'full' or null, got {self.artifact!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = str(self.state)
        return d


def cut_reason(reason: str | None) -> str | None:
    """``reason`` shortened to what the registry accepts (an exception's long message must not drop a report)."""
    if reason is None or len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[:MAX_REASON_CHARS - 1] + "…"
