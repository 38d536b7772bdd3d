"""The device update state machine (pure; docs/PROTOCOL.md "Report").

    offered -> downloading -> downloaded -> verified -> installed -> rolled_back
       |            |              |            |
       +------------+--------------+------------+--> failed -> downloading (retry)

``downloading -> downloading`` is allowed as a progress report (a resumed
download after a restart reports ``downloading`` again).  Anything else
raises ``IllegalTransition`` and the caller changes nothing.
"""

from __future__ import annotations

from server.errors import IllegalTransition

STATES = ("offered", "downloading", "downloaded", "verified", "installed", "failed", "rolled_back")
ACTIVE = frozenset({"offered", "downloading", "downloaded", "verified"})

TRANSITIONS: dict[str, frozenset[str]] = {
    "offered": frozenset({"downloading", "failed"}),
    "downloading": frozenset({"downloading", "downloaded", "failed"}),
    "downloaded": frozenset({"verified", "failed"}),
    "verified": frozenset({"installed", "failed"}),
    "installed": frozenset({"rolled_back"}),
    "failed": frozenset({"downloading"}),
    "rolled_back": frozenset(),
}


def transition(current: str, new: str) -> str:
    """The state after reporting ``new`` in ``current``.

    Raises:
        IllegalTransition: the pair is not in the table (or a state is unknown).
    """
    if new not in STATES:
        raise IllegalTransition(f"unknown update state {new!r}; expected one of {', '.join(STATES)}")
    if new not in TRANSITIONS.get(current, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(current, ()))) or "nothing (final state)"
        raise IllegalTransition(f"cannot go from {current!r} to {new!r}; from {current!r} the device may report {allowed}")
    return new
