"""Device credentials as FastAPI dependencies.

A device token is looked up by its SHA-256 (the only form stored).  The
artifact endpoint also accepts the admin token, so ``device_or_admin``
returns the device row or None for an admin.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from server.deps import Ctx, DbSession
from server.devices import store
from server.errors import Unauthorized
from server.orm import Device
from server.security import bearer, token_digest, tokens_equal


def device_by_token(session: Session, token: str | None) -> Device | None:
    """The device holding this token (looked up by its digest), or None."""
    return store.by_token(session, token_digest(token)) if token else None


UNKNOWN_DEVICE = ("device token missing or unknown: enroll with the fleet enrollment token "
                  "(POST /api/v1/devices/enroll) and send 'Authorization: Bearer <device token>'")


def require_device(session: DbSession, authorization: Annotated[str | None, Header()] = None) -> Device:
    """Raises Unauthorized unless the request carries a known device token."""
    device = device_by_token(session, bearer(authorization))
    if device is None:
        raise Unauthorized(UNKNOWN_DEVICE)
    return device


def device_or_admin(ctx: Ctx, session: DbSession, authorization: Annotated[str | None, Header()] = None) -> Device | None:
    """The calling device, or None for the admin.  Raises Unauthorized for anything else."""
    token = bearer(authorization)
    if tokens_equal(token, ctx.settings.admin_token):
        return None
    device = device_by_token(session, token)
    if device is None:
        raise Unauthorized("artifact downloads need a device token (or the admin token)")
    return device


CurrentDevice = Annotated[Device, Depends(require_device)]
DeviceOrAdmin = Annotated[Device | None, Depends(device_or_admin)]
