"""SQL for transfer records."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.orm import Device, Transfer


def add(session: Session, row: Transfer) -> None:
    session.add(row)
    session.flush()


def for_rollout(session: Session, rollout_id: int) -> list[tuple[Transfer, str | None]]:
    q = (select(Transfer, Device.device_id).outerjoin(Device, Device.id == Transfer.device_pk)
         .where(Transfer.rollout_id == rollout_id).order_by(Transfer.id))
    return [(t, d) for t, d in session.execute(q)]


def for_device(session: Session, device_pk: int) -> list[Transfer]:
    return list(session.scalars(select(Transfer).where(Transfer.device_pk == device_pk).order_by(Transfer.id)))


def recent(session: Session, limit: int = 100) -> list[tuple[Transfer, str | None]]:
    q = (select(Transfer, Device.device_id).outerjoin(Device, Device.id == Transfer.device_pk)
         .order_by(Transfer.id.desc()).limit(limit))
    return [(t, d) for t, d in session.execute(q)]
