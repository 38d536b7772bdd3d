"""Rollout API shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.errors import MalformedMessage
from protocol.quality import parse_gate
from server.db import UtcDateTime
from server.rollouts import windows as windowing

INT32 = 2**31 - 1  # INTEGER columns on PostgreSQL: a larger number is a 422, not a 500


class StageIn(BaseModel):
    percent: float = Field(gt=0, le=100, description="cumulative percent of the selected devices")
    min_soak_s: float = Field(default=0.0, ge=0)
    success_threshold_pct: float | None = Field(default=None, ge=0, le=100,
                                                description="auto-advance at this installed share; null = manual")
    min_installed: int | None = Field(default=None, ge=0, le=100_000, description=(
        "installs (with evidence) the stage needs before it may auto-advance; default 1 for the first live stage "
        "(a canary that drew no car waits for the operator) and 0 for later stages"))


MAX_GATES = 16
DEFAULT_IN_PROGRESS_TIMEOUT_S = 3600.0
MAX_TIMEOUT_S = 30 * 86400.0


class ShadowIn(BaseModel):
    """The shadow stage (issue 18): ``percent`` of the selected cars load the version beside the live one and
    compare, for at least ``min_s`` seconds, before any car drives with it."""

    percent: float = Field(gt=0, le=100, description="cumulative percent of the selected devices in the shadow stage")
    min_s: float = Field(default=0.0, ge=0, le=365 * 86400, description="shortest time in the shadow stage")
    sample_every: int = Field(default=10, ge=1, le=10_000, description="compare one camera frame in this many")
    max_cpu_share: float = Field(default=0.25, gt=0, le=1, description="the comparison's share of one core")


class WindowIn(BaseModel):
    """A recurring maintenance window (issue 21): ``days`` it opens on, local ``start``-``end`` (an end at or
    before the start crosses midnight) in the IANA zone ``tz`` (server/rollouts/windows.py)."""

    model_config = ConfigDict(extra="forbid")
    days: str = Field(max_length=64, description="mon..sun, ranges (mon-fri), lists (sat,sun) or daily")
    start: str = Field(max_length=5, description="HH:MM local time")
    end: str = Field(max_length=5, description="HH:MM local time, or 24:00; at or before start: next day")
    tz: str = Field(max_length=64, description="IANA time zone, e.g. Europe/Berlin")

    @model_validator(mode="after")
    def _parses(self) -> WindowIn:
        try:
            windowing.parse(self.model_dump())
        except windowing.WindowError as e:
            raise ValueError(str(e)) from e
        return self


class RolloutIn(BaseModel):
    line: str = Field(max_length=100)
    version: int = Field(ge=1, le=INT32)
    codec: str | None = Field(default=None, max_length=100,
                              description="default: the smallest package that passed the line's gate")
    selector: dict[str, str] = Field(default_factory=dict, max_length=32)  # tag key=value, as device tags
    stages: list[StageIn] = Field(default_factory=lambda: [StageIn(percent=100)])
    error_threshold_pct: float | None = Field(default=None, ge=0, le=100)
    error_threshold_count: int | None = Field(default=None, ge=1, le=INT32)
    rollback: bool = False
    allow_unmeasured: bool = Field(default=False, description=(
        "ship a lossy package whose agreement was not measured on the line's images, or is below its gate"))
    shadow: ShadowIn | None = Field(default=None, description="a shadow stage before the live stages (stage 0)")
    in_progress_timeout_s: float | None = Field(default=DEFAULT_IN_PROGRESS_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S,
                                                description=(
        "a car offered/downloading/downloaded/verified for longer counts as an error (stuck); null: never"))
    gates: list[str] = Field(default_factory=list, max_length=MAX_GATES, description=(
        "quality gates, e.g. agreement>=0.97, latency_p99_ratio<=1.3, min_frames=5000"))
    starts_at: datetime | None = Field(default=None, description=(
        "ISO 8601 with a zone: no offers and no advancing before it (default: at once)"))
    windows: list[WindowIn] | None = Field(default=None, max_length=windowing.MAX_WINDOWS, description=(
        "maintenance windows: stages advance and new offers are made only inside one (default: always)"))

    @field_validator("starts_at")
    @classmethod
    def _zoned(cls, at: datetime | None) -> datetime | None:
        if at is not None and (at.tzinfo is None or at.utcoffset() is None):
            raise ValueError("starts_at needs a time zone (ISO 8601 with Z or +HH:MM)")
        return at

    @field_validator("windows")
    @classmethod
    def _some(cls, ws: list[WindowIn] | None) -> list[WindowIn] | None:
        if ws is not None and not ws:
            raise ValueError("an empty window list would never open; leave windows out for always open")
        return ws

    @field_validator("gates")
    @classmethod
    def _gates(cls, gates: list[str]) -> list[str]:
        out = []
        for text in gates:
            if len(text) > 100:
                raise ValueError(f"gate {text[:40]!r}... is longer than 100 characters")
            try:
                parse_gate(text)
            except MalformedMessage as e:
                raise ValueError(str(e)) from e
            out.append(text.strip())
        return out

    @model_validator(mode="after")
    def _increasing(self) -> RolloutIn:
        pcts = [s.percent for s in self.stages]
        if not pcts:
            raise ValueError("a rollout needs at least one stage")
        if any(b <= a for a, b in zip(pcts, pcts[1:], strict=False)):
            raise ValueError(f"stage percents are cumulative and must increase, got {pcts}")
        if self.shadow is not None and self.shadow.percent > pcts[0]:
            raise ValueError(f"shadow.percent ({self.shadow.percent:g}) exceeds the first live stage's percent "
                             f"({pcts[0]:g}): the shadow cars go live first, so stages are cumulative from it")
        return self


class RollbackIn(BaseModel):
    version: int | None = Field(default=None, ge=1, le=INT32, description="default: the stable version before the rollout")


class StageOut(BaseModel):
    position: int
    mode: str = "live"  # "shadow": stage 0 of a rollout with a shadow stage
    percent: float
    min_soak_s: float
    success_threshold_pct: float | None
    min_installed: int = 0
    assigned: int = 0
    counts: dict[str, int] = Field(default_factory=dict)


class RolloutOut(BaseModel):
    id: int
    line: str
    target_version: int
    previous_stable: int | None
    codec: str
    selector: dict[str, str]
    state: str
    current_stage: int
    rollback: bool
    error_threshold_pct: float | None
    error_threshold_count: int | None
    in_progress_timeout_s: float | None = None
    # issue 21 item 2: schedule and windows; ``open``: stages may advance and new offers be made now;
    # ``next_open``: when that is next true (now when open; null: never within two weeks)
    starts_at: UtcDateTime | None = None
    windows: list[dict[str, str]] | None = None
    open: bool = True
    next_open: UtcDateTime | None = None
    reason: str | None
    created_by: str | None
    created_at: UtcDateTime
    updated_at: UtcDateTime
    stages: list[StageOut]
    # gates, shadow settings, merged summaries, verdict and history (docs/PROTOCOL.md "Quality summaries")
    quality: dict[str, Any] | None = None


class RolloutDeviceOut(BaseModel):
    """One car the rollout offered its version to (``GET /rollouts/{id}/devices``)."""

    device_id: str
    stage: int | None  # the stage the car's bucket falls in (stages.stage_of)
    state: str
    stuck: bool  # mid-update for longer than the rollout's in_progress_timeout_s
    reason: str | None
    target_version: int
    bytes_reported: int
    offered_at: UtcDateTime
    updated_at: UtcDateTime
