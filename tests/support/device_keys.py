"""A car's Ed25519 key as the tests hold it: proofs for re-enrolment and signed reports (docs/PROTOCOL.md).

Written from the protocol text, independently of ``client/identity.py``, so the server tests check the
wire contract rather than the agent's own helper.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class DeviceKey:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_b64 = base64.b64encode(raw).decode()

    def sign(self, obj: dict[str, Any]) -> str:
        return base64.b64encode(self.key.sign(_canonical(obj))).decode()

    def proof(self, device_id: str, new_public_b64: str, timestamp_ms: int | None = None) -> dict[str, Any]:
        """The ``proof`` object of a re-enrolment: this (current) key vouches for ``new_public_b64``."""
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        signed = {"type": "enroll", "device_id": device_id, "public_key": new_public_b64, "timestamp": ts}
        return {"timestamp": ts, "signature": self.sign(signed)}

    def signed_report(self, report: dict[str, Any]) -> dict[str, Any]:
        return {**report, "signature": self.sign(report)}
