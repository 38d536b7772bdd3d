"""Tokens and Ed25519 signing of offers (docs/PROTOCOL.md, "Signed envelope").

The signature covers the canonical JSON of ``signed``: sorted keys, no
whitespace, UTF-8.  ``Signer`` holds the online key; where it comes from and
which root key vouches for it is ``server/keys.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import envelope as _envelope
from protocol.canonical import canonical_json, key_id

__all__ = ["Signer", "bearer", "canonical_json", "new_token", "token_digest", "tokens_equal", "verify_envelope"]


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Devices' tokens are stored only as their SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_equal(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Signer:
    """Signs envelopes with the registry's Ed25519 key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_raw = _envelope.public_raw(private_key)
        self.key_id = key_id(self.public_raw)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode("ascii")

    def envelope(self, signed: dict[str, Any]) -> dict[str, Any]:
        return _envelope.sign(self._key, signed)


def verify_envelope(envelope: dict[str, Any], public_raw: bytes) -> bool:
    """True if one signature by ``public_raw`` covers ``envelope['signed']``."""
    return _envelope.is_signed_by(envelope, public_raw)
