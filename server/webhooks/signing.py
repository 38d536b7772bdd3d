"""The delivered body and its signature: what a receiver recomputes to trust a webhook.

``X-OTA-Signature: sha256=<hex HMAC-SHA256 of the raw body under the subscription's secret>``.  A
receiver must compare it in constant time and dedupe on ``X-OTA-Delivery`` (delivery is at least once).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any


def body(delivery_id: int, event: str, at: datetime, data: dict[str, Any]) -> bytes:
    """The JSON body POSTed for one delivery (compact, keys sorted: the same bytes on every attempt)."""
    return json.dumps({"id": delivery_id, "event": event, "at": at.isoformat(), "data": data},
                      separators=(",", ":"), sort_keys=True).encode()


def signature(secret: str, payload: bytes) -> str:
    """The ``X-OTA-Signature`` header value for ``payload``."""
    return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def verify(secret: str, payload: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``payload`` under ``secret`` (constant-time; for receivers)."""
    return header is not None and hmac.compare_digest(signature(secret, payload), header)
