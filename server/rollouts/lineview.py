"""A line's desired-version decision as plain, immutable data (for the poll cache).

``load_line`` reads everything the desired-version rule needs for one line
(the offering rollouts with their stage percents and target versions, and the
stable version) in one short read; ``desired_in`` then answers "which version
should this device run" with no I/O: the newest offering rollout whose
selector matches and whose reached stages include the device, else the stable
version, shipped as the smallest package that passed the line's gate.  Both poll paths use it (``devices/decision.py``).  The poll cache holds one
``LineView`` per line for a few seconds (``OTA_POLL_CACHE_S``), so a
steady-state poll does no SQL for the decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from server.orm import Version
from server.registry import fidelity
from server.registry import store as registry_store
from server.rollouts import stages as staging
from server.rollouts import store


@dataclass(frozen=True)
class PackageView:
    codec: str
    sha256: str
    model_sha256: str


@dataclass(frozen=True)
class VersionView:
    id: int
    number: int
    packages: dict[str, PackageView]  # codec -> package
    shipping: str | None = None  # the smallest package that passed the line's gate, else lossless (fidelity.py)


@dataclass(frozen=True)
class RolloutView:
    id: int
    selector: dict[str, Any]
    percents: tuple[float, ...]
    current_stage: int
    version: VersionView
    codec: str | None
    rollback: bool


@dataclass(frozen=True)
class LineView:
    id: int
    name: str
    stable: VersionView | None
    rollouts: tuple[RolloutView, ...]  # offering (running or paused), newest first


@dataclass(frozen=True)
class TargetView:
    """The version a device should run (``rollout`` None: the stable version)."""

    version: VersionView
    rollout: RolloutView | None
    codec: str | None
    rollback: bool


def _version_view(session: Session, version: Version, gate: float | None) -> VersionView:
    rows = registry_store.packages(session, version.id)
    pkgs = {p.codec: PackageView(p.codec, p.sha256, p.model_sha256) for p in rows}
    shipping = fidelity.shipping_codec(((p.codec, p.bytes, p.fidelity) for p in rows), gate)
    return VersionView(version.id, version.number, pkgs, shipping)


def load_line(session: Session, name: str) -> LineView | None:
    """Everything the desired-version rule needs for one line; None if the line does not exist."""
    line = registry_store.line_by_name(session, name)
    if line is None:
        return None
    rollouts = []
    for r in store.offering(session, line.id):
        version = registry_store.version_by_id(session, r.version_id)
        if version is None:
            continue
        percents = tuple(s.percent for s in store.stages(session, r.id))
        rollouts.append(RolloutView(r.id, dict(r.selector), percents, r.current_stage,
                                    _version_view(session, version, line.min_agreement), r.codec, r.rollback))
    stable = None
    if line.stable_version is not None:
        version = registry_store.version(session, line.id, line.stable_version)
        stable = _version_view(session, version, line.min_agreement) if version is not None else None
    return LineView(line.id, line.name, stable, tuple(rollouts))


def desired_in(line: LineView, device_id: str, tags: dict[str, Any]) -> TargetView | None:
    """Newest offering rollout that has reached the device, else the stable version (pure)."""
    for r in line.rollouts:
        if not staging.selector_matches(r.selector, tags):
            continue
        stage = staging.stage_of(r.id, device_id, r.percents)
        if stage is not None and stage <= r.current_stage:
            return TargetView(r.version, r, r.codec, r.rollback)
    # a car outside every rollout gets what a rollout without --codec would ship (issue 17)
    return TargetView(line.stable, None, line.stable.shipping, False) if line.stable is not None else None


def choose_package(version: VersionView, wanted: str | None, preferred: Sequence[str]) -> PackageView | None:
    """The rollout's codec, else the server's preferred codecs in order, else any."""
    for name in (*([wanted] if wanted else []), *preferred, *sorted(version.packages)):
        if name in version.packages:
            return version.packages[name]
    return None
