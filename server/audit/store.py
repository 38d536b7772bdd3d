"""SQL for the audit log: one filtered page, newest first, continued by a cursor (the last row's id)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.orm import AuditEntry


@dataclass(frozen=True)
class AuditFilter:
    """What ``GET /api/v1/audit`` and the dashboard page filter on (None: any).

    ``action`` ending in ``.`` or ``*`` matches a family (``rollout.`` / ``rollout.*``: every rollout action).
    """

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def page(session: Session, f: AuditFilter, *, limit: int, before: int | None = None) -> list[AuditEntry]:
    """Up to ``limit`` rows matching ``f``, newest first, all with ids below ``before`` if given."""
    q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before is not None:
        q = q.where(AuditEntry.id < before)
    if f.actor is not None:
        q = q.where(AuditEntry.actor == f.actor)
    if f.action is not None:
        family = f.action.rstrip("*")
        q = q.where(AuditEntry.action.startswith(family, autoescape=True) if family.endswith(".")
                    else AuditEntry.action == f.action)
    if f.target is not None:
        q = q.where(AuditEntry.target == f.target)
    if f.outcome is not None:
        q = q.where(AuditEntry.outcome == f.outcome)
    if f.since is not None:
        q = q.where(AuditEntry.at >= f.since)
    if f.until is not None:
        q = q.where(AuditEntry.at < f.until)
    return list(session.scalars(q))
