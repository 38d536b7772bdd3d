"""Device credentials: the token lookup, and the artifact endpoint's dependency.

A device token is looked up by its SHA-256 (the only form stored).  The
artifact endpoint also accepts the admin token, so ``device_or_admin``
returns the device row or None for an admin.

``device_or_admin`` reads through ``Database.read_scope`` and merges the row
into the request's session without SQL, so the lookup never holds the
request's write transaction while FastAPI hops between worker threads.
Enrolment, polls and reports look their token up inside their own write
transaction instead (``Database.run_write``: one thread, no hop).

Issue 8, closed: an unthrottled burst of a few hundred enrolling cars on
SQLite stalled for minutes.  FastAPI validates a sync endpoint's response
in a second worker thread before the request's session commits; with all 40
threads blocked in ``BEGIN IMMEDIATE`` (or on the connection pool), the
lock holder never got that thread and nothing moved until 30 s busy
timeouts failed the waiters.  Writers now wait for a write slot on the event
loop, holding no thread (``server/db.py``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from server.deps import AppContext, Ctx, ReadSession
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


def known_device(session: Session, token: str | None) -> Device:
    """The device holding this token, looked up in ``session`` (a write transaction's).  Raises Unauthorized."""
    device = device_by_token(session, token)
    if device is None:
        raise Unauthorized(UNKNOWN_DEVICE)
    return device


def device_or_admin(ctx: Ctx, session: ReadSession, authorization: Annotated[str | None, Header()] = None) -> Device | None:
    """The calling device, or None for the admin.  Raises Unauthorized for anything else."""
    token = bearer(authorization)
    if tokens_equal(token, ctx.settings.admin_token):
        return None
    device = _attached_device(ctx, session, token)
    if device is None:
        raise Unauthorized("artifact downloads need a device token (or the admin token)")
    return device


DeviceOrAdmin = Annotated[Device | None, Depends(device_or_admin)]
