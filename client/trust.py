"""The car's trust in the fleet's keys: a root key provisioned before first contact, and what it delegates.

    root public key (AgentConfig.root_public_key, provisioned)  verifies  the delegation
    the delegation {version, online keys, expires}               names     the keys that sign offers and statuses

No trust on first use: an enrolment answer, a ``GET /api/v1/keys`` answer or a stored ``trust.json`` is
believed only if the root key verifies it.  The highest delegation version seen is kept on disk, so an
attacker holding an old (rotated, revoked) online key cannot make the car go back to it.  The checks
here are pure (python-tuf's ``TrustedMetadataSet`` is the model); ``save``/``load`` are the only I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from client.atomic import write_atomic
from client.errors import OfferRejected, UnknownKey
from client.manifest import key_id, parse_time, verify_signature

#: How far a status's ``issued`` may be ahead of the car's clock (clocks drift; more is a forgery or a broken clock).
MAX_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Delegation:
    """A root-verified delegation: which online keys sign offers, until when, at which version."""

    version: int
    keys: Mapping[str, bytes]  # keyid -> raw Ed25519 public key
    expires: datetime
    envelope: dict[str, Any]


def verify_delegation(envelope: Any, root_public_key: bytes, *, now: datetime | None, min_version: int = 0) -> Delegation:
    """Check a delegation envelope against the provisioned root key.

    ``now`` None skips the expiry check (a stored delegation still says which versions are revoked).

    Raises:
        OfferRejected: not signed by the root key, malformed, expired, or older than ``min_version``
            (a rolled-back delegation would bring back a revoked online key).
    """
    signed = verify_signature(envelope, root_public_key, what="delegation")
    if signed.get("type") != "delegation":
        raise OfferRejected(f"delegation.type is {signed.get('type')!r}, expected 'delegation'")
    version = signed.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise OfferRejected(f"delegation.version is not a positive integer: {version!r}")
    if version < min_version:
        raise OfferRejected(f"delegation version {version} is older than version {min_version}, which this car "
                            "already trusts (a rotated-away key must not come back)")
    expires = parse_time(signed.get("expires"), "delegation.expires")
    if now is not None and expires <= now:
        raise OfferRejected(f"delegation expired at {expires.isoformat()}: the fleet operator must rotate the "
                            "online key (`ota keys rotate`)")
    keys: dict[str, bytes] = {}
    entries = signed.get("online_keys")
    if not isinstance(entries, list) or not entries:
        raise OfferRejected("delegation names no online keys")
    for entry in entries:
        try:
            raw = base64.b64decode(entry["public_key"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise OfferRejected(f"delegation has a malformed online key: {e}") from e
        if len(raw) != 32 or entry.get("keyid") != key_id(raw):
            raise OfferRejected("delegation's online key does not match its keyid")
        keys[key_id(raw)] = raw
    return Delegation(version, keys, expires, envelope)


def verify_by_any(envelope: Any, keys: Mapping[str, bytes], what: str = "offer") -> dict[str, Any]:
    """``envelope["signed"]`` if a signature by one of ``keys`` covers it.

    Raises:
        UnknownKey: no signature names a trusted key (the caller may fetch a newer delegation and retry).
        OfferRejected: malformed, or the trusted key's signature does not verify.
    """
    if not isinstance(envelope, dict) or not isinstance(envelope.get("signed"), dict) \
            or not isinstance(envelope.get("signatures"), list):
        raise OfferRejected(f"{what} is not a signed envelope ({{'signed': {{...}}, 'signatures': [...]}})")
    named = [s.get("keyid") for s in envelope["signatures"] if isinstance(s, dict)]
    for kid in named:
        if isinstance(kid, str) and kid in keys:
            return verify_signature(envelope, keys[kid], what=what)
    raise UnknownKey(f"{what} is not signed by a key this car trusts (signed by: "
                     f"{', '.join(str(k)[:12] for k in named) or 'nobody'})")


@dataclass(frozen=True)
class Status:
    """A verified "no offer" answer: the registry had nothing for this car, as of ``issued``, until ``expires``."""

    issued: datetime
    expires: datetime


def check_status(signed: dict[str, Any], *, device_id: str, now: datetime) -> Status:
    """Apply the freshness rules to a signature-checked status.

    Raises:
        OfferRejected: wrong type or device, issued in the future, or expired (a replayed old answer
            that may be hiding an update: TUF's freeze attack).
    """
    if signed.get("type") != "status":
        raise OfferRejected(f"status.type is {signed.get('type')!r}, expected 'status'")
    if signed.get("device_id") != device_id:
        raise OfferRejected(f"status is for device {signed.get('device_id')!r}, not this car ({device_id!r})")
    issued = parse_time(signed.get("issued"), "status.issued")
    expires = parse_time(signed.get("expires"), "status.expires")
    if issued > now + MAX_CLOCK_SKEW:
        raise OfferRejected(f"status issued at {issued.isoformat()}, ahead of the car's clock {now.isoformat()}")
    if expires <= now:
        raise OfferRejected(f"stale 'no offer' answer: it expired at {expires.isoformat()} (car clock "
                            f"{now.isoformat()}); an update may be withheld from this car")
    return Status(issued, expires)


def load(path: Path, root_public_key: bytes) -> Delegation | None:
    """The stored delegation if it verifies under ``root_public_key`` (expired or not), else None: fetch one."""
    try:
        envelope = json.loads(path.read_bytes())
        return verify_delegation(envelope, root_public_key, now=None)
    except (OSError, ValueError, OfferRejected):
        return None


def save(path: Path, delegation: Delegation, *, fsync: bool = True) -> None:
    """Keep the newest verified delegation (and so its version) across restarts."""
    write_atomic(path, json.dumps(delegation.envelope).encode(), fsync=fsync, what="trusted keys")


class TrustKeeper:
    """The agent's view of which keys speak for the fleet, kept in ``<state dir>/trust.json``.

    With a root key (every real car): only keys a root-verified delegation names are trusted, and a
    signature by an unknown key makes it fetch ``GET /keys`` once and try again (that is how a car
    follows ``ota keys rotate``).  Without one, only a car that was enrolled before root keys existed,
    or a test that writes its identity by hand, can run: it trusts the key in its identity file and can
    never enrol (no trust on first use).
    """

    def __init__(self, root_public_key: bytes | None, path: Path, *, fsync: bool = True) -> None:
        self.root = root_public_key
        self.path = path
        self.fsync = fsync
        self.delegation: Delegation | None = load(path, root_public_key) if root_public_key else None

    def keys(self, pinned: Mapping[str, bytes]) -> Mapping[str, bytes]:
        """The keys that may sign offers and statuses (``pinned``: the identity file's key, legacy)."""
        if self.root is None:
            return pinned
        return self.delegation.keys if self.delegation is not None else {}

    def accept(self, envelope: Any, now: datetime) -> Delegation:
        """Verify and keep a delegation (from enrolment or ``GET /keys``) if it is at least as new as ours.

        Raises:
            OfferRejected: no root key configured, or the delegation fails ``verify_delegation``.
        """
        if self.root is None:
            raise OfferRejected("this car has no root key: provision the fleet's root public key "
                                "(ota agent --root-key FILE; a development registry writes <data dir>/root.pub)")
        floor = self.delegation.version if self.delegation is not None else 0
        delegation = verify_delegation(envelope, self.root, now=now, min_version=floor)
        if self.delegation is None or delegation.version > self.delegation.version:
            save(self.path, delegation, fsync=self.fsync)
        self.delegation = delegation
        return delegation

    def expired(self, now: datetime) -> bool:
        return self.delegation is not None and self.delegation.expires <= now


def read_root_key(path: Path) -> bytes:
    """The raw root public key from a provisioning file (base64 of 32 bytes, as ``ota keys init`` writes root.pub).

    Raises:
        ValueError: unreadable, or not a base64 Ed25519 public key (the message names the file).
    """
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
    except (OSError, ValueError, binascii.Error) as e:
        raise ValueError(f"root key file {path} is unreadable or not base64 ({e})") from e
    if len(raw) != 32:
        raise ValueError(f"root key file {path} holds {len(raw)} bytes, not a raw Ed25519 public key (32)")
    return raw
