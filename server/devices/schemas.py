"""Device API shapes (docs/PROTOCOL.md "Enrollment", "Poll", "Report")."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, field_validator, model_validator

from protocol.errors import MalformedMessage
from protocol.platform import Platform
from protocol.quality import MAX_SUMMARIES, QualitySummary
from protocol.report import MAX_REASON_CHARS
from server.db import UtcDateTime
from server.devices.device_keys import public_key as parse_public_key

DEVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"
# Upper bounds of the database columns (INTEGER / BIGINT on PostgreSQL), so a huge number is a 422, not a 500.
INT32 = 2**31 - 1
INT64 = 2**63 - 1

# Bounds on everything a device (or the operator) writes that is stored and shown (issue 15, finding 4: 30 MB
# of tags and a 30 MB failure reason were stored, and the dashboard page grew to 90 MB).  The body limits in
# server/limits.py refuse bigger requests before they are parsed; these give a 422 that names the field.
MAX_TAGS = 32
TagKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
TagValue = Annotated[str, StringConstraints(max_length=256)]
Tags = Annotated[dict[TagKey, TagValue], Field(max_length=MAX_TAGS,
                                              description=f"at most {MAX_TAGS} tags, keys <= 64, values <= 256 chars")]
Sha256Hex = Annotated[str, StringConstraints(max_length=64)]
# the states a car reports (protocol/report.py REPORTED; tests/protocol checks they agree), as an OpenAPI enum
ReportedState = Literal["downloading", "downloaded", "verified", "installed", "failed", "rolled_back"]


class ProofIn(BaseModel):
    """A re-enrolment proof: the id's current key signs {type, device_id, public_key, timestamp}."""

    timestamp: int = Field(ge=0, le=INT64, description="milliseconds since the Unix epoch")
    signature: str = Field(max_length=200, description="base64 Ed25519 signature")


def _checked_platform(v: dict[str, Any] | None) -> dict[str, Any] | None:
    """A reported platform, parsed to check it (bounded): a 422 naming the field when it is malformed."""
    if v is not None:
        try:
            Platform.from_dict(v)
        except MalformedMessage as e:
            raise ValueError(str(e)) from e
    return v


class EnrollIn(BaseModel):
    device_id: str = Field(pattern=DEVICE_ID)
    tags: Tags = Field(default_factory=dict)
    public_key: str | None = Field(default=None, max_length=64,
                                   description="the car's own raw Ed25519 public key, base64 (32 bytes)")
    proof: ProofIn | None = None
    platform: dict[str, Any] | None = Field(default=None, description=(
        "what the car can run (protocol/platform.py Platform.to_dict()); docs/PROTOCOL.md 'Compatibility'"))

    @field_validator("platform")
    @classmethod
    def _platform(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _checked_platform(v)

    def parsed_platform(self) -> Platform | None:
        return Platform.from_dict(self.platform) if self.platform is not None else None

    @field_validator("public_key")
    @classmethod
    def _raw_ed25519(cls, v: str | None) -> str | None:
        if v is not None:
            parse_public_key(v)  # ValueError: a 422 saying what is wrong
        return v


class EnrollOut(BaseModel):
    device_id: str
    device_token: str
    public_key: str
    key_id: str
    poll_interval_s: int
    delegation: dict[str, Any]  # root-signed: names the key above (the car checks it with its root key)


class PollIn(BaseModel):
    line: str = Field(min_length=1, max_length=100)
    current_version: int = Field(default=0, ge=0, le=INT32)
    current_model_sha256: Sha256Hex | None = None
    current_package_sha256: Sha256Hex | None = None
    agent_state: str | None = Field(default=None, max_length=32)
    # issue 20: the digest of the car's platform on every poll (the cached path compares this string), the
    # platform itself only when it changed (the car sends it on its first poll after a start)
    platform_sha256: Sha256Hex | None = None
    platform: dict[str, Any] | None = None

    @field_validator("platform")
    @classmethod
    def _platform(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _checked_platform(v)


class PollOut(BaseModel):
    poll_interval_s: int
    offer: dict[str, Any] | None
    status: dict[str, Any] | None = None  # with no offer: the device's signed, expiring status


class KeysOut(BaseModel):
    root_keyid: str
    delegation: dict[str, Any]


class ReportIn(BaseModel):
    seq: int = Field(ge=1, le=INT64)
    rollout_id: int | None = Field(default=None, le=INT32)
    manifest_version: int | None = Field(default=None, le=INT64)
    target_version: int = Field(ge=1, le=INT32)
    state: ReportedState
    reason: str | None = Field(default=None, max_length=MAX_REASON_CHARS)
    bytes_received: int | None = Field(default=None, ge=0, le=INT64)
    artifact: Literal["delta", "full"] | None = None
    elapsed_s: float | None = None
    running_version: int | None = Field(default=None, le=INT32)
    running_model_sha256: Sha256Hex | None = None
    at: UtcDateTime | None = None
    signature: str | None = Field(default=None, max_length=200,
                                  description="base64 Ed25519 signature of the report by the device's key")


class ReportsIn(BaseModel):
    """Queued reports, and (issue 18) the car's latest quality summaries: a request may carry either or both."""

    reports: list[ReportIn] = Field(default_factory=list, max_length=1000)
    quality: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_SUMMARIES, description=(
        f"at most {MAX_SUMMARIES} cumulative quality summaries (protocol/quality.py QualitySummary.to_dict())"))

    @field_validator("quality")
    @classmethod
    def _summaries(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, d in enumerate(value or []):
            try:
                QualitySummary.from_dict(d)
            except MalformedMessage as e:  # the whole request is refused: nothing is applied
                raise ValueError(f"quality[{i}]: {e}") from e
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> ReportsIn:
        if not self.reports and not self.quality:
            raise ValueError("reports is empty and quality names no summary: a request carries at least one of them")
        return self

    def summaries(self) -> list[QualitySummary]:
        """The quality summaries, parsed (they validated when the request was read)."""
        return [QualitySummary.from_dict(d) for d in self.quality or []]


class Rejected(BaseModel):
    seq: int
    error: str
    detail: str


class ReportsOut(BaseModel):
    accepted: list[int]
    rejected: list[Rejected]
    # issue 18: seqs of the quality summaries acknowledged (stored, or already held with an equal or higher seq);
    # those refused one by one (unknown rollout or version, a rollout the device is not in) are in quality_rejected
    quality_accepted: list[int] = Field(default_factory=list)
    quality_rejected: list[Rejected] = Field(default_factory=list)


class UpdateOut(BaseModel):
    rollout_id: int | None
    target_version: int
    codec: str
    state: str
    reason: str | None
    bytes_reported: int
    manifest_version: int
    updated_at: UtcDateTime


class DevicePatch(BaseModel):
    """Operator changes to one device: tags (replaced) and its poll interval (null: the server default)."""

    tags: Tags | None = None
    poll_interval_s: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)


class DeviceLineOut(BaseModel):
    """What a car runs on one of its lines (issue 20)."""

    line: str
    running_version: int | None
    running_model_sha256: str | None
    reported_version: int | None
    drift: bool
    drift_detail: str | None


class DeviceOut(BaseModel):
    """A device; ``lines`` lists every line it runs.  ``line``, ``running_version`` and ``reported_version`` are
    its first line's (by name), kept for single-line readers; ``drift`` is true when any line drifts."""

    device_id: str
    tags: dict[str, str]
    line: str | None
    running_version: int | None
    reported_version: int | None
    drift: bool
    drift_detail: str | None
    lines: list[DeviceLineOut] = Field(default_factory=list)
    poll_interval_s: int | None = None
    last_seen_at: UtcDateTime | None
    created_at: UtcDateTime
    updates: list[UpdateOut] = Field(default_factory=list)
    public_key: str | None = None
    revoked_at: UtcDateTime | None = None
    decommissioned_at: UtcDateTime | None = None
    reauthorized_until: UtcDateTime | None = None
    platform: dict[str, Any] | None = None  # what the car reported it can run (issue 20); null: never reported


class ReauthorizeIn(BaseModel):
    """How long the operator's permission to replace the device's key lasts (used once)."""

    valid_s: int = Field(default=3600, ge=1, le=30 * 24 * 3600)


class DeviceActionOut(BaseModel):
    device_id: str
    action: str
    revoked_at: UtcDateTime | None
    decommissioned_at: UtcDateTime | None
    reauthorized_until: UtcDateTime | None


class EnrollmentTokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    max_uses: int | None = Field(default=None, ge=1, le=INT32)
    expires_in_s: int | None = Field(default=None, ge=1, le=10 * 365 * 24 * 3600)
    tags: Tags = Field(default_factory=dict)  # forced onto every device enrolled with it


class EnrollmentTokenOut(BaseModel):
    id: int
    name: str
    tags: dict[str, str]
    max_uses: int | None
    uses: int
    expires_at: UtcDateTime | None
    revoked_at: UtcDateTime | None
    created_by: str
    created_at: UtcDateTime


class EnrollmentTokenCreated(EnrollmentTokenOut):
    token: str = Field(description="shown once; only its SHA-256 is stored")
