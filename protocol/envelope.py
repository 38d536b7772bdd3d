"""Signed envelopes: ``{"signed": {...}, "signatures": [{"keyid": ..., "sig": ...}]}``.

Ed25519 over the canonical JSON of ``signed`` (:mod:`protocol.canonical`).  The registry signs
offers, statuses and delegations with :func:`sign`; the car checks them with :func:`verify` against
a key it already trusts.  A signature by any other key is ignored, never an error by itself: a
verifier looks only for the key it pinned.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.canonical import canonical_json, key_id
from protocol.errors import BadSignature, MalformedMessage


def public_raw(private_key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``private_key``."""
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(private_key: Ed25519PrivateKey, signed: dict[str, Any]) -> dict[str, Any]:
    """Wrap ``signed`` in an envelope with one signature by ``private_key``."""
    sig = private_key.sign(canonical_json(signed))
    return {"signed": signed,
            "signatures": [{"keyid": key_id(public_raw(private_key)), "sig": base64.b64encode(sig).decode("ascii")}]}


def load_public_key(public_key_raw: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from its 32 raw bytes.

    Raises:
        BadSignature: the bytes are not a raw Ed25519 public key.
    """
    try:
        return Ed25519PublicKey.from_public_bytes(public_key_raw)
    except ValueError as e:
        raise BadSignature(f"pinned public key is not a raw Ed25519 key ({len(public_key_raw)} bytes)") from e


def verify(envelope: Any, public_key_raw: bytes, what: str = "offer") -> dict[str, Any]:
    """Return ``envelope["signed"]`` if one signature by ``public_key_raw`` covers it.

    Raises:
        MalformedMessage: not an envelope, or no signatures.
        BadSignature: no valid signature by that key (the message names the keys that did sign).
    """
    if not isinstance(envelope, dict) or not isinstance(envelope.get("signed"), dict):
        raise MalformedMessage(f"{what} is not a signed envelope ({{'signed': {{...}}, 'signatures': [...]}})")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise MalformedMessage(f"{what} carries no signatures")
    pinned = key_id(public_key_raw)
    key = load_public_key(public_key_raw)
    payload = canonical_json(envelope["signed"])
    for entry in signatures:
        if not isinstance(entry, dict) or entry.get("keyid") != pinned:
            continue
        try:
            key.verify(base64.b64decode(entry.get("sig", ""), validate=True), payload)
        except (InvalidSignature, binascii.Error, ValueError, TypeError):
            continue
        return envelope["signed"]
    keyids = ", ".join(str(s.get("keyid"))[:12] for s in signatures if isinstance(s, dict))
    raise BadSignature(f"{what}: no valid signature by the trusted key {pinned[:12]}... "
                       f"(signed by: {keyids or 'nobody'})")


def is_signed_by(envelope: Any, public_key_raw: bytes) -> bool:
    """True if one signature by ``public_key_raw`` covers ``envelope["signed"]``."""
    try:
        verify(envelope, public_key_raw)
    except (MalformedMessage, BadSignature):
        return False
    return True
