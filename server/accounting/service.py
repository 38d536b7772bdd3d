"""Transfer records and their aggregates per rollout and stage.

A record is written once per artifact request, after the response ends (or
the client goes away), with the bytes the server actually handed to the
socket.  Aggregates compare what was sent with what sending every updated
car the full fp32 model, or the full compressed package, would have cost.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounting import schemas, store
from server.db import as_utc
from server.errors import NotFound
from server.orm import Device, DeviceUpdate, Line, Package, Rollout, Transfer, Version
from server.rollouts import stages as staging
from server.rollouts import store as rollout_store


@dataclass(frozen=True)
class Attribution:
    """Who a download is counted against, decided before streaming starts."""

    device_pk: int | None
    update_id: int | None
    rollout_id: int | None
    artifact_sha256: str
    kind: str  # "full" | "delta"
    base_version: int | None
    target_version: int | None
    artifact_bytes: int
    range_start: int


def record(session: Session, a: Attribution, bytes_sent: int, complete: bool, started: datetime,
           ended: datetime) -> None:
    store.add(session, Transfer(
        device_pk=a.device_pk, update_id=a.update_id, rollout_id=a.rollout_id, artifact_sha256=a.artifact_sha256,
        kind=a.kind, base_version=a.base_version, target_version=a.target_version, artifact_bytes=a.artifact_bytes,
        range_start=a.range_start, bytes_sent=bytes_sent, complete=complete, started_at=started, ended_at=ended))


def _ratio(sent: int, baseline: int) -> float | None:
    return round(1 - sent / baseline, 4) if baseline else None


def _totals(rows: list[schemas.DeviceTransfer], fp32: int, package: int) -> dict:
    updated = sum(1 for r in rows if r.state == "installed")
    sent = sum(r.bytes_sent for r in rows)
    return dict(
        devices=len(rows), devices_updated=updated, requests=sum(r.requests for r in rows),
        resumes=sum(r.resumes for r in rows), bytes_sent=sent, bytes_reported=sum(r.bytes_reported for r in rows),
        delta_bytes=sum(r.bytes_sent for r in rows if r.kind == "delta"),
        full_bytes=sum(r.bytes_sent for r in rows if r.kind != "delta"),
        bytes_per_updated_car=round(sent / updated, 1) if updated else None,
        fp32_bytes_equivalent=updated * fp32, package_bytes_equivalent=updated * package,
        savings_vs_fp32=_ratio(sent, updated * fp32) if updated else None,
        savings_vs_package=_ratio(sent, updated * package) if updated else None,
    )


def rollout_accounting(session: Session, rollout_id: int, largest: int = 10) -> schemas.RolloutAccounting:
    """Totals, per-stage totals and the largest per-device transfers of one rollout.

    Raises:
        NotFound: unknown rollout.
    """
    r = session.get(Rollout, rollout_id)
    if r is None:
        raise NotFound(f"rollout {rollout_id} does not exist")
    line = session.get(Line, r.line_id)
    version = session.get(Version, r.version_id)
    pkg = session.scalar(select(Package).where(Package.version_id == r.version_id, Package.codec == r.codec,
                                               Package.variant == 0))  # the version's own export (issue 20)
    percents = [s.percent for s in rollout_store.stages(session, r.id)]
    per_device: dict[str, schemas.DeviceTransfer] = {}
    for t, device_id in store.for_rollout(session, r.id):
        key = device_id or "admin"
        d = per_device.get(key)
        if d is None:
            d = per_device[key] = schemas.DeviceTransfer(
                device_id=key, stage=staging.stage_of(r.id, key, percents) if device_id else None, kind=t.kind,
                base_version=t.base_version, artifact_bytes=t.artifact_bytes, bytes_sent=0, requests=0, resumes=0,
                bytes_reported=0, state=None)
        d.bytes_sent += t.bytes_sent
        d.first_request_at = min(filter(None, [d.first_request_at, as_utc(t.started_at)]))
        d.last_request_end_at = max(filter(None, [d.last_request_end_at, as_utc(t.ended_at)]))
        d.requests += 1
        d.resumes += 1 if t.range_start > 0 else 0
        if t.kind == "delta":
            d.kind, d.base_version, d.artifact_bytes = "delta", t.base_version, t.artifact_bytes
    updates = list(session.scalars(select(DeviceUpdate).where(DeviceUpdate.rollout_id == r.id)))
    ids = {pk: did for pk, did in session.execute(
        select(Device.id, Device.device_id).where(Device.id.in_([u.device_pk for u in updates] or [-1])))}
    for u in updates:
        d = per_device.get(ids.get(u.device_pk, ""))
        if d is not None:
            d.state = u.state
            d.bytes_reported = max(d.bytes_reported, u.bytes_reported or 0)
        elif u.state == "installed":  # installed without a download through us (e.g. cached): zero bytes
            did = ids.get(u.device_pk, "?")
            per_device[did] = schemas.DeviceTransfer(
                device_id=did, stage=staging.stage_of(r.id, did, percents), kind="none", base_version=None,
                artifact_bytes=0, bytes_sent=0, requests=0, resumes=0, bytes_reported=u.bytes_reported or 0,
                state=u.state)
    rows = list(per_device.values())
    fp32 = version.source_bytes if version else 0
    full = pkg.bytes if pkg else 0
    by_stage: dict[int, list[schemas.DeviceTransfer]] = defaultdict(list)
    for d in rows:
        if d.stage is not None:
            by_stage[d.stage].append(d)
    return schemas.RolloutAccounting(
        rollout_id=r.id, line=line.name if line else "?", target_version=r.target_version, codec=r.codec,
        totals=schemas.Totals(**_totals(rows, fp32, full)),
        stages=[schemas.StageTotals(stage=i, **_totals(by_stage.get(i, []), fp32, full)) for i in range(len(percents))],
        largest=sorted(rows, key=lambda d: d.bytes_sent, reverse=True)[:largest],
    )


def transfers(session: Session, limit: int = 100) -> list[schemas.TransferOut]:
    return [schemas.TransferOut(device_id=d, rollout_id=t.rollout_id, artifact_sha256=t.artifact_sha256, kind=t.kind,
                                base_version=t.base_version, target_version=t.target_version,
                                artifact_bytes=t.artifact_bytes, range_start=t.range_start, bytes_sent=t.bytes_sent,
                                complete=t.complete, started_at=t.started_at, ended_at=t.ended_at)
            for t, d in store.recent(session, limit)]
