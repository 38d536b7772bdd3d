"""SQL for transfer records: the per-request rows, and their sums per rollout, stage and device.

Nothing here loads every transfer of a rollout into Python (issue 21): totals are one aggregate query, the
per-device figures are grouped in SQL (one row per car, never one per request), and the lists are bounded pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from server.orm import Device, DeviceUpdate, Transfer


def add(session: Session, row: Transfer) -> None:
    session.add(row)
    session.flush()


def for_device(session: Session, device_pk: int) -> list[Transfer]:
    return list(session.scalars(select(Transfer).where(Transfer.device_pk == device_pk).order_by(Transfer.id)))


@dataclass(frozen=True)
class TransferFilter:
    """What ``GET /api/v1/accounting/transfers`` filters on (None: any); every filter runs in SQL."""

    rollout_id: int | None = None
    device_id: str | None = None
    kind: str | None = None


def page(session: Session, f: TransferFilter, *, limit: int, before: int | None = None
         ) -> list[tuple[Transfer, str | None]]:
    """Up to ``limit`` transfer records (with the device id) newest first, those with an id below ``before``.

    Keyset on the primary key: a record written while a caller pages lands above the cursor (it is newer), so
    no record is skipped or repeated.
    """
    q = (select(Transfer, Device.device_id).outerjoin(Device, Device.id == Transfer.device_pk)
         .order_by(Transfer.id.desc()).limit(limit))
    if before is not None:
        q = q.where(Transfer.id < before)
    if f.rollout_id is not None:
        q = q.where(Transfer.rollout_id == f.rollout_id)
    if f.device_id is not None:
        q = q.where(Device.device_id == f.device_id)
    if f.kind is not None:
        q = q.where(Transfer.kind == f.kind)
    return [(t, d) for t, d in session.execute(q)]


@dataclass(frozen=True)
class DeviceSums:
    """One car's transfers of one rollout, summed in SQL (``device_pk`` None: requests made without a device)."""

    rollout_id: int | None
    device_pk: int | None
    device_id: str | None
    bytes_sent: int
    delta_bytes: int
    requests: int
    resumes: int
    first_request_at: datetime | None
    last_request_end_at: datetime | None


def _per_device() -> Select:
    """Transfers grouped per (rollout, car): the sums a page of per-device figures shows."""
    delta = case((Transfer.kind == "delta", Transfer.bytes_sent), else_=0)
    resumed = case((Transfer.range_start > 0, 1), else_=0)
    return (select(Transfer.rollout_id, Transfer.device_pk, Device.device_id, func.sum(Transfer.bytes_sent),
                   func.sum(delta), func.count(), func.sum(resumed), func.min(Transfer.started_at),
                   func.max(Transfer.ended_at))
            .outerjoin(Device, Device.id == Transfer.device_pk)
            .group_by(Transfer.rollout_id, Transfer.device_pk, Device.device_id))


def _sums(session: Session, q: Select) -> list[DeviceSums]:
    return [DeviceSums(rid, pk, did, int(sent or 0), int(delta or 0), int(n), int(res or 0), first, last)
            for rid, pk, did, sent, delta, n, res, first, last in session.execute(q)]


def device_sums(session: Session, rollout_id: int) -> list[DeviceSums]:
    """Every car's sums on one rollout: one row per car (the per-stage totals need each car's stage, a hash of
    its id that SQL cannot compute), never one per request."""
    return _sums(session, _per_device().where(Transfer.rollout_id == rollout_id))


def largest(session: Session, limit: int, rollout_id: int | None = None) -> list[DeviceSums]:
    """The ``limit`` cars (per rollout) the most bytes were sent to, most first: grouped, sorted and cut in SQL.
    ``rollout_id`` None: across every rollout (the Bandwidth page)."""
    sent = func.sum(Transfer.bytes_sent)
    q = _per_device().order_by(sent.desc(), Transfer.rollout_id, Transfer.device_pk).limit(limit)
    q = q.where(Transfer.rollout_id.is_not(None)) if rollout_id is None else q.where(Transfer.rollout_id == rollout_id)
    return _sums(session, q)


def latest_delta(session: Session, rollout_id: int | None, device_pks: list[int] | None
                 ) -> dict[int, tuple[int | None, int]]:
    """device pk -> (base version, artifact bytes) of its newest delta transfer on the rollout, of these cars
    (a page) or, ``device_pks`` None, of every car (no parameter per car: a rollout may hold a million)."""
    if device_pks is not None and not device_pks:
        return {}
    newest = (select(func.max(Transfer.id)).where(Transfer.rollout_id == rollout_id, Transfer.kind == "delta")
              .group_by(Transfer.device_pk))
    if device_pks is not None:
        newest = newest.where(Transfer.device_pk.in_(device_pks))
    q = select(Transfer.device_pk, Transfer.base_version, Transfer.artifact_bytes).where(Transfer.id.in_(newest))
    return {pk: (base, int(size)) for pk, base, size in session.execute(q) if pk is not None}


def first_full(session: Session, rollout_id: int | None, device_pks: list[int] | None) -> dict[int, int]:
    """device pk -> artifact bytes of its first transfer on the rollout (what a car that took no delta fetched),
    of these cars or, ``device_pks`` None, of every car."""
    if device_pks is not None and not device_pks:
        return {}
    first = select(func.min(Transfer.id)).where(Transfer.rollout_id == rollout_id).group_by(Transfer.device_pk)
    if device_pks is not None:
        first = first.where(Transfer.device_pk.in_(device_pks))
    q = select(Transfer.device_pk, Transfer.artifact_bytes).where(Transfer.id.in_(first))
    return {pk: int(size) for pk, size in session.execute(q) if pk is not None}


def update_states(session: Session, rollout_id: int, device_pks: list[int] | None = None
                  ) -> list[tuple[int, str, str, int]]:
    """(device pk, device id, state, bytes reported) of the rollout's offers, of these cars if given."""
    q = (select(DeviceUpdate.device_pk, Device.device_id, DeviceUpdate.state, DeviceUpdate.bytes_reported)
         .join(Device, Device.id == DeviceUpdate.device_pk).where(DeviceUpdate.rollout_id == rollout_id)
         .order_by(DeviceUpdate.id))
    if device_pks is not None:
        if not device_pks:
            return []
        q = q.where(DeviceUpdate.device_pk.in_(device_pks))
    return [(pk, did, state, int(rep or 0)) for pk, did, state, rep in session.execute(q)]


__all__ = ["DeviceSums", "TransferFilter", "add", "device_sums", "first_full", "largest",
           "latest_delta", "page", "update_states"]
