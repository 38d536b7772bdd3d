"""Tokens and Ed25519 signing of offers (docs/PROTOCOL.md, "Signed envelope").

The signature covers the canonical JSON of ``signed``: sorted keys, no
whitespace, UTF-8.  ``Signer`` holds the online key; where it comes from and
which root key vouches for it is ``server/keys.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def canonical_json(obj: Any) -> bytes:
    """The exact bytes a signature covers."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


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
        self.public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = hashlib.sha256(self.public_raw).hexdigest()

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode("ascii")

    def envelope(self, signed: dict[str, Any]) -> dict[str, Any]:
        sig = self._key.sign(canonical_json(signed))
        return {"signed": signed, "signatures": [{"keyid": self.key_id, "sig": base64.b64encode(sig).decode("ascii")}]}


def verify_envelope(envelope: dict[str, Any], public_raw: bytes) -> bool:
    """True if one signature by ``public_raw`` covers ``envelope['signed']``."""
    key = Ed25519PublicKey.from_public_bytes(public_raw)
    key_id = hashlib.sha256(public_raw).hexdigest()
    for s in envelope.get("signatures", []):
        if s.get("keyid") != key_id:
            continue
        try:
            key.verify(base64.b64decode(s["sig"]), canonical_json(envelope["signed"]))
            return True
        except Exception:  # noqa: BLE001 - any failure means "does not verify"
            return False
    return False
