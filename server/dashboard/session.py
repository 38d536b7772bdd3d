"""The dashboard's login session and login throttle: the decisions, no I/O.

The operator types the admin token once into the login form; the browser then
carries ``ota_dash=<random session id>``.  The server stores only the id's
SHA-256 (``server/dashboard/session_store.py``) with an expiry, a revocation
time and an HMAC of the id under the admin token.  So:

- logout revokes the session for every worker, and a cookie copied before
  logout is refused after it (a signed-only cookie stayed valid until it expired);
- rotating ``OTA_ADMIN_TOKEN`` logs every browser out (the HMAC no longer matches);
- whoever reads the database cannot log in with what it holds.

Refused logins are counted per client address over a sliding window; at the
limit that address gets 429 with ``Retry-After`` until its oldest failure
leaves the window, even with the right token (the answer must not confirm a
guess).  A success clears only its own address's count.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from datetime import datetime, timedelta

COOKIE = "ota_dash"
SESSION_S = 12 * 3600  # a working day; the operator logs in again after that


def new_session_id() -> str:
    """The random value the browser holds (256 bits)."""
    return secrets.token_urlsafe(32)


def digest(session_id: str) -> str:
    """What the server stores instead of the session id."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def token_mac(admin_token: str, session_id: str) -> str:
    """Binds a session to the admin token it was issued under."""
    return hmac.new(admin_token.encode("utf-8"), f"dashboard-session:{session_id}".encode(), hashlib.sha256).hexdigest()


def still_valid(*, stored_mac: str, expires_at: datetime, revoked_at: datetime | None, session_id: str,
                admin_token: str | None, now: datetime) -> bool:
    """True if a stored session may be used now with the server's current admin token."""
    if not admin_token or revoked_at is not None or expires_at <= now:
        return False
    return hmac.compare_digest(stored_mac, token_mac(admin_token, session_id))


def retry_after_s(failures: list[datetime], *, now: datetime, limit: int, window_s: float) -> int | None:
    """Seconds until this address may try again, or None if it may try now.

    ``failures`` are its refused logins within the window; at ``limit`` of them it waits until the oldest
    leaves the window (at least 1 s, as ``Retry-After`` counts whole seconds).
    """
    if len(failures) < limit:
        return None
    oldest = sorted(failures)[-limit]
    wait = (oldest + timedelta(seconds=window_s) - now).total_seconds()
    return max(1, math.ceil(wait))
