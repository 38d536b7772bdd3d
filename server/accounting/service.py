"""Transfer records and their aggregates per rollout and stage.

A record is written once per artifact request, after the response ends (or
the client goes away), with the bytes the server actually handed to the
socket.  Aggregates compare what was sent with what sending every updated
car the full fp32 model, or the full compressed package, would have cost.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounting import schemas, store
from server.db import as_utc
from server.errors import NotFound, Unprocessable
from server.orm import Line, Package, Rollout, Transfer, Version
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


def _device_rows(session: Session, r: Rollout, sums: list[store.DeviceSums], percents: list[float],
                 updates: list[tuple[int, str, str, int]], include_cached: bool) -> list[schemas.DeviceTransfer]:
    """Per-car figures from per-car SQL sums (``store.DeviceSums``) and the rollout's offers.  ``include_cached``
    (every car of the rollout, for the totals) adds cars that installed without a download through us (zero
    bytes); without it ``sums`` is a short page and the per-car lookups name its cars."""
    pks = None if include_cached else [s.device_pk for s in sums if s.device_pk is not None]  # all, or a page
    deltas = store.latest_delta(session, r.id, pks)
    first = store.first_full(session, r.id, pks)
    state: dict[int, tuple[str, int]] = {}
    for pk, _did, offer_state, reported in updates:  # by offer id: the newest offer's state, the largest report
        state[pk] = (offer_state, max(reported, state.get(pk, ("", 0))[1]))
    rows: list[schemas.DeviceTransfer] = []
    seen: set[int] = set()
    for s in sums:
        key = s.device_id or "admin"
        base, size = deltas.get(s.device_pk, (None, first.get(s.device_pk, 0))) if s.device_pk is not None \
            else (None, 0)
        kind = "delta" if s.device_pk in deltas else "full"
        st: str | None = None
        rep = 0
        if s.device_pk is not None and s.device_pk in state:
            st, rep = state[s.device_pk]
        rows.append(schemas.DeviceTransfer(
            device_id=key, stage=staging.stage_of(r.id, key, percents) if s.device_id else None, kind=kind,
            base_version=base, artifact_bytes=size, bytes_sent=s.bytes_sent, requests=s.requests, resumes=s.resumes,
            bytes_reported=rep, state=st, first_request_at=as_utc(s.first_request_at),
            last_request_end_at=as_utc(s.last_request_end_at)))
        if s.device_pk is not None:
            seen.add(s.device_pk)
    if include_cached:
        ids = {pk: did for pk, did, _st, _rep in updates}
        for pk, (offer_state, reported) in state.items():
            if pk not in seen and offer_state == "installed":
                rows.append(schemas.DeviceTransfer(
                    device_id=ids[pk], stage=staging.stage_of(r.id, ids[pk], percents), kind="none",
                    base_version=None, artifact_bytes=0, bytes_sent=0, requests=0, resumes=0, bytes_reported=reported,
                    state=offer_state))
    return rows


def rollout_accounting(session: Session, rollout_id: int, largest: int = 10) -> schemas.RolloutAccounting:
    """Totals, per-stage totals and the largest per-device transfers of one rollout.

    The transfers are summed per car in SQL (one row per car, not per request); the stage of a car is a hash of
    its id (``stages.stage_of``), so the per-stage sums are added up here from those rows.  The largest cars are
    chosen, sorted and cut in SQL.

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
    updates = store.update_states(session, r.id)
    rows = _device_rows(session, r, store.device_sums(session, r.id), percents, updates, include_cached=True)
    top = store.largest(session, largest, rollout_id=r.id)
    top_rows = _device_rows(session, r, top, percents, store.update_states(
        session, r.id, [s.device_pk for s in top if s.device_pk is not None]), include_cached=False)
    if len(top_rows) < largest:  # cars that installed without a download come after every download
        top_rows += [d for d in rows if d.kind == "none"][:largest - len(top_rows)]
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
        largest=top_rows,
    )


def largest_transfers(session: Session, limit: int) -> list[tuple[int, schemas.DeviceTransfer]]:
    """(rollout id, per-car figures) of the ``limit`` cars the most bytes went to over every rollout, most first:
    grouped, sorted and cut in SQL (the Bandwidth page's table)."""
    out: list[tuple[int, schemas.DeviceTransfer]] = []
    top = store.largest(session, limit)
    for rid in dict.fromkeys(s.rollout_id for s in top):
        r = session.get(Rollout, rid)
        if r is None:
            continue
        mine = [s for s in top if s.rollout_id == rid]
        percents = [s.percent for s in rollout_store.stages(session, r.id)]
        updates = store.update_states(session, r.id, [s.device_pk for s in mine if s.device_pk is not None])
        out += [(r.id, d) for d in _device_rows(session, r, mine, percents, updates, include_cached=False)]
    return sorted(out, key=lambda x: -x[1].bytes_sent)


_CURSOR = "t:"


def encode_cursor(transfer_id: int) -> str:
    """The opaque ``X-Next-Cursor`` of a page ending at this record (base64url, no padding)."""
    return base64.urlsafe_b64encode(f"{_CURSOR}{transfer_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The record id a cursor continues below.

    Raises:
        Unprocessable: not a cursor this endpoint made (422 naming the ``cursor`` parameter).
    """
    bad = Unprocessable(f"cursor {cursor[:40]!r} is not a cursor of GET /accounting/transfers (pass X-Next-Cursor "
                        "unchanged)", code="bad_cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as e:
        raise bad from e
    digits = raw.removeprefix(_CURSOR)
    if not raw.startswith(_CURSOR) or not digits.isascii() or not digits.isdigit() or len(digits) > 18:
        raise bad
    return int(digits)


def transfers(session: Session, f: store.TransferFilter, *, limit: int = 100, cursor: str | None = None
              ) -> tuple[list[schemas.TransferOut], str | None]:
    """One page of transfer records, newest first, and the cursor of the next (older) page (None: the last).

    Raises:
        Unprocessable: a malformed cursor.
    """
    before = decode_cursor(cursor) if cursor is not None else None
    rows = store.page(session, f, limit=limit, before=before)
    out = [schemas.TransferOut(device_id=d, rollout_id=t.rollout_id, artifact_sha256=t.artifact_sha256, kind=t.kind,
                               base_version=t.base_version, target_version=t.target_version,
                               artifact_bytes=t.artifact_bytes, range_start=t.range_start, bytes_sent=t.bytes_sent,
                               complete=t.complete, started_at=t.started_at, ended_at=t.ended_at)
           for t, d in rows]
    return out, encode_cursor(rows[-1][0].id) if len(rows) == limit else None
