"""The server's one configuration object.

Every setting comes from the environment with the prefix ``OTA_`` (plus the
conventional ``DATABASE_URL``), typed and validated here; nothing else in the
server reads ``os.environ``.  In development mode missing secrets are
generated into the data directory on first start; in production missing or
weak secrets stop the server with a message that says which variable to set.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_CHARS = 24


class InsecureConfiguration(RuntimeError):
    """A production server was asked to start without proper secrets."""


class Settings(BaseSettings):
    """Registry settings (env prefix ``OTA_``)."""

    model_config = SettingsConfigDict(env_prefix="OTA_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path(".ota-data")
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("OTA_DATABASE_URL", "DATABASE_URL"))
    admin_token: str | None = None
    enrollment_token: str | None = None
    signing_key_path: Path | None = None  # the online key; default: <data_dir>/signing-key.pem (server/keys.py)
    # A "no offer" answer carries a status signed for the device; a car refuses one past its expiry, so an
    # attacker who replays old answers can hide an update for at most this long.  Re-signed at half-life.
    status_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    keys_reload_s: float = Field(default=10.0, gt=0)  # how often a server looks for a rotated key (ota keys rotate)

    default_codecs: str = "lossless,deep"
    # The gate for lossy codecs on a line that has calibration images (``ota publish --probe``), until
    # ``--min-agreement`` sets the line's own; a line without images records lossy fidelity as unmeasured.
    default_min_agreement: float = Field(default=0.99, ge=0.0, le=1.0)
    keyframe_interval: int = Field(default=5, ge=1)  # a full package every K versions, deltas between
    fleet_delta_bases: int = Field(default=3, ge=0)  # at publish, precompute deltas from the N most-run versions
    package_cache_items: int = Field(default=8, ge=1)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # a publish request (model, calibration images, form) must fit max_upload_bytes; the images' part alone this
    max_probe_bytes: int = Field(default=48 * 1024 * 1024, ge=1)  # 256 photos of 227x227 take 40 MB

    # Limits before work (server/limits.py, issue 15): enforced on the raw request, before any body is parsed
    # or spooled and before any credential is looked up in the database.
    max_device_body_bytes: int = Field(default=16 * 1024, ge=1024)  # enrolment and poll bodies (~250 bytes)
    max_reports_body_bytes: int = Field(default=256 * 1024, ge=1024)  # a car sends up to 100 reports at once
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)  # any other request (the operator's JSON, forms)
    # Credential failures (401s) per client address before 429, and how fast that allowance refills: enough for
    # a depot's NAT full of revoked cars, few enough that a guesser's requests cost little (server/limits.py).
    auth_failure_burst: int = Field(default=100, ge=1)
    auth_failure_rate_per_s: float = Field(default=10.0, gt=0)
    # Connections (``ota serve``, server/httpproto.py): a client must send its request head within
    # head_timeout_s of its first byte, and its body within body_timeout_s of the head (slowloris).
    head_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=120.0, gt=0)
    keep_alive_timeout_s: int = Field(default=5, ge=1)  # an idle kept-alive connection is closed after this
    limit_concurrency: int = Field(default=1000, ge=1)  # connections + requests per worker; more get 503
    backlog: int = Field(default=2048, ge=1)  # connections the kernel queues before accept()

    poll_interval_s: int = Field(default=60, ge=1)
    offer_ttl_s: int = Field(default=24 * 3600, ge=60)
    # Per-process poll caches (server/devices/pollcache.py): how stale a decision may be across workers.
    poll_cache_s: float = Field(default=5.0, ge=0)  # 0: no caching, every poll reads the database
    # While the cross-process change feed listens, an entry lives until a change drops it, or this long
    # (a safety net against a lost change; server/devices/changefeed.py).
    poll_cache_max_s: float = Field(default=600.0, ge=0)
    # Enrolment rate limit (issue 15): a token bucket per client address and per enrolment credential, per
    # process; generous enough for a depot enrolling hundreds of cars at once, low enough to stop guessing.
    enroll_rate_per_s: float = Field(default=50.0, ge=0)
    enroll_burst: int = Field(default=1000, ge=1)
    smoke_count: int = 3
    smoke_atol: float = 1e-3
    last_seen_flush_s: float = 5.0
    rollout_tick_s: float = 5.0
    # The interpreter's GIL switch interval in a serving process (Python's default is 0.005).  The rollout
    # tick, judgements and group commits are Python running in threads beside the event loop; at the default a
    # poll waits up to 5 ms at each of its hand-overs of the GIL while one of them runs, which made the poll
    # p99 beside a 10,000-car rollout 25 ms instead of 5 (docs/BENCHMARKS.md, bench/load.py --quality-cars).
    gil_switch_interval_s: float = Field(default=0.0005, gt=0, le=0.1)
    # a rollout touched only by quality summaries is judged on ingest at most this often per process (0: on every
    # summary); the rollout tick judges it whatever arrives (server/rollouts/quality.py JudgeThrottle)
    quality_judge_s: float = Field(default=5.0, ge=0)
    chunk_bytes: int = 64 * 1024
    dashboard_refresh_s: float = Field(default=5.0, gt=0)  # how often dashboard pages refresh their counts
    dashboard_stuck_after_s: float = Field(default=1800.0, gt=0)  # an update with no progress this long is stuck
    # the Fleet figures (SQL aggregates over the whole fleet) are recomputed at most this often per process (0: always)
    dashboard_fleet_counts_s: float = Field(default=10.0, ge=0)
    dashboard_network_tag: str = "network"  # the device tag the bandwidth page groups transfers by
    dashboard_session_s: int = Field(default=12 * 3600, ge=1)  # a login lasts this long (or until logout)
    dashboard_login_max_failures: int = Field(default=5, ge=1)  # refused logins per client address per window,
    dashboard_login_window_s: float = Field(default=60.0, gt=0)  # then 429 with Retry-After

    # Webhooks (issue 21, server/webhooks/): the delivery worker's tick, the retry schedule (attempt n waits
    # backoff_s * 2^(n-1), at most backoff_max_s, times a jitter in [0.5, 1)), then the delivery is marked failed.
    webhook_tick_s: float = Field(default=1.0, gt=0)
    webhook_max_attempts: int = Field(default=12, ge=1, le=100)
    webhook_backoff_s: float = Field(default=2.0, gt=0)
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)  # one POST, connect to last header byte
    webhook_max_subscriptions: int = Field(default=100, ge=1, le=10000)  # active ones

    # Blob store (issue 8): a local folder by default, or any S3-compatible store (needs the `s3` extra).
    blob_backend: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None  # e.g. http://minio:9000; None = AWS
    s3_region: str | None = None
    s3_access_key_id: str | None = None  # None: boto3's usual credential chain
    s3_secret_access_key: str | None = None
    s3_prefix: str = "blobs/"
    s3_redirect_downloads: bool = False  # answer whole-artifact GETs with a 307 to a presigned URL
    s3_presign_ttl_s: int = Field(default=300, ge=1, le=7 * 24 * 3600)

    # /metrics (issue 15): fleet size, poll rates and rollout activity are not for strangers.
    metrics_public: bool | None = None  # None: public in development only; false: the admin token is required
    metrics_port: int | None = Field(default=None, ge=1, le=65535)  # also serve /metrics on this separate listener
    metrics_host: str = "127.0.0.1"  # the separate listener's address: an interface only monitoring reaches

    @property
    def metrics_are_public(self) -> bool:
        """Whether the API port's ``/metrics`` answers without the admin token."""
        if self.metrics_public is not None:
            return self.metrics_public
        return self.environment == "development" and self.metrics_port is None

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL; the embedded default is a SQLite file in the data directory."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]  # psycopg 3 is the driver we ship
            return url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def key_path(self) -> Path:
        return self.signing_key_path or self.data_dir / "signing-key.pem"

    def codec_list(self) -> list[str]:
        return [c.strip() for c in self.default_codecs.split(",") if c.strip()]


def _secret_file(data_dir: Path, name: str) -> str:
    """A development secret: read it, or create the file 0600 from the start (O_EXCL: two workers, one winner)."""
    path = data_dir / name
    value = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def resolve_secrets(settings: Settings) -> Settings:
    """Fill in or check the secrets; returns a copy with tokens set.

    Raises:
        InsecureConfiguration: production without OTA_ADMIN_TOKEN / OTA_ENROLLMENT_TOKEN
            of at least 24 characters.
    """
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # database, blobs, key, tokens: private
    if settings.environment == "development":
        return settings.model_copy(update={
            "admin_token": settings.admin_token or _secret_file(settings.data_dir, "admin-token"),
            "enrollment_token": settings.enrollment_token or _secret_file(settings.data_dir, "enrollment-token"),
        })
    for var, value in (("OTA_ADMIN_TOKEN", settings.admin_token), ("OTA_ENROLLMENT_TOKEN", settings.enrollment_token)):
        if not value or len(value) < MIN_SECRET_CHARS:
            raise InsecureConfiguration(
                f"{var} must be set to a random secret of at least {MIN_SECRET_CHARS} characters in production "
                "(or set OTA_ENVIRONMENT=development to have one generated into the data directory)"
            )
    if settings.admin_token == settings.enrollment_token:
        raise InsecureConfiguration("OTA_ADMIN_TOKEN and OTA_ENROLLMENT_TOKEN must differ")
    return settings
