"""Registry API shapes (docs/PROTOCOL.md, "Publish")."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from server.db import UtcDateTime


class Fidelity(BaseModel):
    """A package's fidelity (server/registry/fidelity.py): ``exact`` (lossless), ``measured`` on the line's
    calibration images under ``gate``, or ``unmeasured`` (the line has no images; agreement unknown)."""

    status: str = "unmeasured"
    top1_agreement: float | None = None
    max_abs_diff: float | None = None
    probe_count: int | None = None  # calibration images it was measured on
    gate: float | None = None  # the line's gate when it was packed


class PackageOut(BaseModel):
    sha256: str
    bytes: int
    model_sha256: str
    fidelity: Fidelity
    delta_from_previous: int | None = None  # bytes of the precomputed transfer delta, if any
    stored_as: str  # "full" (keyframe) or "delta"
    stored_bytes: int


class VariantOut(BaseModel):
    """Another export of a version (issue 20): cars that cannot run the version's own get the one they can."""

    variant: int  # 1, 2, ... in order of publication
    source_sha256: str
    source_bytes: int
    created_at: UtcDateTime
    publisher: str | None
    notes: str | None
    requirements: dict[str, Any]
    packages: dict[str, PackageOut]


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
    contract_changed: list[str] = []  # contract fields that differ from the previous version's
    packages: dict[str, PackageOut]
    # what a car must have to be offered it (protocol/platform.py Requirements.to_dict()); null: published
    # before issue 20, needs nothing
    requirements: dict[str, Any] | None = None
    variants: list[VariantOut] = []  # its other exports, each offered to the cars that cannot run this one


class LineOut(BaseModel):
    name: str
    stable_version: int | None
    latest_version: int | None
    versions: int
    probe_sha256: str | None = None  # the line's calibration images (a content-addressed blob)
    probe_count: int | None = None
    min_agreement: float | None = None  # the line's gate for lossy codecs (set once it has images)


class StorageOut(BaseModel):
    """What the line's packages cost on disk, stored as deltas with keyframes vs every package full."""

    line: str
    stored_bytes: int
    full_packages_bytes: int
    saving_ratio: float
    packages: int
    keyframes: int
