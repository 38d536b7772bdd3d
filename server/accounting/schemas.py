"""Accounting API shapes (for the dashboards)."""

from __future__ import annotations

from pydantic import BaseModel

from server.db import UtcDateTime


class Totals(BaseModel):
    devices: int              # devices that fetched anything
    devices_updated: int      # devices whose update reached "installed"
    requests: int
    resumes: int              # requests that started past byte 0
    bytes_sent: int           # measured on the server
    bytes_reported: int       # what the agents say they received
    delta_bytes: int
    full_bytes: int
    bytes_per_updated_car: float | None
    fp32_bytes_equivalent: int     # updated cars x the target's fp32 ONNX size
    package_bytes_equivalent: int  # updated cars x the target's full package size
    savings_vs_fp32: float | None      # 1 - bytes_sent / fp32 equivalent
    savings_vs_package: float | None   # 1 - bytes_sent / package equivalent


class StageTotals(Totals):
    stage: int


class DeviceTransfer(BaseModel):
    device_id: str
    stage: int | None
    kind: str
    base_version: int | None
    artifact_bytes: int
    bytes_sent: int
    requests: int
    resumes: int
    bytes_reported: int
    state: str | None
    first_request_at: UtcDateTime | None = None
    last_request_end_at: UtcDateTime | None = None


class RolloutAccounting(BaseModel):
    rollout_id: int
    line: str
    target_version: int
    codec: str
    totals: Totals
    stages: list[StageTotals]
    largest: list[DeviceTransfer]


class TransferOut(BaseModel):
    device_id: str | None
    rollout_id: int | None
    artifact_sha256: str
    kind: str
    base_version: int | None
    target_version: int | None
    artifact_bytes: int
    range_start: int
    bytes_sent: int
    complete: bool
    started_at: UtcDateTime
    ended_at: UtcDateTime
