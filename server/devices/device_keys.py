"""Device keys: the checks behind re-enrolment by key proof and signed reports (pure; docs/PROTOCOL.md).

Each car holds its own Ed25519 key pair; the server stores the raw public key (base64) at enrolment.
Possession of the registered private key is the device's long-lived credential: it proves a
re-enrolment (the car lost or had its bearer token rotated) and signs install reports, so another car
holding the fleet enrolment token cannot speak for it.  The bearer device token stays the credential
of the poll hot path (answered from a cache; no signature check there).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from server.errors import Unauthorized
from server.security import canonical_json

PROOF_WINDOW_MS = 5 * 60 * 1000  # a proof's timestamp may be this far from the server's clock, either way


def public_key(b64: str) -> Ed25519PublicKey:
    """The key from its raw 32 bytes in base64.  Raises ValueError for anything else."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("public_key is not base64") from e
    if len(raw) != 32:
        raise ValueError(f"public_key must be the raw 32-byte Ed25519 key, got {len(raw)} bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def _verifies(key_b64: str, signature_b64: str, payload: bytes) -> bool:
    try:
        public_key(key_b64).verify(base64.b64decode(signature_b64, validate=True), payload)
        return True
    except (InvalidSignature, ValueError, binascii.Error):
        return False


def proof_payload(device_id: str, new_public_key: str, timestamp_ms: int) -> bytes:
    """The bytes a re-enrolment proof signs (canonical JSON)."""
    return canonical_json({"type": "enroll", "device_id": device_id, "public_key": new_public_key,
                           "timestamp": timestamp_ms})


def check_proof(registered_key: str | None, last_proof_ms: int, device_id: str, new_public_key: str,
                timestamp_ms: int, signature: str, now_ms: int) -> None:
    """Accept a re-enrolment proof: signed by the id's current key, fresh, and newer than the last one.

    Raises:
        Unauthorized: no key registered, bad signature, timestamp outside the window, or a replay.
    """
    if registered_key is None:
        raise Unauthorized(f"device {device_id!r} has no registered key to prove; ask the operator to run "
                           f"`ota devices reauthorize {device_id}` and enrol with an enrolment token")
    if not _verifies(registered_key, signature, proof_payload(device_id, new_public_key, timestamp_ms)):
        raise Unauthorized(f"key proof for {device_id!r} does not verify with its registered key (another car holds "
                           "this id, or this car's key was replaced); an operator can allow one enrolment with a "
                           f"new key: `ota devices reauthorize {device_id}`")
    if abs(timestamp_ms - now_ms) > PROOF_WINDOW_MS:
        raise Unauthorized(f"key proof timestamp is {abs(timestamp_ms - now_ms) // 1000} s from the server's "
                           "clock (at most 300 s allowed); set the car's clock and retry")
    if timestamp_ms <= last_proof_ms:
        raise Unauthorized("key proof is not newer than the last one accepted for this device (a replay); "
                           "sign a fresh proof with the current time")


def report_verifies(registered_key: str | None, report: dict[str, Any]) -> bool:
    """True when ``report["signature"]`` signs the canonical JSON of the report without that field."""
    signature = report.get("signature")
    if registered_key is None or not isinstance(signature, str):
        return False
    return _verifies(registered_key, signature, canonical_json({k: v for k, v in report.items() if k != "signature"}))
