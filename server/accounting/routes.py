"""HTTP for transfer accounting (admin; the dashboards read these)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from server.accounting import schemas, service, store
from server.deps import Admin, ReadSession

router = APIRouter(prefix="/api/v1/accounting")
INT32 = 2**31 - 1


@router.get("/rollouts/{rollout_id}", response_model=schemas.RolloutAccounting)
def rollout(rollout_id: int, session: ReadSession, _admin: Admin,
            largest: int = Query(default=10, ge=1, le=1000)) -> schemas.RolloutAccounting:
    return service.rollout_accounting(session, rollout_id, largest)


# ``limit`` goes up to 10,000 (not the 1,000 of the other pages): readers from before cursors (the fleet story,
# tests, ``bench/``) ask for up to that in one call and still get everything they asked for.
@router.get("/transfers", response_model=list[schemas.TransferOut])
def transfers(session: ReadSession, _admin: Admin, response: Response,
              limit: Annotated[int, Query(ge=1, le=10000)] = 100,
              cursor: Annotated[str | None, Query(min_length=1, max_length=100,
                                                  description="X-Next-Cursor of the previous page")] = None,
              rollout_id: Annotated[int | None, Query(ge=1, le=INT32)] = None,
              device_id: Annotated[str | None, Query(min_length=1, max_length=200, description="exact")] = None,
              kind: Annotated[str | None, Query(pattern="^(full|delta)$")] = None,
              ) -> list[schemas.TransferOut]:
    """One page of transfer records, newest first; a full page carries ``X-Next-Cursor`` (pass it as ``cursor``
    for the next, older, page: records written meanwhile are newer and never shift it)."""
    rows, next_cursor = service.transfers(session, store.TransferFilter(rollout_id, device_id, kind), limit=limit,
                                          cursor=cursor)
    if next_cursor is not None:
        response.headers["X-Next-Cursor"] = next_cursor
    return rows
