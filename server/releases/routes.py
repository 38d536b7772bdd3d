"""HTTP for releases (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from server.deps import Admin, ReadSession, WriteSession
from server.releases import schemas, service

router = APIRouter(prefix="/api/v1/releases")


@router.post("", status_code=201, response_model=schemas.ReleaseOut)
def create(body: schemas.ReleaseIn, session: WriteSession, actor: Admin) -> schemas.ReleaseOut:
    return service.create(session, body, actor)


@router.get("", response_model=list[schemas.ReleaseOut])
def list_releases(session: ReadSession, _admin: Admin) -> list[schemas.ReleaseOut]:
    return service.list_releases(session)


@router.get("/{name}", response_model=schemas.ReleaseOut)
def show(name: str, session: ReadSession, _admin: Admin) -> schemas.ReleaseOut:
    return service.show(session, name)
