"""Device credentials as FastAPI dependencies.

A device token is looked up by its SHA-256 (the only form stored).  The
artifact endpoint also accepts the admin token, so ``device_or_admin``
returns the device row or None for an admin.

The lookup reads through ``Database.read_scope`` and the row is then merged
into the request's session without SQL.  Why: FastAPI runs a sync dependency
and the sync endpoint in different worker threads, and on SQLite the request
session's first statement takes the write lock (``BEGIN IMMEDIATE``).  Had
the lookup been that statement, the lock would be held while the request
waited for a free worker thread; in bursts of a few hundred cars every
thread was waiting for that lock and it was held for up to 28.6 s.  Now the
write transaction starts inside the endpoint, on the thread that finishes it.
(An unthrottled burst of a few hundred enrolling cars on SQLite still stalls:
enrolment is another path; the simulator caps its requests in flight.)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from server.deps import AppContext, Ctx, DbSession
from server.devices import store
from server.errors import Unauthorized
from server.orm import Device
from server.security import bearer, token_digest, tokens_equal


def device_by_token(session: Session, token: str | None) -> Device | None:
    """The device holding this token (looked up by its digest), or None."""
    return store.by_token(session, token_digest(token)) if token else None


def _attached_device(ctx: AppContext, session: Session, token: str | None) -> Device | None:
    """Look the token up without a write lock, then attach the row to ``session`` (no SQL)."""
    if not token:
        return None
    with ctx.db.read_scope() as reader:
        device = device_by_token(reader, token)
        if device is None:
            return None
        reader.expunge(device)  # keeps its loaded attributes (closing would expire them)
    return session.merge(device, load=False)


UNKNOWN_DEVICE = ("device token missing or unknown: enroll with the fleet enrollment token "
                  "(POST /api/v1/devices/enroll) and send 'Authorization: Bearer <device token>'")


def require_device(ctx: Ctx, session: DbSession, authorization: Annotated[str | None, Header()] = None) -> Device:
    """Raises Unauthorized unless the request carries a known device token."""
    device = _attached_device(ctx, session, bearer(authorization))
    if device is None:
        raise Unauthorized(UNKNOWN_DEVICE)
    return device


def device_or_admin(ctx: Ctx, session: DbSession, authorization: Annotated[str | None, Header()] = None) -> Device | None:
    """The calling device, or None for the admin.  Raises Unauthorized for anything else."""
    token = bearer(authorization)
    if tokens_equal(token, ctx.settings.admin_token):
        return None
    device = _attached_device(ctx, session, token)
    if device is None:
        raise Unauthorized("artifact downloads need a device token (or the admin token)")
    return device


CurrentDevice = Annotated[Device, Depends(require_device)]
DeviceOrAdmin = Annotated[Device | None, Depends(device_or_admin)]
