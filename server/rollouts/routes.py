"""HTTP for rollouts (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from server.deps import Admin, ReadSession, WriteSession
from server.rollouts import schemas, service
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


@router.post("/{rollout_id}/rollback", status_code=201, response_model=schemas.RolloutOut)
def rollback(rollout_id: int, body: schemas.RollbackIn, session: WriteSession, members: Members,
             actor: Admin) -> schemas.RolloutOut:
    return service.rollback(session, members, rollout_id, body, actor)


@router.post("/{rollout_id}/{action}", response_model=schemas.RolloutOut)
def act(rollout_id: int, action: str, session: WriteSession, members: Members, actor: Admin) -> schemas.RolloutOut:
    """pause | resume | advance | abort."""
    return service.act(session, members, rollout_id, action, actor)
