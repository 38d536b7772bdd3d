"""Read-only SQL the dashboards need and the feature services do not offer.

Everything here only SELECTs, through the request's session; rows are
turned into small frozen dataclasses before they leave this module.  The
figures the API also serves (rollout counts, accounting totals, inventory)
come from the feature services instead, so page and API cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.db import as_utc
from server.orm import AuditEntry, Delta, Device, DeviceReport, DeviceUpdate, Line, Package, Transfer, Version


@dataclass(frozen=True)
class StateEvent:
    """One device update entering a state (``update_id`` identifies the device's offer)."""

    at: datetime
    update_id: int
    state: str


@dataclass(frozen=True)
class AuditEvent:
    at: datetime
    actor: str
    action: str
    detail: dict


@dataclass(frozen=True)
class TransferRow:
    ended_at: datetime
    rollout_id: int | None
    device_id: str | None
    network: str | None
    kind: str
    target_version: int | None
    base_version: int | None
    artifact_bytes: int
    range_start: int
    bytes_sent: int
    complete: bool


@dataclass(frozen=True)
class DeltaCell:
    line: str
    codec: str
    base_version: int
    target_version: int
    bytes: int


@dataclass(frozen=True)
class UpdateRow:
    device_id: str
    rollout_id: int | None
    target_version: int
    state: str
    reason: str | None
    updated_at: datetime


def state_events(session: Session, rollout_id: int) -> list[StateEvent]:
    """Every offer of the rollout and every accepted report on it, oldest first."""
    events = [StateEvent(as_utc(u.created_at), u.id, "offered") for u in session.scalars(
        select(DeviceUpdate).where(DeviceUpdate.rollout_id == rollout_id))]
    q = (select(DeviceReport.received_at, DeviceReport.update_id, DeviceReport.state)
         .join(DeviceUpdate, DeviceUpdate.id == DeviceReport.update_id)
         .where(DeviceUpdate.rollout_id == rollout_id, DeviceReport.accepted.is_(True)))
    events += [StateEvent(as_utc(at), uid, state) for at, uid, state in session.execute(q)
               if uid is not None]  # the join guarantees it; the check tells the type checker
    return sorted(events, key=lambda e: (e.at, e.update_id))


def rollout_audit(session: Session, rollout_id: int) -> list[AuditEvent]:
    """Create, pause, resume, advance, halt, complete, abort of one rollout, oldest first."""
    rows = session.scalars(select(AuditEntry).where(AuditEntry.action.like("rollout.%")).order_by(AuditEntry.id))
    return [AuditEvent(as_utc(a.at), a.actor, a.action, dict(a.detail)) for a in rows
            if a.detail.get("rollout_id") == rollout_id]


def failure_reasons(session: Session, rollout_id: int) -> list[tuple[str, str, int]]:
    """(state, reason, devices) for failed and rolled-back updates, most frequent first."""
    q = (select(DeviceUpdate.state, DeviceUpdate.reason, func.count())
         .where(DeviceUpdate.rollout_id == rollout_id, DeviceUpdate.state.in_(("failed", "rolled_back")))
         .group_by(DeviceUpdate.state, DeviceUpdate.reason))
    rows = [(state, reason or "no reason given", n) for state, reason, n in session.execute(q)]
    return sorted(rows, key=lambda r: (-r[2], r[0], r[1]))


def transfers(session: Session, network_tag: str, device_id: str | None = None) -> list[TransferRow]:
    """Every transfer record (optionally one device's), oldest first, with the device's network tag."""
    q = (select(Transfer, Device.device_id, Device.tags).outerjoin(Device, Device.id == Transfer.device_pk)
         .order_by(Transfer.ended_at, Transfer.id))
    if device_id is not None:
        q = q.where(Device.device_id == device_id)
    return [TransferRow(as_utc(t.ended_at), t.rollout_id, did, (tags or {}).get(network_tag) if did else None,
                        t.kind, t.target_version, t.base_version, t.artifact_bytes, t.range_start, t.bytes_sent,
                        t.complete)
            for t, did, tags in session.execute(q)]


def delta_cells(session: Session) -> list[DeltaCell]:
    """Every transfer delta computed so far, as (line, codec, from version, to version, bytes)."""
    pkgs = {sha: (line, codec, number) for sha, line, codec, number in session.execute(
        select(Package.sha256, Line.name, Package.codec, Version.number)
        .join(Version, Version.id == Package.version_id).join(Line, Line.id == Version.line_id))}
    cells = []
    for base, target, size in session.execute(select(Delta.base_sha256, Delta.target_sha256, Delta.bytes)):
        b, t = pkgs.get(base), pkgs.get(target)
        if b and t and b[:2] == t[:2]:
            cells.append(DeltaCell(b[0], b[1], b[2], t[2], size))
    return cells


def latest_updates(session: Session) -> list[UpdateRow]:
    """Each device's most recent offer and where it stands."""
    newest = (select(DeviceUpdate.device_pk, func.max(DeviceUpdate.id).label("uid"))
              .group_by(DeviceUpdate.device_pk).subquery())
    q = (select(Device.device_id, DeviceUpdate).join(newest, newest.c.uid == DeviceUpdate.id)
         .join(Device, Device.id == DeviceUpdate.device_pk))
    return [UpdateRow(did, u.rollout_id, u.target_version, u.state, u.reason, as_utc(u.updated_at))
            for did, u in session.execute(q)]
