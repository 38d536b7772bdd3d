"""``GET /api/v1/audit``: who did what (rollout actions, automatic halts/advances, device changes, enrolments
and their refusals, key rotations, revocations, enrolment tokens), and ``record`` to write one row."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db import UtcDateTime, utcnow
from server.deps import Admin, DbSession
from server.orm import AuditEntry

router = APIRouter(prefix="/api/v1")


class AuditOut(BaseModel):
    at: UtcDateTime
    actor: str
    action: str
    detail: dict[str, Any]


@router.get("/audit", response_model=list[AuditOut])
def audit(session: DbSession, _admin: Admin, limit: int = Query(default=100, ge=1, le=10000)) -> list[AuditOut]:
    rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
    return [AuditOut(at=r.at, actor=r.actor, action=r.action, detail=r.detail) for r in rows]


def record(session: Session, actor: str, action: str, **detail: Any) -> None:
    """Add one audit row to ``session``'s transaction (it lands only if the transaction commits)."""
    session.add(AuditEntry(at=utcnow(), actor=actor, action=action, detail=detail))
