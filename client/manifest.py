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

__all__ = ["MAX_MANIFEST_AHEAD_MS", "MAX_SMOKE_INPUTS", "MAX_SMOKE_VALUES", "Artifact", "Delta", "Offer", "Smoke", "canonical_json", "check_offer",
           "key_id", "parse_time", "verify_signature"]

#: The registry numbers offers by its clock in ms; one further ahead than this is a forgery (or a broken clock).
MAX_MANIFEST_AHEAD_MS = 24 * 3600 * 1000
#: Golden inputs an offer may ask the car to generate and run (the registry sends 3).
MAX_SMOKE_INPUTS = 16
#: Float values of all golden inputs together (256 MB of float32): the car allocates them before the test.
MAX_SMOKE_VALUES = 1 << 26


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
    _check_smoke_fits_contract(offer)
    return offer


def _check_smoke_fits_contract(offer: Offer) -> None:
    """The smoke test must feed the contract's input, in the contract's shape, within the car's means.

    The registry computes the smoke shape from the contract (the model's batch, the contract's size);
    an offer whose two disagree is not one the registry made, and is refused before anything is fetched.

    Raises:
        OfferRejected: another input, another shape, or more golden inputs than the car will generate.
    """
    smoke, contract = offer.smoke, offer.contract
    if smoke.input_name != contract.input_name:
        raise OfferRejected(f"offer's smoke test feeds input {smoke.input_name!r}, its contract {contract.input_name!r}")
    wanted = contract.input_shape(1)[1:]
    if len(smoke.shape) != len(wanted) + 1 or tuple(smoke.shape[1:]) != wanted:
        raise OfferRejected(f"offer's smoke shape {list(smoke.shape)} does not fit its contract "
                            f"({contract.layout}, {contract.height}x{contract.width}: [batch, {', '.join(map(str, wanted))}])")
    values = smoke.count * smoke.shape[0] * contract.height * contract.width * 3
    if not 1 <= smoke.count <= MAX_SMOKE_INPUTS or values > MAX_SMOKE_VALUES:
        raise OfferRejected(f"offer's smoke test asks for {smoke.count} golden input(s) of shape {list(smoke.shape)}; "
                            f"this car runs 1 to {MAX_SMOKE_INPUTS}, at most {MAX_SMOKE_VALUES} values in all")
