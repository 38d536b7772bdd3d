"""SQL for rollouts, their stages, and the per-stage device counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.orm import Device, DeviceUpdate, Rollout, RolloutStage
from server.rollouts.machine import OFFERING


def rollout(session: Session, rollout_id: int, *, lock: bool = False) -> Rollout | None:
    q = select(Rollout).where(Rollout.id == rollout_id)
    if lock:
        q = q.with_for_update()  # serialises transitions between workers on PostgreSQL
    return session.scalar(q)


def rollouts(session: Session, line_id: int | None = None, states: frozenset[str] | None = None) -> list[Rollout]:
    q = select(Rollout).order_by(Rollout.id.desc())
    if line_id is not None:
        q = q.where(Rollout.line_id == line_id)
    if states is not None:
        q = q.where(Rollout.state.in_(states))
    return list(session.scalars(q))


def offering(session: Session, line_id: int) -> list[Rollout]:
    """Rollouts that still send offers, newest first (the overlap rule picks the first that includes a device)."""
    return rollouts(session, line_id, OFFERING)


def stages(session: Session, rollout_id: int) -> list[RolloutStage]:
    return list(session.scalars(select(RolloutStage).where(RolloutStage.rollout_id == rollout_id)
                                .order_by(RolloutStage.position)))


def line_fingerprint(session: Session, line: str) -> tuple[int, int]:
    """(count, highest primary key) of the line's devices: changes when a device enrols on or joins the line."""
    count, top = session.execute(select(func.count(Device.id), func.max(Device.id)).where(Device.line == line)).one()
    return int(count or 0), int(top or 0)


def line_members(session: Session, line: str, *, with_tags: bool) -> list[tuple[int, str, dict[str, Any] | None]]:
    """(pk, device id, tags or None) of the line's devices: columns only, no ORM objects (10,000 rows)."""
    if with_tags:
        rows = session.execute(select(Device.id, Device.device_id, Device.tags).where(Device.line == line))
        return [(pk, did, tags) for pk, did, tags in rows]
    rows = session.execute(select(Device.id, Device.device_id).where(Device.line == line))
    return [(pk, did, None) for pk, did in rows]


def latest_updates(session: Session, rollout_id: int) -> dict[int, tuple[str, datetime]]:
    """device pk -> (state, updated_at) of its latest update in this rollout."""
    rows = session.execute(select(DeviceUpdate.device_pk, DeviceUpdate.state, DeviceUpdate.updated_at)
                           .where(DeviceUpdate.rollout_id == rollout_id).order_by(DeviceUpdate.id))
    return {pk: (state, at) for pk, state, at in rows}
