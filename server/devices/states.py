"""The device update state machine (pure; docs/PROTOCOL.md "Report").

The table and state names are the protocol's (protocol/report.py), shared with the car; this
module turns an illegal step into the registry's ``IllegalTransition`` (a 409 for that report).
"""

from __future__ import annotations

from protocol import report as _report
from server.errors import IllegalTransition

STATES = tuple(str(s) for s in _report.UpdateState)
ACTIVE = frozenset(str(s) for s in _report.ACTIVE)
TRANSITIONS: dict[str, frozenset[str]] = {str(k): frozenset(str(v) for v in vs)
                                          for k, vs in _report.TRANSITIONS.items()}


def transition(current: str, new: str) -> str:
    """The state after reporting ``new`` in ``current``.

    Raises:
        IllegalTransition: the pair is not in the table (or a state is unknown).
    """
    try:
        return str(_report.transition(current, new))
    except _report.IllegalStep as e:
        raise IllegalTransition(str(e)) from e
