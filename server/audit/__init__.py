"""The audit log (issue 21 item 5): every state-changing call, with actor, time, target and outcome.

``record`` is the one way a service writes a row: publishes (and refused publishes), rollout actions and
automatic halts and advances, device enrolments (and refusals), edits, revocations, enrolment tokens,
dashboard logins, failed logins and logouts, and online-key rotations the server picked up.  A refusal is
recorded in a transaction of its own (the request's was rolled back).  ``routes`` serves ``GET
/api/v1/audit``; the dashboard's "Audit" page reads the same rows through ``store``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from server.db import utcnow
from server.orm import AuditEntry

#: The outcomes a row may have: the action happened, the server refused it (bad input, not allowed), or it
#: was attempted and failed.
OUTCOMES = ("ok", "refused", "failed")

_TARGET_KEYS = (("rollout_id", "rollout"), ("device_id", "device"), ("token_id", "token"), ("line", "line"))


def target_of(detail: dict[str, Any]) -> str | None:
    """The row's target when the caller names none: the first of rollout, device, token, line in ``detail``."""
    for key, kind in _TARGET_KEYS:
        if detail.get(key) is not None:
            return f"{kind}:{detail[key]}"[:200]
    return None


def record(session: Session, actor: str, action: str, *, target: str | None = None, outcome: str = "ok",
           **detail: Any) -> None:
    """Add one audit row to ``session``'s transaction (it lands only if the transaction commits).

    ``outcome`` is kept in ``detail`` as given (readers from before it was a column look there, and an
    enrolment says how it succeeded: ``created``, ``proof``, ``reauthorized``); the column holds one of
    :data:`OUTCOMES`, any success being ``ok``.
    """
    detail = {**detail, "outcome": outcome}
    column = outcome if outcome in OUTCOMES else "ok"
    session.add(AuditEntry(at=utcnow(), actor=actor[:200], action=action, detail=detail,
                           target=target[:200] if target is not None else target_of(detail), outcome=column))
