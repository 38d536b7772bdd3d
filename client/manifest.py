"""Verification of signed offers: the pure core of the agent's trust decisions.

No I/O here (python-tuf's ``TrustedMetadataSet`` is the model): the caller
passes the envelope, the pinned key, the device id, the clock reading and what
it has accepted before; this module answers with a typed ``Offer`` or raises
``OfferRejected`` saying which rule failed.  Canonical JSON is exactly the
form in docs/PROTOCOL.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.errors import OfferRejected

#: The registry numbers offers by its clock in ms; one further ahead than this is a forgery (or a broken clock).
MAX_MANIFEST_AHEAD_MS = 24 * 3600 * 1000


def parse_time(value: Any, where: str) -> datetime:
    """An ISO 8601 time from signed metadata (UTC when no zone is given).  Raises OfferRejected."""
    if not isinstance(value, str):
        raise OfferRejected(f"{where} is missing or not a string: {value!r}")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise OfferRejected(f"{where} is not an ISO 8601 time: {value!r}") from e
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def canonical_json(signed: dict[str, Any]) -> bytes:
    """The bytes a signature covers (sorted keys, no spaces, UTF-8)."""
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id(public_key_raw: bytes) -> str:
    """Hex SHA-256 of the raw Ed25519 public key, as the server names it."""
    return hashlib.sha256(public_key_raw).hexdigest()


@dataclass(frozen=True)
class Artifact:
    """One downloadable file named in an offer."""

    sha256: str
    size: int
    url: str


@dataclass(frozen=True)
class Delta(Artifact):
    """A patch that turns the package with ``base_package_sha256`` into the offered package."""

    base_package_sha256: str = ""


@dataclass(frozen=True)
class Smoke:
    """Golden probe: inputs regenerated from ``seed``, outputs must match ``expected`` within ``atol``."""

    seed: int
    count: int
    shape: tuple[int, ...]
    input_name: str
    expected: list[list[float]]
    atol: float


@dataclass(frozen=True)
class Offer:
    """A verified offer: every field has been checked for type and signature."""

    device_id: str
    line: str
    rollout_id: int | None
    manifest_version: int
    target_version: int
    rollback: bool
    codec: str
    model_sha256: str
    labels: tuple[str, ...]
    package: Artifact
    delta: Delta | None
    smoke: Smoke
    expires: datetime


def verify_signature(envelope: Any, public_key_raw: bytes, what: str = "offer") -> dict[str, Any]:
    """Return ``envelope["signed"]`` if one signature by the pinned key covers it.

    Raises:
        OfferRejected: malformed envelope, unknown keyid, or no valid signature.
    """
    if not isinstance(envelope, dict) or not isinstance(envelope.get("signed"), dict):
        raise OfferRejected(f"{what} is not a signed envelope ({{'signed': {{...}}, 'signatures': [...]}})")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise OfferRejected(f"{what} carries no signatures")
    pinned = key_id(public_key_raw)
    key = _load_key(public_key_raw)
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
    raise OfferRejected(f"{what}: no valid signature by the trusted key {pinned[:12]}... "
                        f"(signed by: {keyids or 'nobody'})")


def _load_key(public_key_raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(public_key_raw)
    except ValueError as e:
        raise OfferRejected(f"pinned public key is not a raw Ed25519 key ({len(public_key_raw)} bytes)") from e


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
    offer = _parse(signed)
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


def _field(d: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str = "offer") -> Any:
    value = d.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise OfferRejected(f"{where}.{name} is missing or not {getattr(kind, '__name__', kind)}: {value!r}")
    return value


def _artifact(d: Any, where: str) -> tuple[str, int, str]:
    if not isinstance(d, dict):
        raise OfferRejected(f"{where} is not an object")
    sha = _field(d, "sha256", str, where)
    size = _field(d, "size", int, where)
    if size < 0 or len(sha) != 64:
        raise OfferRejected(f"{where} has a bad size or sha256")
    return sha, size, _field(d, "url", str, where)


def _parse(signed: dict[str, Any]) -> Offer:
    if signed.get("type") != "offer":
        raise OfferRejected(f"signed.type is {signed.get('type')!r}, expected 'offer'")
    sha, size, url = _artifact(signed.get("package"), "offer.package")
    delta = None
    if signed.get("delta") is not None:
        dsha, dsize, durl = _artifact(signed["delta"], "offer.delta")
        base = _field(signed["delta"], "base_package_sha256", str, "offer.delta")
        delta = Delta(dsha, dsize, durl, base_package_sha256=base)
    smoke = _field(signed, "smoke", dict)
    expires = parse_time(signed.get("expires"), "offer.expires")
    rollout_id = signed.get("rollout_id")
    if rollout_id is not None and not isinstance(rollout_id, int):
        raise OfferRejected(f"offer.rollout_id is not an integer or null: {rollout_id!r}")
    return Offer(
        device_id=_field(signed, "device_id", str),
        line=_field(signed, "line", str),
        rollout_id=rollout_id,
        manifest_version=_field(signed, "manifest_version", int),
        target_version=_field(signed, "target_version", int),
        rollback=bool(signed.get("rollback", False)),
        codec=_field(signed, "codec", str),
        model_sha256=_field(signed, "model_sha256", str),
        labels=tuple(str(x) for x in _field(signed, "labels", list)),
        package=Artifact(sha, size, url),
        delta=delta,
        smoke=Smoke(
            seed=_field(smoke, "seed", int, "offer.smoke"),
            count=_field(smoke, "count", int, "offer.smoke"),
            shape=tuple(int(x) for x in _field(smoke, "shape", list, "offer.smoke")),
            input_name=_field(smoke, "input_name", str, "offer.smoke"),
            expected=_field(smoke, "expected", list, "offer.smoke"),
            atol=float(_field(smoke, "atol", (int, float), "offer.smoke")),
        ),
        expires=expires,
    )
