"""SQL for rollouts, their stages, and the per-stage device counts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
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


def line_devices(session: Session, line: str) -> list[Device]:
    return list(session.scalars(select(Device).where(Device.line == line)))


def update_states(session: Session, rollout_id: int) -> dict[int, str]:
    """device pk -> state of its latest update in this rollout."""
    rows = session.execute(select(DeviceUpdate.device_pk, DeviceUpdate.state)
                           .where(DeviceUpdate.rollout_id == rollout_id).order_by(DeviceUpdate.id))
    return {pk: state for pk, state in rows}


def failed_since(session: Session, rollout_id: int, since: datetime) -> set[int]:
    """Device pks whose update in this rollout failed at or after ``since``."""
    rows = session.execute(select(DeviceUpdate.device_pk).where(
        DeviceUpdate.rollout_id == rollout_id, DeviceUpdate.state == "failed", DeviceUpdate.updated_at >= since))
    return {pk for (pk,) in rows}
