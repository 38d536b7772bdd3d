"""``GET /api/v1/audit``: who did what (rows written by ``server.audit.record``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from server.db import UtcDateTime
from server.deps import Admin, ReadSession
from server.orm import AuditEntry

router = APIRouter(prefix="/api/v1")


class AuditOut(BaseModel):
    at: UtcDateTime
    actor: str
    action: str
    detail: dict[str, Any]


@router.get("/audit", response_model=list[AuditOut])
def audit(session: ReadSession, _admin: Admin, limit: int = Query(default=100, ge=1, le=10000)) -> list[AuditOut]:
    rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
    return [AuditOut(at=r.at, actor=r.actor, action=r.action, detail=r.detail) for r in rows]

