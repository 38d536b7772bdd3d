"""HTTP for transfer accounting (admin; the dashboards read these)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from server.accounting import schemas, service
from server.deps import Admin, ReadSession

router = APIRouter(prefix="/api/v1/accounting")


@router.get("/rollouts/{rollout_id}", response_model=schemas.RolloutAccounting)
def rollout(rollout_id: int, session: ReadSession, _admin: Admin,
            largest: int = Query(default=10, ge=1, le=1000)) -> schemas.RolloutAccounting:
    return service.rollout_accounting(session, rollout_id, largest)


@router.get("/transfers", response_model=list[schemas.TransferOut])
def transfers(session: ReadSession, _admin: Admin, limit: int = Query(default=100, ge=1, le=10000)
              ) -> list[schemas.TransferOut]:
    return service.transfers(session, limit)
