"""The cars a rollout offered its version to, one bounded page at a time (``GET /rollouts/{id}/devices``).

Issue 21: a rollout of a million cars is never listed in one answer or loaded into Python.  A page is a keyset
query on the offer id (``store.offers_after``) with the ``state`` and device-id filters in SQL.  A car's stage is
a hash of its id (``stages.stage_of``), which SQL cannot compute, so the ``stage`` filter reads offers in batches
and keeps the car of that stage, reading at most ``SCAN_BATCHES`` batches per page: a page may then hold fewer
than ``limit`` cars, and its ``X-Next-Cursor`` says where to go on.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from server.db import as_utc, utcnow
from server.errors import NotFound, Unprocessable
from server.orm import DeviceUpdate, Rollout
from server.rollouts import schemas, store
from server.rollouts import stages as staging

SCAN_BATCHES = 10
_PREFIX = "o:"


@dataclass(frozen=True)
class DeviceFilter:
    state: str | None = None
    stage: int | None = None
    q: str | None = None


def encode_cursor(update_id: int) -> str:
    """The opaque cursor of a page that ends at this offer (base64url, no padding)."""
    return base64.urlsafe_b64encode(f"{_PREFIX}{update_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The offer id a cursor continues after.

    Raises:
        Unprocessable: not a cursor this endpoint made (422 naming ``cursor``).
    """
    bad = Unprocessable(f"cursor {cursor[:40]!r} is not a cursor of GET /rollouts/{{id}}/devices (pass "
                        "X-Next-Cursor unchanged)", code="bad_cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as e:
        raise bad from e
    digits = raw.removeprefix(_PREFIX)
    if not raw.startswith(_PREFIX) or not digits.isascii() or not digits.isdigit() or len(digits) > 18:
        raise bad
    return int(digits)


def _out(r: Rollout, device_id: str, u: DeviceUpdate, percents: list[float], shadow_stage: int | None,
         now: datetime) -> schemas.RolloutDeviceOut:
    """One row; ``stuck`` as ``service._tally`` counts it (a shadow-stage car at ``verified`` compares on purpose)."""
    updated = as_utc(u.updated_at)
    stage = staging.stage_of(r.id, device_id, percents)
    return schemas.RolloutDeviceOut(
        device_id=device_id, stage=stage, state=u.state,
        stuck=not (stage == shadow_stage and u.state == "verified")
        and staging.is_stuck(u.state, updated, now, r.in_progress_timeout_s),
        reason=u.reason, target_version=u.target_version, bytes_reported=u.bytes_reported or 0,
        offered_at=as_utc(u.created_at), updated_at=updated)


def page(session: Session, rollout_id: int, f: DeviceFilter, *, limit: int, cursor: str | None = None
         ) -> tuple[list[schemas.RolloutDeviceOut], str | None]:
    """One page of the rollout's cars in offer order and the cursor of the next (None: nothing more).

    Raises:
        NotFound: unknown rollout.
        Unprocessable: a malformed cursor, or a stage the rollout does not have.
    """
    after = decode_cursor(cursor) if cursor is not None else None
    r = session.get(Rollout, rollout_id)
    if r is None:
        raise NotFound(f"rollout {rollout_id} does not exist")
    stage_rows = store.stages(session, r.id)
    percents = [s.percent for s in stage_rows]
    shadow_stage = 0 if stage_rows and stage_rows[0].mode == "shadow" else None
    if f.stage is not None and f.stage >= len(percents):
        raise Unprocessable(f"stage must be below {len(percents)} (rollout {r.id} has {len(percents)} stages, "
                            f"numbered from 0), got {f.stage}", code="bad_stage")
    now = utcnow()
    out: list[schemas.RolloutDeviceOut] = []
    for _ in range(SCAN_BATCHES if f.stage is not None else 1):
        rows = store.offers_after(session, r.id, after=after, limit=limit, state=f.state, q=f.q)
        for device_id, u in rows:
            after = u.id
            if f.stage is None or staging.stage_of(r.id, device_id, percents) == f.stage:
                out.append(_out(r, device_id, u, percents, shadow_stage, now))
                if len(out) == limit:
                    return out, encode_cursor(u.id)
        if len(rows) < limit:
            return out, None  # read to the end
    return out, encode_cursor(after) if after is not None else None
