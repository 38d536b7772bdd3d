"""SQL for rollouts, their stages, and the per-stage device counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from server.orm import Device, DeviceLine, DeviceUpdate, QualityHistory, QualitySummary, Rollout, RolloutStage, Transfer
from server.rollouts.machine import OFFERING


def rollout(session: Session, rollout_id: int, *, lock: bool = False) -> Rollout | None:
    q = select(Rollout).where(Rollout.id == rollout_id)
    if lock:
        # serialises transitions between workers on PostgreSQL; populate_existing: a rollout this session read
        # before the lock (the tick lists running rollouts first) takes the locked row's state, not the stale one
        q = q.with_for_update().execution_options(populate_existing=True)
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
    """(count, highest primary key) of the line's active devices: changes when a device enrols on or joins the
    line, or is decommissioned."""
    count, top = session.execute(select(func.count(DeviceLine.id), func.max(DeviceLine.id))
                                 .join(Device, Device.id == DeviceLine.device_pk)
                                 .where(DeviceLine.line == line, Device.decommissioned_at.is_(None))).one()
    return int(count or 0), int(top or 0)


def line_members(session: Session, line: str, *,
                 with_tags: bool) -> list[tuple[int, str, dict[str, Any] | None, str | None]]:
    """(pk, device id, tags or None, platform digest) of the line's devices (those with a row for the line),
    decommissioned ones left out: columns only, no ORM objects (10,000 rows)."""
    active = (DeviceLine.line == line, Device.decommissioned_at.is_(None))
    on_line = (Device.id == DeviceLine.device_pk)
    if with_tags:
        rows = session.execute(select(Device.id, Device.device_id, Device.tags, Device.platform_sha256)
                               .join(DeviceLine, on_line).where(*active))
        return [(pk, did, tags, digest) for pk, did, tags, digest in rows]
    rows = session.execute(select(Device.id, Device.device_id, Device.platform_sha256)
                           .join(DeviceLine, on_line).where(*active))
    return [(pk, did, None, digest) for pk, did, digest in rows]


def platforms(session: Session, digests: set[str]) -> dict[str, dict[str, Any]]:
    """digest -> one stored platform with that digest (a fleet has a handful of distinct platforms)."""
    if not digests:
        return {}
    first = (select(func.min(Device.id)).where(Device.platform_sha256.in_(digests))
             .group_by(Device.platform_sha256))
    rows = session.execute(select(Device.platform_sha256, Device.platform).where(Device.id.in_(first)))
    return {digest: platform for digest, platform in rows if digest and platform}


def selected_platforms(session: Session, line: str, selector: dict[str, str]) -> list[str | None]:
    """The platform digest (None: never reported) of every active device a new rollout of ``line`` with
    ``selector`` could reach: the line's devices and those that have not polled any line yet."""
    on_line = select(DeviceLine.device_pk).where(DeviceLine.line == line)
    any_line = select(DeviceLine.device_pk)
    rows = session.execute(select(Device.tags, Device.platform_sha256).where(
        Device.decommissioned_at.is_(None), Device.id.in_(on_line) | Device.id.not_in(any_line)))
    return [digest for tags, digest in rows
            if all(str((tags or {}).get(k)) == str(v) for k, v in selector.items())]


def latest_updates(session: Session, rollout_id: int) -> dict[int, tuple[str, datetime, str | None]]:
    """device pk -> (state, updated_at, install evidence) of its latest update in this rollout."""
    rows = session.execute(select(DeviceUpdate.device_pk, DeviceUpdate.state, DeviceUpdate.updated_at,
                                  DeviceUpdate.install_evidence)
                           .where(DeviceUpdate.rollout_id == rollout_id).order_by(DeviceUpdate.id))
    return {pk: (state, at, evidence) for pk, state, at, evidence in rows}


def fully_downloaded(session: Session, rollout_id: int, device_pks: set[int]) -> set[int]:
    """Those of ``device_pks`` the server sent one of the rollout's artifacts to the last byte (resumed
    transfers add up): the evidence for an unsigned install whose transfer record landed after its report."""
    if not device_pks:
        return set()
    rows = session.execute(select(Transfer.device_pk, Transfer.artifact_sha256, Transfer.artifact_bytes,
                                  Transfer.range_start, Transfer.bytes_sent)
                           .where(Transfer.rollout_id == rollout_id, Transfer.device_pk.in_(device_pks)))
    sent: dict[tuple[int, str], list[int]] = {}
    for pk, sha, size, start, n in rows:
        got = sent.setdefault((cast(int, pk), sha), [0, int(size), 0])  # device_pk is nullable; not in these rows
        got[0] += int(n)
        got[2] |= int(start) + int(n) >= int(size)
    return {pk for (pk, _sha), (total, size, reached_end) in sent.items() if reached_end and total >= size}


# -- quality summaries (issue 18) ---------------------------------------------------------------------------
def quality_row(session: Session, device_pk: int, rollout_id: int, candidate_version: int,
                kind: str) -> QualitySummary | None:
    return session.scalar(select(QualitySummary).where(
        QualitySummary.device_pk == device_pk, QualitySummary.rollout_id == rollout_id,
        QualitySummary.candidate_version == candidate_version, QualitySummary.kind == kind))


def quality_keys(session: Session, rollout_id: int, kind: str, candidate_version: int
                 ) -> list[tuple[int, int, int, int | None]]:
    """(id, device_pk, seq, stage) of each stored summary of this rollout, kind and candidate version (no JSON
    read)."""
    return [(i, d, q, st) for i, d, q, st in session.execute(
        select(QualitySummary.id, QualitySummary.device_pk, QualitySummary.seq, QualitySummary.stage).where(
            QualitySummary.rollout_id == rollout_id, QualitySummary.kind == kind,
            QualitySummary.candidate_version == candidate_version))]


def quality_summaries(session: Session, ids: list[int]) -> list[tuple[int, int, dict[str, Any]]]:
    """(id, seq, summary) of these stored summaries."""
    return [(i, q, d) for i, q, d in session.execute(
        select(QualitySummary.id, QualitySummary.seq, QualitySummary.summary).where(QualitySummary.id.in_(ids)))]


def was_offered(session: Session, device_pk: int, rollout_id: int) -> bool:
    """Whether this rollout ever offered the device a version (the device is in it)."""
    return session.scalar(select(DeviceUpdate.id).where(DeviceUpdate.device_pk == device_pk,
                                                        DeviceUpdate.rollout_id == rollout_id).limit(1)) is not None


def history(session: Session, rollout_id: int) -> list[QualityHistory]:
    return list(session.scalars(select(QualityHistory).where(QualityHistory.rollout_id == rollout_id)
                                .order_by(QualityHistory.id)))


def trim_history(session: Session, rollout_id: int, keep: int) -> None:
    """Delete all but the newest ``keep`` history points of the rollout."""
    ids = list(session.scalars(select(QualityHistory.id).where(QualityHistory.rollout_id == rollout_id)
                               .order_by(QualityHistory.id.desc()).offset(keep)))
    if ids:
        session.execute(delete(QualityHistory).where(QualityHistory.id.in_(ids)))


def offers_after(session: Session, rollout_id: int, *, after: int | None, limit: int, state: str | None = None,
                 q: str | None = None) -> list[tuple[str, DeviceUpdate]]:
    """Up to ``limit`` of the rollout's offers with their device ids, in offer order (update id) after ``after``.

    Keyset on the update id, which the ``rollout_id`` index already orders: no sort of the rollout's offers, and
    an offer made while a caller pages is newer than the cursor, so it comes on a later page.
    """
    query = (select(Device.device_id, DeviceUpdate).join(Device, Device.id == DeviceUpdate.device_pk)
             .where(DeviceUpdate.rollout_id == rollout_id).order_by(DeviceUpdate.id).limit(limit))
    if after is not None:
        query = query.where(DeviceUpdate.id > after)
    if state is not None:
        query = query.where(DeviceUpdate.state == state)
    if q:
        query = query.where(func.lower(Device.device_id).contains(q.lower(), autoescape=True))
    return [(did, u) for did, u in session.execute(query)]
