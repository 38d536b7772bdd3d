"""Canonical JSON and key ids: the exact bytes a signature covers, the same on both ends.

Canonical form: keys sorted, no whitespace, UTF-8 (``ensure_ascii=False``).  The registry signs
it, the car verifies it, and the car's signed reports use it too; docs/PROTOCOL.md
("Signed envelope") states it.  (The codec's package header has its own, older ASCII-only form
inside package bytes -- :func:`models.codec.container.canonical` -- which is part of the package
format, not of the messages.)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id(public_key_raw: bytes) -> str:
    """A key's name in envelopes: hex SHA-256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key_raw).hexdigest()
