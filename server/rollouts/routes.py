"""HTTP for rollouts (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from server.deps import Admin, ReadSession, WriteSession
from server.rollouts import devicelist, schemas, service
from server.rollouts.deps import Members

router = APIRouter(prefix="/api/v1/rollouts")


@router.post("", status_code=201, response_model=schemas.RolloutOut)
def create(body: schemas.RolloutIn, session: WriteSession, members: Members, actor: Admin) -> schemas.RolloutOut:
    return service.create(session, members, body, actor)


@router.get("", response_model=list[schemas.RolloutOut])
def list_rollouts(session: ReadSession, members: Members, _admin: Admin,
                  line: str | None = None) -> list[schemas.RolloutOut]:
    return service.list_rollouts(session, members, line)


@router.get("/{rollout_id}", response_model=schemas.RolloutOut)
def show(rollout_id: int, session: ReadSession, members: Members, _admin: Admin) -> schemas.RolloutOut:
    return service.show(session, members, rollout_id)


UPDATE_STATES = "^(offered|downloading|downloaded|verified|installed|failed|rolled_back)$"


@router.get("/{rollout_id}/devices", response_model=list[schemas.RolloutDeviceOut])
def devices(rollout_id: int, session: ReadSession, _admin: Admin, response: Response,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
            cursor: Annotated[str | None, Query(min_length=1, max_length=100,
                                                description="X-Next-Cursor of the previous page")] = None,
            state: Annotated[str | None, Query(pattern=UPDATE_STATES)] = None,
            stage: Annotated[int | None, Query(ge=0, le=99, description="stage index, from 0")] = None,
            q: Annotated[str | None, Query(min_length=1, max_length=200, description="part of the id")] = None,
            ) -> list[schemas.RolloutDeviceOut]:
    """The cars offered this rollout's version, in offer order, one page at a time; ``X-Next-Cursor`` (pass it as
    ``cursor``) while there may be more."""
    rows, next_cursor = devicelist.page(session, rollout_id, devicelist.DeviceFilter(state, stage, q), limit=limit,
                                        cursor=cursor)
    if next_cursor is not None:
        response.headers["X-Next-Cursor"] = next_cursor
    return rows


@router.post("/{rollout_id}/rollback", status_code=201, response_model=schemas.RolloutOut)
def rollback(rollout_id: int, body: schemas.RollbackIn, session: WriteSession, members: Members,
             actor: Admin) -> schemas.RolloutOut:
    return service.rollback(session, members, rollout_id, body, actor)


@router.post("/{rollout_id}/{action}", response_model=schemas.RolloutOut)
def act(rollout_id: int, action: str, session: WriteSession, members: Members, actor: Admin) -> schemas.RolloutOut:
    """pause | resume | advance | abort."""
    return service.act(session, members, rollout_id, action, actor)
