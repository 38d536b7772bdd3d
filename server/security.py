"""Tokens and Ed25519 signing of offers (docs/PROTOCOL.md, "Signed envelope").

The signature covers the canonical JSON of ``signed``: sorted keys, no
whitespace, UTF-8.  The signing key is a PEM file in the data directory,
generated on first start; the raw public key and its SHA-256 key id are what
a car pins at enrollment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from pathlib import Path
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

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """Load the PEM key at ``path``, generating it (mode 0600) on first start."""
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} is not an Ed25519 private key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pem)
        tmp.chmod(0o600)
        tmp.replace(path)
        return cls(key)

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
