"""Rollout API shapes."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from server.db import UtcDateTime

INT32 = 2**31 - 1  # INTEGER columns on PostgreSQL: a larger number is a 422, not a 500


class StageIn(BaseModel):
    percent: float = Field(gt=0, le=100, description="cumulative percent of the selected devices")
    min_soak_s: float = Field(default=0.0, ge=0)
    success_threshold_pct: float | None = Field(default=None, ge=0, le=100,
                                                description="auto-advance at this installed share; null = manual")


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

    @model_validator(mode="after")
    def _increasing(self) -> RolloutIn:
        pcts = [s.percent for s in self.stages]
        if not pcts:
            raise ValueError("a rollout needs at least one stage")
        if any(b <= a for a, b in zip(pcts, pcts[1:], strict=False)):
            raise ValueError(f"stage percents are cumulative and must increase, got {pcts}")
        return self


class RollbackIn(BaseModel):
    version: int | None = Field(default=None, ge=1, le=INT32, description="default: the stable version before the rollout")


class StageOut(BaseModel):
    position: int
    percent: float
    min_soak_s: float
    success_threshold_pct: float | None
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
    reason: str | None
    created_by: str | None
    created_at: UtcDateTime
    updated_at: UtcDateTime
    stages: list[StageOut]
