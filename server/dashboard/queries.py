"""Read-only SQL the dashboards need and the feature services do not offer.

Everything here only SELECTs, through the request's session; rows are
turned into small frozen dataclasses before they leave this module.  The
figures the API also serves (rollout counts, accounting totals, inventory)
come from the feature services instead, so page and API cannot disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, extract, func, select
from sqlalchemy.orm import Session, aliased

from server.db import as_utc
from server.devices.states import ACTIVE
from server.orm import (
    AuditEntry,
    Delta,
    Device,
    DeviceLine,
    DeviceReport,
    DeviceUpdate,
    Line,
    Package,
    Transfer,
    Version,
)


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
    """Create, pause, resume, advance, halt, complete, abort of one rollout, oldest first: the rows whose
    ``target`` is the rollout (indexed; migration 0008 filled it in for older rows), not every rollout's."""
    rows = session.scalars(select(AuditEntry).where(AuditEntry.target == f"rollout:{rollout_id}",
                                                    AuditEntry.action.like("rollout.%")).order_by(AuditEntry.id))
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


#: At most this many points per chart line: the bucket widens with the span of the transfers.
CHART_POINTS = 2000


def transfer_buckets(session: Session, network_tag: str) -> list[tuple[datetime, int | None, str | None, int]]:
    """Bytes sent per (time bucket, rollout, network tag value), oldest first, summed in SQL (issue 21): the
    Bandwidth page's charts read at most ``CHART_POINTS`` buckets per group, not every transfer record.  A bucket
    is a second while the transfers span fewer than ``CHART_POINTS`` seconds, wider after; each row's time is the
    bucket's end, so a cumulative chart never shows bytes before they were sent."""
    epoch = extract("epoch", Transfer.ended_at)
    first, last = session.execute(select(func.min(epoch), func.max(epoch))).one()
    if first is None or last is None:
        return []
    start = math.floor(float(first))  # buckets count from the first transfer: at most CHART_POINTS of them
    width = max(1, math.ceil((float(last) - start + 1) / CHART_POINTS))
    bucket = func.floor((epoch - start) / width)
    network = Device.tags[network_tag].as_string()
    q = (select(bucket, Transfer.rollout_id, network, func.sum(Transfer.bytes_sent))
         .outerjoin(Device, Device.id == Transfer.device_pk)
         .group_by(bucket, Transfer.rollout_id, network).order_by(bucket))
    return [(datetime.fromtimestamp(min(start + (int(b) + 1) * width - 1, float(last)), UTC), rollout_id, net,
             int(n or 0))
            for b, rollout_id, net, n in session.execute(q)]


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


def bytes_sent(session: Session) -> int:
    """Every byte sent to every car, summed in SQL (the live "bytes sent" figure every page refreshes)."""
    return int(session.scalar(select(func.coalesce(func.sum(Transfer.bytes_sent), 0))) or 0)


def transfer_count(session: Session) -> int:
    """Every transfer record (download request), counted in SQL."""
    return int(session.scalar(select(func.count()).select_from(Transfer)) or 0)


@dataclass(frozen=True)
class FleetCounts:
    """The Fleet page's cards, each one SQL aggregate over enrolled (not decommissioned) cars (issue 21)."""

    devices: int
    by_version: list[tuple[str, int | None, int]]  # (line, running version, cars), by line then version
    drifting: int
    seen_last_hour: int
    stuck: int


@dataclass(frozen=True)
class AttentionRow:
    device_id: str
    kind: str  # "drift" | "stuck"
    detail: str | None
    state: str | None
    target_version: int | None
    since: datetime | None
    last_seen_at: datetime | None


def _stuck(stuck_before: datetime) -> Select[str, str, int, datetime, datetime | None]:
    """Cars whose newest offer is in flight and unchanged since ``stuck_before`` (no newer offer: anti-join on the
    (device_pk, id) index; the (state, updated_at) index finds the candidates)."""
    newer = aliased(DeviceUpdate)
    return (select(Device.device_id, DeviceUpdate.state, DeviceUpdate.target_version, DeviceUpdate.updated_at,
                   Device.last_seen_at)
            .join(Device, Device.id == DeviceUpdate.device_pk)
            .where(DeviceUpdate.state.in_(sorted(ACTIVE)), DeviceUpdate.updated_at < stuck_before,
                   Device.decommissioned_at.is_(None),
                   ~select(newer.id).where(newer.device_pk == DeviceUpdate.device_pk, newer.id > DeviceUpdate.id)
                   .exists()))


def fleet_counts(session: Session, now: datetime, stuck_before: datetime) -> FleetCounts:
    """The cards and the by-version bars.  The per-(line, version) counts read the (line, running_version) index
    only, then take away the few decommissioned cars, instead of joining every row to ``devices``."""
    enrolled = Device.decommissioned_at.is_(None)
    devices = session.scalar(select(func.count()).select_from(Device).where(enrolled)) or 0
    key = (DeviceLine.line, DeviceLine.running_version)
    counts: dict[tuple[str, int | None], int] = {
        (line, v): n for line, v, n in session.execute(select(*key, func.count()).group_by(*key))}
    gone = (select(*key, func.count()).join(Device, Device.id == DeviceLine.device_pk)
            .where(Device.decommissioned_at.is_not(None)).group_by(*key))
    for line, v, n in session.execute(gone):
        counts[(line, v)] -= n
    drifting = session.scalar(select(func.count(func.distinct(DeviceLine.device_pk)))
                              .join(Device, Device.id == DeviceLine.device_pk)
                              .where(DeviceLine.drift.is_(True), enrolled)) or 0
    seen = session.scalar(select(func.count()).select_from(Device)
                          .where(Device.last_seen_at >= now - timedelta(hours=1), enrolled)) or 0
    stuck = session.scalar(select(func.count()).select_from(_stuck(stuck_before).subquery())) or 0
    by_version = sorted(((line, v, n) for (line, v), n in counts.items() if n > 0),
                        key=lambda x: (x[0], -1 if x[1] is None else x[1]))
    return FleetCounts(devices, by_version, drifting, seen, stuck)


def attention(session: Session, stuck_before: datetime, limit: int) -> list[AttentionRow]:
    """Up to ``limit`` drifting and up to ``limit`` stuck cars, by device id (the cards give the totals)."""
    drift = (select(Device.device_id, DeviceLine.line, DeviceLine.drift_detail, Device.last_seen_at)
             .join(Device, Device.id == DeviceLine.device_pk)
             .where(DeviceLine.drift.is_(True), Device.decommissioned_at.is_(None))
             .order_by(Device.device_id, DeviceLine.line).limit(limit))
    rows = [AttentionRow(did, "drift", f"{line}: {detail or 'reported and polled versions differ'}", None, None,
                         None, as_utc(seen)) for did, line, detail, seen in session.execute(drift)]
    stuck = _stuck(stuck_before).order_by(Device.device_id).limit(limit)
    rows += [AttentionRow(did, "stuck", None, state, target, as_utc(at), as_utc(seen))
             for did, state, target, at, seen in session.execute(stuck)]
    return rows


def latest_updates_of(session: Session, device_ids: list[str]) -> dict[str, UpdateRow]:
    """The newest offer of each of these cars (one page of the Fleet table), by device id."""
    if not device_ids:
        return {}
    newest = (select(func.max(DeviceUpdate.id)).join(Device, Device.id == DeviceUpdate.device_pk)
              .where(Device.device_id.in_(device_ids)).group_by(DeviceUpdate.device_pk))
    q = (select(Device.device_id, DeviceUpdate).join(Device, Device.id == DeviceUpdate.device_pk)
         .where(DeviceUpdate.id.in_(newest)))
    return {did: UpdateRow(did, u.rollout_id, u.target_version, u.state, u.reason, as_utc(u.updated_at))
            for did, u in session.execute(q)}
