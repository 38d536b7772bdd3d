"""SQLAlchemy table mappings, the Python face of the schema Alembic creates.

The migrations in ``migrations/versions`` are the schema; these classes must
match them (a test compares the two).  Rows stay inside the service layer:
services return Pydantic schemas or dataclasses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Line(Base):
    __tablename__ = "lines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    stable_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    # the line's calibration images (a blob of uint8 images) and its gate for lossy codecs (issue 17)
    probe_sha256: Mapped[str | None] = mapped_column(String(64))
    probe_count: Mapped[int | None] = mapped_column(Integer)
    min_agreement: Mapped[float | None] = mapped_column(Float)


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("line_id", "number", name="uq_versions_line_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    source_sha256: Mapped[str] = mapped_column(String(64))
    source_bytes: Mapped[int] = mapped_column(BigInteger)
    publisher: Mapped[str | None] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)
    labels: Mapped[list[Any]]
    input_name: Mapped[str] = mapped_column(String(200))
    input_shape: Mapped[list[Any]]
    contract: Mapped[dict[str, Any]]  # protocol.contract.InputContract.to_dict(), signed into every offer
    created_at: Mapped[datetime]
    # issue 20: protocol.platform.Requirements.to_dict() (what a car must have to run it); NULL: nothing
    requirements: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class VersionVariant(Base):
    """Another export of a version for other cars (issue 20: e.g. an older opset); its packages have its number."""

    __tablename__ = "version_variants"
    __table_args__ = (UniqueConstraint("version_id", "variant", name="uq_version_variants_version_variant"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    variant: Mapped[int] = mapped_column(Integer)  # 1, 2, ... in order of publication (0 is the version itself)
    source_sha256: Mapped[str] = mapped_column(String(64))
    source_bytes: Mapped[int] = mapped_column(BigInteger)
    requirements: Mapped[dict[str, Any]]  # protocol.platform.Requirements.to_dict()
    publisher: Mapped[str | None] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class Package(Base):
    """One codec's package of a version, stored either full or as a delta on its predecessor."""

    __tablename__ = "packages"
    __table_args__ = (UniqueConstraint("version_id", "variant", "codec", name="uq_packages_version_variant_codec"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    # issue 20: which export of the version it encodes (0: the version's own; n: ``VersionVariant.variant`` n)
    variant: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    codec: Mapped[str] = mapped_column(String(20))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    model_sha256: Mapped[str] = mapped_column(String(64))
    fidelity: Mapped[dict[str, Any]]
    smoke: Mapped[dict[str, Any]]
    storage_kind: Mapped[str] = mapped_column(String(10))  # "full" | "delta"
    storage_blob: Mapped[str] = mapped_column(String(64))
    storage_base_sha256: Mapped[str | None] = mapped_column(String(64))
    storage_bytes: Mapped[int] = mapped_column(BigInteger)


class Delta(Base):
    """A transfer delta: applying blob ``sha256`` to package ``base_sha256`` gives ``target_sha256``."""

    __tablename__ = "deltas"
    __table_args__ = (UniqueConstraint("base_sha256", "target_sha256", name="uq_deltas_base_target"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_sha256: Mapped[str] = mapped_column(String(64))
    target_sha256: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class Device(Base):
    __tablename__ = "devices"
    # issue 21: the Fleet page's "seen in the last hour" card and the inventory's ``seen_since`` filter
    __table_args__ = (Index("ix_devices_last_seen_at", "last_seen_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(200), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    tags: Mapped[dict[str, Any]]
    poll_interval_s: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    # one counter per device (what each line runs is in ``device_lines``): increasing per line too
    manifest_version: Mapped[int] = mapped_column(BigInteger, default=0)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # Device identity (issue 15): the car's own Ed25519 public key (raw, base64), the timestamp (ms) of the
    # last key proof accepted (a proof must be newer: no replay), the operator's one-time permission to
    # replace the key, and revocation (revoked: no credential works; decommissioned: also out of rollouts).
    public_key: Mapped[str | None] = mapped_column(String(64))
    proof_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    reauthorized_until: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    decommissioned_at: Mapped[datetime | None]
    # issue 20: the car's reported protocol.platform.Platform.to_dict() and its digest (polls carry the digest);
    # NULL: never reported, treated as able to run any version
    platform: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    platform_sha256: Mapped[str | None] = mapped_column(String(64))


class DeviceLine(Base):
    """What one car runs on one of its model lines (issue 20: a car runs several), from its polls and reports.

    ``running_*``: what it last polled with; ``reported_*``: what it last reported installing; ``drift``: the two
    disagree.  A row appears on the car's first poll of the line; the line's rollouts count the cars that have one.
    """

    __tablename__ = "device_lines"
    # the /metrics fleet gauges group by (line, running_version) (issue 21): an index-only aggregate on the tick
    # issue 21: the "drifting" card and the inventory's ``drift`` filter read only the drifting rows
    __table_args__ = (UniqueConstraint("device_pk", "line", name="uq_device_lines_device_line"),
                      Index("ix_device_lines_line_running_version", "line", "running_version"),
                      Index("ix_device_lines_drift_device_pk", "drift", "device_pk"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    line: Mapped[str] = mapped_column(String(100), index=True)
    running_version: Mapped[int | None] = mapped_column(Integer)
    running_model_sha256: Mapped[str | None] = mapped_column(String(64))
    reported_version: Mapped[int | None] = mapped_column(Integer)
    reported_model_sha256: Mapped[str | None] = mapped_column(String(64))
    drift: Mapped[bool] = mapped_column(Boolean, default=False)
    drift_detail: Mapped[str | None] = mapped_column(Text)


class DeviceUpdate(Base):
    """One offer to one device and the device's progress through the update states."""

    __tablename__ = "device_updates"
    # one offer row per (device, rollout or 0 for the stable version, version): two concurrent polls
    # of one device cannot both create it (a NULL rollout_id would not be unique, hence rollout_key)
    # issue 21: a car's newest offer is one probe of (device_pk, id); the "stuck" card reads (state, updated_at)
    __table_args__ = (UniqueConstraint("device_pk", "rollout_key", "version_id", name="uq_device_updates_offer"),
                      Index("ix_device_updates_device_pk_id", "device_pk", "id"),
                      Index("ix_device_updates_state_updated_at", "state", "updated_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"), index=True)
    rollout_key: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    target_version: Mapped[int] = mapped_column(Integer)
    codec: Mapped[str] = mapped_column(String(20))
    package_sha256: Mapped[str] = mapped_column(String(64))
    delta_sha256: Mapped[str | None] = mapped_column(String(64))
    base_package_sha256: Mapped[str | None] = mapped_column(String(64))
    rollback: Mapped[bool] = mapped_column(Boolean, default=False)
    manifest_version: Mapped[int] = mapped_column(BigInteger)
    envelope: Mapped[dict[str, Any]]
    expires_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    bytes_reported: Mapped[int] = mapped_column(BigInteger, default=0)
    artifact_reported: Mapped[str | None] = mapped_column(String(10))
    # What the server saw of an "installed" report: "signed" (by the device's key), "download" (the artifact went
    # out in full to this device) or None (nothing: recorded, but not counted toward a rollout's advance).
    install_evidence: Mapped[str | None] = mapped_column(String(10))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class DeviceReport(Base):
    __tablename__ = "device_reports"
    __table_args__ = (UniqueConstraint("device_pk", "seq", name="uq_device_reports_device_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    update_id: Mapped[int | None] = mapped_column(ForeignKey("device_updates.id"))
    state: Mapped[str] = mapped_column(String(20))
    accepted: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    body: Mapped[dict[str, Any]]
    signed: Mapped[bool] = mapped_column(Boolean, default=False)  # verified against the device's registered key
    received_at: Mapped[datetime]


class Rollout(Base):
    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    target_version: Mapped[int] = mapped_column(Integer)
    previous_stable: Mapped[int | None] = mapped_column(Integer)
    codec: Mapped[str] = mapped_column(String(20))
    selector: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(20), index=True)
    current_stage: Mapped[int] = mapped_column(Integer, default=0)
    stage_started_at: Mapped[datetime]
    rollback: Mapped[bool] = mapped_column(Boolean, default=False)
    error_threshold_pct: Mapped[float | None] = mapped_column(Float)
    error_threshold_count: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Issue 18: quality gates (gate texts, protocol.quality.parse_gate) and the shadow stage's settings
    # ({"percent", "min_s", "sample_every", "max_cpu_share"}, None: no shadow stage).  NULL gates: none.
    gates: Mapped[list[Any] | None] = mapped_column(JSON)
    shadow: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Issue 21: a car whose latest state is offered/downloading/downloaded/verified for longer than this counts
    # as an error ("stuck"); None (rollouts from before 0008) never times out.
    in_progress_timeout_s: Mapped[float | None] = mapped_column(Float)
    # Issue 21 item 2: no offers before ``starts_at`` (None: at once); ``windows`` ([{"days", "start", "end",
    # "tz"}], server/rollouts/windows.py; None: always open) bound when stages advance and new offers are made.
    starts_at: Mapped[datetime | None]
    windows: Mapped[list[Any] | None] = mapped_column(JSON)


class RolloutStage(Base):
    __tablename__ = "rollout_stages"
    __table_args__ = (UniqueConstraint("rollout_id", "position", name="uq_rollout_stages_position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    percent: Mapped[float] = mapped_column(Float)
    min_soak_s: Mapped[float] = mapped_column(Float, default=0.0)
    success_threshold_pct: Mapped[float | None] = mapped_column(Float)  # None: advance manually
    mode: Mapped[str] = mapped_column(String(10), default="live", server_default="live")  # "shadow" | "live"
    # Issue 21: installs (with evidence) the stage needs before it may auto-advance (an empty canary waits)
    min_installed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class QualitySummary(Base):
    """A device's latest cumulative quality summary (protocol.quality) for one rollout, version and kind."""

    __tablename__ = "quality_summaries"
    __table_args__ = (UniqueConstraint("device_pk", "rollout_id", "candidate_version", "kind",
                                       name="uq_quality_summaries_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    candidate_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(10))  # "shadow" | "live"
    seq: Mapped[int] = mapped_column(BigInteger)
    stage: Mapped[int | None] = mapped_column(Integer)  # the device's stage in the rollout
    frames: Mapped[int] = mapped_column(BigInteger)
    agree: Mapped[int] = mapped_column(BigInteger)
    summary: Mapped[dict[str, Any]]  # QualitySummary.to_dict()
    updated_at: Mapped[datetime]


class QualityHistory(Base):
    """One point of a rollout's merged quality figures over time (at most 500 per rollout)."""

    __tablename__ = "quality_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(10))
    frames: Mapped[int] = mapped_column(BigInteger)
    agreement: Mapped[float | None] = mapped_column(Float)
    latency_p99_ratio: Mapped[float | None] = mapped_column(Float)
    class_shift: Mapped[float | None] = mapped_column(Float)


class Release(Base):
    """A named, immutable set of versions, one per line, that a car must run together (issue 20)."""

    __tablename__ = "releases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    notes: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]


class ReleaseMember(Base):
    __tablename__ = "release_members"
    __table_args__ = (UniqueConstraint("release_id", "line_id", name="uq_release_members_line"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id"))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))


class Transfer(Base):
    """One artifact request as the server measured it (bytes written to the socket)."""

    __tablename__ = "transfers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_pk: Mapped[int | None] = mapped_column(ForeignKey("devices.id"), index=True)
    update_id: Mapped[int | None] = mapped_column(ForeignKey("device_updates.id"))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"), index=True)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(10))  # "full" | "delta"
    base_version: Mapped[int | None] = mapped_column(Integer)
    target_version: Mapped[int | None] = mapped_column(Integer)
    artifact_bytes: Mapped[int] = mapped_column(BigInteger)
    range_start: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_sent: Mapped[int] = mapped_column(BigInteger)
    complete: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime]


class EnrollmentToken(Base):
    """A scoped enrolment token (only its digest is stored): limited uses, an expiry, tags forced onto devices."""

    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    tags: Mapped[dict[str, Any]]
    max_uses: Mapped[int | None] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class AuditEntry(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100), index=True)
    detail: Mapped[dict[str, Any]]
    target: Mapped[str | None] = mapped_column(String(200), index=True)  # "rollout:7", "device:car-1", "line:x"
    outcome: Mapped[str] = mapped_column(String(20), default="ok", server_default="ok")  # ok | refused | failed


class DashboardSession(Base):
    """A dashboard login (issue 15): the browser holds a random id, the server only its SHA-256.

    Stored, not merely signed, so that logout revokes it for every worker and a copied cookie dies with it.
    ``token_mac`` binds it to the admin token it was issued under: rotating the token logs every browser out.
    """

    __tablename__ = "dashboard_sessions"
    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_mac: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]


class DashboardLoginFailure(Base):
    """One refused dashboard login, kept for the throttle's window (per client address)."""

    __tablename__ = "dashboard_login_failures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client: Mapped[str] = mapped_column(String(100), index=True)
    at: Mapped[datetime] = mapped_column(index=True)


class WebhookSubscription(Base):
    """A receiver of events (issue 21): ``secret`` is kept as given because every delivery is signed with it
    (HMAC-SHA256 needs the key itself, a digest would not do); removing one deactivates it, keeping its log."""

    __tablename__ = "webhook_subscriptions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(256))
    events: Mapped[list[Any]]
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    active: Mapped[bool] = mapped_column(Boolean)


class WebhookDelivery(Base):
    """The outbox: one event for one subscription, inserted in the transaction of the change that caused it,
    then attempted by the delivery worker until ``delivered`` or ``failed`` (server/webhooks/worker.py)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_subscription_state", "subscription_id", "state", "id"),
                      Index("ix_webhook_deliveries_state_next_attempt", "state", "next_attempt_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("webhook_subscriptions.id"))
    event: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(20))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
