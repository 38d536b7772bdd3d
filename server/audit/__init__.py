"""The audit log: ``record`` is the one way a service writes a row (rollout actions, automatic halts and
advances, device changes, enrolments and their refusals, revocations, enrolment tokens); ``routes`` serves
``GET /api/v1/audit``."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from server.db import utcnow
from server.orm import AuditEntry


def record(session: Session, actor: str, action: str, **detail: Any) -> None:
    """Add one audit row to ``session``'s transaction (it lands only if the transaction commits)."""
    session.add(AuditEntry(at=utcnow(), actor=actor, action=action, detail=detail))
