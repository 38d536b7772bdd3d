"""Enrolment tokens: the fleet token from the settings, and scoped tokens an operator mints.

A scoped token is stored as its SHA-256 only, with a name, an optional number of uses, an optional
expiry, tags forced onto every device enrolled with it, and a revocation time.  The settings' fleet
token (``OTA_ENROLLMENT_TOKEN``) works as a token with no limits.  No token of either kind can take
over an id that is already enrolled (``enrollment.py`` decides that); a token only admits new ids, or
an id the operator pre-authorised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server import audit
from server.config import Settings
from server.db import as_utc, utcnow
from server.devices import schemas
from server.errors import NotFound, Unauthorized
from server.orm import EnrollmentToken
from server.security import new_token, token_digest, tokens_equal

MISSING = "enrolment needs an enrolment token: 'Authorization: Bearer <enrollment token>'"


@dataclass(frozen=True)
class Grant:
    """What a presented enrolment token allows: who it is (for the audit log) and the tags it forces."""

    actor: str
    tags: dict[str, Any] = field(default_factory=dict)


def redeem(session: Session, settings: Settings, presented: str | None, now: datetime) -> Grant:
    """Check the token and count one use of a scoped one (rolled back with the enrolment if that fails).

    Raises:
        Unauthorized: missing, unknown, used up, expired or revoked (the message says which).
    """
    if not presented:
        raise Unauthorized(MISSING)
    if tokens_equal(presented, settings.enrollment_token):
        return Grant("enrollment:fleet")
    row = session.scalar(select(EnrollmentToken).where(EnrollmentToken.token_sha256 == token_digest(presented))
                         .with_for_update())
    if row is None:
        raise Unauthorized(f"enrolment token unknown; {MISSING}")
    name = f"token {row.id} ({row.name})"
    if row.revoked_at is not None:
        raise Unauthorized(f"enrolment {name} was revoked; ask the operator for a new one (`ota tokens create`)")
    if row.expires_at is not None and as_utc(row.expires_at) <= now:
        raise Unauthorized(f"enrolment {name} expired at {as_utc(row.expires_at):%Y-%m-%dT%H:%M:%SZ}; "
                           "ask the operator for a new one (`ota tokens create`)")
    if row.max_uses is not None and row.uses >= row.max_uses:
        raise Unauthorized(f"enrolment {name} is used up ({row.uses} of {row.max_uses} uses); ask the operator "
                           "for a new one (`ota tokens create --uses N`)")
    row.uses += 1
    return Grant(f"enrollment:{row.id}:{row.name}", dict(row.tags or {}))


def _out(row: EnrollmentToken) -> schemas.EnrollmentTokenOut:
    return schemas.EnrollmentTokenOut(id=row.id, name=row.name, tags=dict(row.tags or {}), max_uses=row.max_uses,
                                      uses=row.uses, expires_at=row.expires_at, revoked_at=row.revoked_at,
                                      created_by=row.created_by, created_at=row.created_at)


def create(session: Session, body: schemas.EnrollmentTokenIn, actor: str) -> schemas.EnrollmentTokenCreated:
    """Mint a scoped token; the clear token is in the answer only (the table keeps its digest)."""
    token, now = new_token(), utcnow()
    row = EnrollmentToken(name=body.name, token_sha256=token_digest(token), tags=dict(body.tags),
                          max_uses=body.max_uses, uses=0, created_by=actor, created_at=now,
                          expires_at=now + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None)
    session.add(row)
    session.flush()
    audit.record(session, actor, "token.create", token_id=row.id, name=row.name, max_uses=row.max_uses,
                 expires_at=row.expires_at.isoformat() if row.expires_at else None, tags=dict(body.tags),
                 outcome="ok")
    return schemas.EnrollmentTokenCreated(**_out(row).model_dump(), token=token)


def list_tokens(session: Session) -> list[schemas.EnrollmentTokenOut]:
    return [_out(r) for r in session.scalars(select(EnrollmentToken).order_by(EnrollmentToken.id))]


def revoke(session: Session, token_id: int, actor: str) -> schemas.EnrollmentTokenOut:
    """Refuse the token from now on (devices already enrolled with it are not affected).

    Raises:
        NotFound: no such token.
    """
    row = session.get(EnrollmentToken, token_id)
    if row is None:
        raise NotFound(f"enrolment token {token_id} does not exist (`ota tokens list` shows them)")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()
    audit.record(session, actor, "token.revoke", token_id=row.id, name=row.name, outcome="ok")
    return _out(row)
