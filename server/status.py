"""Signed "no offer" answers: a per-device status the car checks for freshness (docs/PROTOCOL.md "Poll").

An unsigned ``{"offer": null}`` lets anyone between the car and the registry hide an update for ever by
replaying it (TUF's freeze attack).  Every "no offer" answer therefore carries an envelope, signed by
the online key, that names the device and when it expires; the car refuses an answer without one, for
another device, or past its expiry, so a withheld update is noticed within ``OTA_STATUS_TTL_S``.

Signing costs ~50 us, too much for every cached poll (issue 8's fast path answers in a few), so each
process keeps one encoded status per device and signs it again once half its lifetime has passed.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from server.security import Signer

MAX_ENTRIES = 200_000  # a bound on memory (~0.5 KB each); past it the cache starts over


class StatusCache:
    """device id -> (re-sign after, encoded envelope)."""

    def __init__(self, signer: Signer, ttl_s: float) -> None:
        self._signer = signer
        self._ttl = timedelta(seconds=ttl_s)
        self._entries: dict[str, tuple[datetime, bytes]] = {}

    def get(self, device_id: str, now: datetime) -> bytes:
        """The encoded status envelope for ``device_id``, fresh for at least half the TTL."""
        entry = self._entries.get(device_id)
        if entry is not None and now < entry[0]:
            return entry[1]
        expires = now + self._ttl
        signed = {"type": "status", "device_id": device_id, "offer": None,
                  "issued": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        encoded = json.dumps(self._signer.envelope(signed), separators=(",", ":")).encode()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[device_id] = (now + self._ttl / 2, encoded)
        return encoded
