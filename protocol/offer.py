"""The signed offer: what the registry tells one car to install (docs/PROTOCOL.md, "Offer").

One definition for both ends: the registry builds an :class:`Offer` and signs
:meth:`Offer.to_signed`; the car verifies the envelope and reads it back with :func:`parse_offer`,
which checks every field's type.  Whether the car should *accept* a well-formed offer (its device,
expiry, replay and downgrade rules) is the car's decision, in ``client/manifest.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from protocol.contract import InputContract
from protocol.errors import ContractError, MalformedMessage
from protocol.quality import QualityPlan

OFFER_TYPE = "offer"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def artifact_url(sha256: str) -> str:
    """Where the registry serves the artifact with this SHA-256."""
    return f"/api/v1/artifacts/{sha256}"


def format_time(t: datetime) -> str:
    """A UTC time as signed metadata writes it (ISO 8601, seconds, ``Z``); a naive time is taken as UTC."""
    return (t if t.tzinfo is None else t.astimezone(UTC)).strftime(TIME_FORMAT)


def parse_time(value: Any, where: str) -> datetime:
    """An ISO 8601 time from signed metadata (UTC when no zone is given).

    Raises:
        MalformedMessage: not a string, or not an ISO 8601 time.
    """
    if not isinstance(value, str):
        raise MalformedMessage(f"{where} is missing or not a string: {value!r}")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise MalformedMessage(f"{where} is not an ISO 8601 time: {value!r}") from e
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Artifact:
    """One downloadable file named in an offer."""

    sha256: str
    size: int
    url: str

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "url": self.url}


@dataclass(frozen=True)
class Delta(Artifact):
    """A patch that turns the package with ``base_package_sha256`` into the offered package."""

    base_package_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "base_package_sha256": self.base_package_sha256}


@dataclass(frozen=True)
class Smoke:
    """Golden probe: inputs regenerated from ``seed``, outputs must match ``expected`` within ``atol``."""

    seed: int
    count: int
    shape: tuple[int, ...]
    input_name: str
    expected: list[list[float]]
    atol: float

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "count": self.count, "shape": list(self.shape), "input_name": self.input_name,
                "expected": self.expected, "atol": self.atol}


@dataclass(frozen=True)
class Offer:
    """A well-formed offer: every field has been checked for type (not yet for trust)."""

    device_id: str
    line: str
    rollout_id: int | None
    manifest_version: int
    target_version: int
    rollback: bool
    codec: str
    model_sha256: str
    contract: InputContract
    package: Artifact
    delta: Delta | None
    smoke: Smoke
    expires: datetime
    #: Shadow mode / live comparison (issue 18); None: install as usual, compare nothing.
    quality: QualityPlan | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        """The class names (the contract's)."""
        return self.contract.labels

    def to_signed(self) -> dict[str, Any]:
        """The ``signed`` body of the offer's envelope."""
        return {
            "type": OFFER_TYPE, "device_id": self.device_id, "line": self.line, "rollout_id": self.rollout_id,
            "manifest_version": self.manifest_version, "target_version": self.target_version,
            "rollback": self.rollback, "codec": self.codec, "model_sha256": self.model_sha256,
            "contract": self.contract.to_dict(),
            "package": self.package.to_dict(),
            "delta": None if self.delta is None else self.delta.to_dict(),
            "smoke": self.smoke.to_dict(),
            "expires": format_time(self.expires),
        } | ({} if self.quality is None else {"quality": self.quality.to_dict()})


def _field(d: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str = "offer") -> Any:
    value = d.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedMessage(f"{where}.{name} is missing or not {getattr(kind, '__name__', kind)}: {value!r}")
    return value


def _artifact(d: Any, where: str) -> tuple[str, int, str]:
    if not isinstance(d, dict):
        raise MalformedMessage(f"{where} is not an object")
    sha = _field(d, "sha256", str, where)
    size = _field(d, "size", int, where)
    if size < 0 or len(sha) != 64:
        raise MalformedMessage(f"{where} has a bad size or sha256")
    return sha, size, _field(d, "url", str, where)


def _smoke(d: dict[str, Any]) -> Smoke:
    shape = _field(d, "shape", list, "offer.smoke")
    if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in shape):
        raise MalformedMessage(f"offer.smoke.shape must be positive integers: {shape!r}")
    return Smoke(
        seed=_field(d, "seed", int, "offer.smoke"),
        count=_field(d, "count", int, "offer.smoke"),
        shape=tuple(shape),
        input_name=_field(d, "input_name", str, "offer.smoke"),
        expected=_field(d, "expected", list, "offer.smoke"),
        atol=float(_field(d, "atol", (int, float), "offer.smoke")),
    )


def parse_offer(signed: dict[str, Any]) -> Offer:
    """Read a verified ``signed`` body into an :class:`Offer`, checking every field's type.

    Raises:
        MalformedMessage: wrong type, a missing or malformed field, or a malformed contract.
    """
    if signed.get("type") != OFFER_TYPE:
        raise MalformedMessage(f"signed.type is {signed.get('type')!r}, expected {OFFER_TYPE!r}")
    sha, size, url = _artifact(signed.get("package"), "offer.package")
    delta = None
    if signed.get("delta") is not None:
        dsha, dsize, durl = _artifact(signed["delta"], "offer.delta")
        base = _field(signed["delta"], "base_package_sha256", str, "offer.delta")
        delta = Delta(dsha, dsize, durl, base_package_sha256=base)
    rollout_id = signed.get("rollout_id")
    if rollout_id is not None and (not isinstance(rollout_id, int) or isinstance(rollout_id, bool)):
        raise MalformedMessage(f"offer.rollout_id is not an integer or null: {rollout_id!r}")
    try:
        contract = InputContract.from_dict(_field(signed, "contract", dict))
    except ContractError as e:
        raise MalformedMessage(f"offer.contract: {e}") from e
    return Offer(
        device_id=_field(signed, "device_id", str),
        line=_field(signed, "line", str),
        rollout_id=rollout_id,
        manifest_version=_field(signed, "manifest_version", int),
        target_version=_field(signed, "target_version", int),
        rollback=bool(signed.get("rollback", False)),
        codec=_field(signed, "codec", str),
        model_sha256=_field(signed, "model_sha256", str),
        contract=contract,
        package=Artifact(sha, size, url),
        delta=delta,
        smoke=_smoke(_field(signed, "smoke", dict)),
        expires=parse_time(signed.get("expires"), "offer.expires"),
        quality=None if signed.get("quality") is None else QualityPlan.from_dict(signed["quality"]),
    )
