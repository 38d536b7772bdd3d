"""Verification of signed offers: the pure core of the agent's trust decisions.

No I/O here (python-tuf's ``TrustedMetadataSet`` is the model): the caller
passes the envelope, the pinned key, the device id, the clock reading and what
it has accepted before; this module answers with a typed ``Offer`` or raises
``OfferRejected`` saying which rule failed.  Canonical JSON is exactly the
form in docs/PROTOCOL.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from client.errors import OfferRejected
from protocol import envelope
from protocol.canonical import canonical_json, key_id
from protocol.errors import BadSignature, MalformedMessage
from protocol.offer import Artifact, Delta, Offer, Smoke, parse_offer
from protocol.offer import parse_time as _parse_time

__all__ = ["MAX_MANIFEST_AHEAD_MS", "Artifact", "Delta", "Offer", "Smoke", "canonical_json", "check_offer",
           "key_id", "parse_time", "verify_signature"]

#: The registry numbers offers by its clock in ms; one further ahead than this is a forgery (or a broken clock).
MAX_MANIFEST_AHEAD_MS = 24 * 3600 * 1000


def parse_time(value: Any, where: str) -> datetime:
    """An ISO 8601 time from signed metadata (UTC when no zone is given).  Raises OfferRejected."""
    try:
        return _parse_time(value, where)
    except MalformedMessage as e:
        raise OfferRejected(str(e)) from e


def verify_signature(signed_envelope: Any, public_key_raw: bytes, what: str = "offer") -> dict[str, Any]:
    """Return ``envelope["signed"]`` if one signature by the pinned key covers it.

    Raises:
        OfferRejected: malformed envelope, unknown keyid, or no valid signature.
    """
    try:
        return envelope.verify(signed_envelope, public_key_raw, what)
    except (MalformedMessage, BadSignature) as e:
        raise OfferRejected(str(e)) from e


def check_offer(
    signed: dict[str, Any],
    *,
    device_id: str,
    now: datetime,
    highest_manifest_version: int,
    current_version: int,
) -> Offer:
    """Apply the protocol's refusal rules to a signature-checked ``signed`` body.

    Raises:
        OfferRejected: wrong type or device, malformed field, expired, replayed, or a downgrade
            without ``rollback``.
    """
    try:
        offer = parse_offer(signed)
    except MalformedMessage as e:
        raise OfferRejected(str(e)) from e
    if offer.device_id != device_id:
        raise OfferRejected(f"offer is for device {offer.device_id!r}, not this car ({device_id!r})")
    if offer.expires <= now:
        raise OfferRejected(f"offer expired at {offer.expires.isoformat()} (car clock {now.isoformat()})")
    ahead_ms = offer.manifest_version - int(now.timestamp() * 1000)
    if ahead_ms > MAX_MANIFEST_AHEAD_MS:
        raise OfferRejected(
            f"manifest_version {offer.manifest_version} is {ahead_ms / 86_400_000:.1f} days ahead of this car's "
            "clock: accepting it would lock out every genuine later offer"
        )
    if offer.manifest_version < highest_manifest_version:
        raise OfferRejected(
            f"replayed offer: manifest_version {offer.manifest_version} is below {highest_manifest_version}, "
            "the highest this car has accepted"
        )
    if offer.target_version < current_version and not offer.rollback:
        raise OfferRejected(
            f"downgrade refused: offer names version {offer.target_version} below the running "
            f"{current_version} and is not a signed rollback"
        )
    return offer
