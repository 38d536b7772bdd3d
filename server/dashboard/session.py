"""The dashboard's login session: a signed, expiring cookie keyed by the admin token.

The operator types the admin token once into the login form; the browser
then carries ``ota_dash=<expires>.<hmac>`` instead of the token itself.  The
HMAC is keyed by the admin token, so rotating ``OTA_ADMIN_TOKEN`` logs every
browser out, and nothing is kept in server memory (any worker can check it).
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import time

COOKIE = "ota_dash"
SESSION_S = 12 * 3600  # a working day; the operator logs in again after that


def _mac(admin_token: str, expires: int) -> str:
    return hmac.new(admin_token.encode("utf-8"), f"dashboard-session:{expires}".encode(), hashlib.sha256).hexdigest()


def issue(admin_token: str, now: float | None = None, lifetime_s: int = SESSION_S) -> str:
    """A cookie value valid for ``lifetime_s`` seconds."""
    expires = int((now if now is not None else time.time()) + lifetime_s)
    return f"{expires}.{_mac(admin_token, expires)}"


def valid(cookie: str | None, admin_token: str | None, now: float | None = None) -> bool:
    """True if ``cookie`` was issued with ``admin_token`` and has not expired."""
    if not cookie or not admin_token:
        return False
    expires_text, _, mac = cookie.partition(".")
    if not expires_text.isdigit():
        return False
    expires = int(expires_text)
    if expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(mac, _mac(admin_token, expires))
