"""``GET /api/v1/audit``: who did what to what, when, and how it ended (rows written by ``server.audit.record``).

Newest first.  A full page carries ``X-Next-Cursor``: pass it back as ``before`` for the next (older) page;
the body stays a plain list, as before cursors existed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from server.audit import OUTCOMES, store
from server.db import UtcDateTime
from server.deps import Admin, ReadSession
from server.errors import BadRequest

router = APIRouter(prefix="/api/v1")
INT32 = 2**31 - 1


class AuditOut(BaseModel):
    id: int
    at: UtcDateTime
    actor: str
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any]


def _utc(name: str, value: datetime | None) -> datetime | None:
    """``since``/``until`` in UTC; a time without a zone is ambiguous, one UTC cannot hold (year 1 at +01:00)
    is out of range: both are the caller's to fix."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise BadRequest(f"{name} must carry a time zone (for example 2026-12-07T06:00:00Z), got {value.isoformat()}",
                         code="bad_time")
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError) as e:
        raise BadRequest(f"{name} {value.isoformat()} is out of range in UTC", code="bad_time") from e


@router.get("/audit", response_model=list[AuditOut])
def audit(session: ReadSession, _admin: Admin, response: Response,
          limit: Annotated[int, Query(ge=1, le=10000)] = 100,
          before: Annotated[int | None, Query(ge=1, le=INT32, description="cursor: X-Next-Cursor of the last page")]
          = None,
          actor: Annotated[str | None, Query(max_length=200)] = None,
          action: Annotated[str | None, Query(max_length=100, description="exact, or a family: rollout.*")] = None,
          target: Annotated[str | None, Query(max_length=200, description="rollout:7, device:car-1, line:signs")]
          = None,
          outcome: Annotated[str | None, Query(pattern="^(" + "|".join(OUTCOMES) + ")$")] = None,
          since: Annotated[datetime | None, Query(description="ISO 8601 with a zone; rows at or after")] = None,
          until: Annotated[datetime | None, Query(description="ISO 8601 with a zone; rows before")] = None,
          ) -> list[AuditOut]:
    f = store.AuditFilter(actor=actor, action=action, target=target, outcome=outcome,
                          since=_utc("since", since), until=_utc("until", until))
    rows = store.page(session, f, limit=limit, before=before)
    if len(rows) == limit:
        response.headers["X-Next-Cursor"] = str(rows[-1].id)
    return [AuditOut(id=r.id, at=r.at, actor=r.actor, action=r.action, target=r.target, outcome=r.outcome,
                     detail=r.detail) for r in rows]
