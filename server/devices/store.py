"""SQL for devices, their update rows and reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ScalarSelect, func, or_, select
from sqlalchemy.orm import Session

from server.orm import Device, DeviceLine, DeviceReport, DeviceUpdate, Line, Transfer, Version


def by_token(session: Session, token_sha256: str) -> Device | None:
    return session.scalar(select(Device).where(Device.token_sha256 == token_sha256))


def by_device_id(session: Session, device_id: str) -> Device | None:
    return session.scalar(select(Device).where(Device.device_id == device_id))


def device_line(session: Session, device_pk: int, line: str) -> DeviceLine | None:
    return session.scalar(select(DeviceLine).where(DeviceLine.device_pk == device_pk, DeviceLine.line == line))


def device_lines(session: Session, device_pk: int) -> list[DeviceLine]:
    """What the device runs on each of its lines, by line name."""
    return list(session.scalars(select(DeviceLine).where(DeviceLine.device_pk == device_pk)
                                .order_by(DeviceLine.line)))


def line_of_update(session: Session, update: DeviceUpdate) -> str:
    """The name of the line an offer's version belongs to."""
    name = session.scalar(select(Line.name).join(Version, Version.line_id == Line.id)
                          .where(Version.id == update.version_id))
    assert name is not None  # versions are never deleted
    return name


def update_for(session: Session, device_pk: int, rollout_id: int | None, version_id: int) -> DeviceUpdate | None:
    return session.scalar(select(DeviceUpdate).where(DeviceUpdate.device_pk == device_pk,
                                                     DeviceUpdate.rollout_key == (rollout_id or 0),
                                                     DeviceUpdate.version_id == version_id))


def update_for_report(session: Session, device_pk: int, rollout_id: int | None,
                      target_version: int) -> DeviceUpdate | None:
    q = select(DeviceUpdate).where(DeviceUpdate.device_pk == device_pk, DeviceUpdate.target_version == target_version)
    q = q.where(DeviceUpdate.rollout_id.is_(None) if rollout_id is None else DeviceUpdate.rollout_id == rollout_id)
    return session.scalar(q.order_by(DeviceUpdate.id.desc()).limit(1))


def updates(session: Session, device_pk: int, limit: int = 20) -> list[DeviceUpdate]:
    return list(session.scalars(select(DeviceUpdate).where(DeviceUpdate.device_pk == device_pk)
                                .order_by(DeviceUpdate.id.desc()).limit(limit)))


def offered_update(session: Session, device_pk: int, artifact_sha256: str) -> DeviceUpdate | None:
    """The latest update that offered this artifact to this device (full package or delta)."""
    q = select(DeviceUpdate).where(DeviceUpdate.device_pk == device_pk,
                                   or_(DeviceUpdate.package_sha256 == artifact_sha256,
                                       DeviceUpdate.delta_sha256 == artifact_sha256))
    return session.scalar(q.order_by(DeviceUpdate.id.desc()).limit(1))


def report(session: Session, device_pk: int, seq: int) -> DeviceReport | None:
    return session.scalar(select(DeviceReport).where(DeviceReport.device_pk == device_pk, DeviceReport.seq == seq))


def downloaded_in_full(session: Session, device_pk: int, artifacts: set[str]) -> bool:
    """Whether the server sent this device one of these artifacts to its last byte, every byte at least once.

    Resumed downloads are several transfers: their bytes add up, and the last one reaches the end.
    """
    if not artifacts:
        return False
    rows = session.execute(select(Transfer.artifact_sha256, Transfer.artifact_bytes, Transfer.range_start,
                                  Transfer.bytes_sent).where(Transfer.device_pk == device_pk,
                                                             Transfer.artifact_sha256.in_(artifacts)))
    sent: dict[str, int] = {}
    size: dict[str, int] = {}
    reached_end: set[str] = set()
    for sha, total, start, n in rows:
        sent[sha], size[sha] = sent.get(sha, 0) + int(n), int(total)
        if int(start) + int(n) >= int(total):
            reached_end.add(sha)
    return any(sent[sha] >= size[sha] for sha in reached_end)


@dataclass(frozen=True)
class InventoryFilter:
    """What ``GET /api/v1/devices`` and the Fleet page filter on (None: any); every filter runs in SQL.

    ``line``/``version``: a line the car runs (at that version); ``drift``: a line drifts; ``state``: the state of
    the car's newest offer; ``seen_since``: last seen at or after (as flushed by ``presence``); ``q``: part of the
    device id (case-insensitive).
    """

    line: str | None = None
    version: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    drift: bool = False
    state: str | None = None
    seen_since: datetime | None = None
    q: str | None = None


def _latest_state() -> ScalarSelect[str]:
    """The state of the device's newest offer (one probe of the (device_pk, id) index per device)."""
    return (select(DeviceUpdate.state).where(DeviceUpdate.device_pk == Device.id)
            .order_by(DeviceUpdate.id.desc()).limit(1).correlate(Device).scalar_subquery())


def inventory_page(session: Session, f: InventoryFilter, *, limit: int, after: str | None = None,
                   before: str | None = None) -> list[Device]:
    """Up to ``limit`` enrolled (not decommissioned) devices matching ``f``, by device id: the first ones after
    ``after``, or (``before``, the Fleet page's "previous") the last ones before it, still in device id order.

    Keyset pagination on the unique device id: a device enrolled between two pages appears on a later page if its
    id sorts after the cursor, and no device is skipped or repeated.
    """
    q = select(Device).where(Device.decommissioned_at.is_(None)).limit(limit)
    if before is not None:
        q = q.where(Device.device_id < before).order_by(Device.device_id.desc())
    else:
        q = q.order_by(Device.device_id)
    if after is not None:
        q = q.where(Device.device_id > after)
    if f.line is not None or f.version is not None or f.drift:
        runs = select(DeviceLine.id).where(DeviceLine.device_pk == Device.id)
        if f.line is not None:
            runs = runs.where(DeviceLine.line == f.line)
        if f.version is not None:
            runs = runs.where(DeviceLine.running_version == f.version)
        if f.drift:
            runs = runs.where(DeviceLine.drift.is_(True))
        q = q.where(runs.exists())
    for k, v in f.tags.items():
        q = q.where(Device.tags[k].as_string() == v)
    if f.state is not None:
        q = q.where(_latest_state() == f.state)
    if f.seen_since is not None:
        q = q.where(Device.last_seen_at >= f.seen_since)
    if f.q:
        q = q.where(func.lower(Device.device_id).contains(f.q.lower(), autoescape=True))
    rows = list(session.scalars(q))
    return rows[::-1] if before is not None else rows


def lines_of(session: Session, device_pks: list[int]) -> dict[int, list[DeviceLine]]:
    """device pk -> its lines by name, for one page of devices in one query."""
    out: dict[int, list[DeviceLine]] = {pk: [] for pk in device_pks}
    if device_pks:
        for row in session.scalars(select(DeviceLine).where(DeviceLine.device_pk.in_(device_pks))
                                   .order_by(DeviceLine.device_pk, DeviceLine.line)):
            out[row.device_pk].append(row)
    return out
