"""Registry API shapes (docs/PROTOCOL.md, "Publish")."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from server.db import UtcDateTime


class Fidelity(BaseModel):
    top1_agreement: float | None = None
    max_abs_diff: float | None = None


class PackageOut(BaseModel):
    sha256: str
    bytes: int
    model_sha256: str
    fidelity: Fidelity
    delta_from_previous: int | None = None  # bytes of the precomputed transfer delta, if any
    stored_as: str  # "full" (keyframe) or "delta"
    stored_bytes: int


class VersionOut(BaseModel):
    line: str
    version: int
    source_sha256: str
    source_bytes: int
    created_at: UtcDateTime
    publisher: str | None
    notes: str | None
    labels: list[str]
    contract: dict[str, Any]  # the version's input contract (protocol/contract.py), as signed into offers
    packages: dict[str, PackageOut]


class LineOut(BaseModel):
    name: str
    stable_version: int | None
    latest_version: int | None
    versions: int


class StorageOut(BaseModel):
    """What the line's packages cost on disk, stored as deltas with keyframes vs every package full."""

    line: str
    stored_bytes: int
    full_packages_bytes: int
    saving_ratio: float
    packages: int
    keyframes: int
