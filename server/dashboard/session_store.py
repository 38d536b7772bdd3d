"""SQL for dashboard sessions and refused logins (decisions in ``session.py``).

Each function runs inside the caller's transaction (``Database.run_write`` for
writes) and only flushes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from server import audit
from server.dashboard import session as decide
from server.db import as_utc
from server.orm import DashboardLoginFailure, DashboardSession

KEEP_EXPIRED = timedelta(days=1)  # expired sessions are deleted a day later, at some later login


@dataclass(frozen=True)
class LoginOutcome:
    """What a login attempt came to: a new session id, a refusal, or a wait."""

    session_id: str | None = None
    retry_after_s: int | None = None


def attempt_login(db: Session, *, client: str, token_ok: bool, admin_token: str, now: datetime, lifetime_s: int,
                  limit: int, window_s: float) -> LoginOutcome:
    """Throttle, then either record a failure or open a session for ``client``.

    Both are audited (``dashboard.login``, outcome ok or refused); a throttled attempt is not (the refusals
    that earned the wait are, and a client hammering the form must not fill the audit log).
    """
    since = now - timedelta(seconds=window_s)
    db.execute(delete(DashboardLoginFailure).where(DashboardLoginFailure.at < since))
    failures = [as_utc(at) for at in db.scalars(select(DashboardLoginFailure.at).where(
        DashboardLoginFailure.client == client, DashboardLoginFailure.at >= since))]
    wait = decide.retry_after_s(failures, now=now, limit=limit, window_s=window_s)
    if wait is not None:
        return LoginOutcome(retry_after_s=wait)
    if not token_ok:
        db.add(DashboardLoginFailure(client=client, at=now))
        audit.record(db, f"client:{client}", "dashboard.login", target="dashboard", outcome="refused", client=client,
                     reason="not the admin token")
        db.flush()
        return LoginOutcome()
    db.execute(delete(DashboardLoginFailure).where(DashboardLoginFailure.client == client))
    db.execute(delete(DashboardSession).where(DashboardSession.expires_at < now - KEEP_EXPIRED))
    session_id = decide.new_session_id()
    db.add(DashboardSession(id_sha256=decide.digest(session_id), token_mac=decide.token_mac(admin_token, session_id),
                            client=client[:100], created_at=now, expires_at=now + timedelta(seconds=lifetime_s),
                            revoked_at=None))
    audit.record(db, "admin", "dashboard.login", target="dashboard", client=client)
    db.flush()
    return LoginOutcome(session_id=session_id)


def is_valid(db: Session, session_id: str, *, admin_token: str | None, now: datetime) -> bool:
    """True if ``session_id`` names a stored session that is unexpired, unrevoked and under this admin token."""
    row = db.get(DashboardSession, decide.digest(session_id))
    if row is None:
        return False
    return decide.still_valid(stored_mac=row.token_mac, expires_at=as_utc(row.expires_at),
                              revoked_at=row.revoked_at, session_id=session_id, admin_token=admin_token, now=now)


def revoke(db: Session, session_id: str, *, now: datetime, client: str = "unknown") -> None:
    """Logout: the session is refused from now on, by every worker (audited when it was a live session)."""
    done = db.execute(update(DashboardSession).where(DashboardSession.id_sha256 == decide.digest(session_id),
                                                     DashboardSession.revoked_at.is_(None)).values(revoked_at=now))
    if getattr(done, "rowcount", 0):
        audit.record(db, "admin", "dashboard.logout", target="dashboard", client=client)
