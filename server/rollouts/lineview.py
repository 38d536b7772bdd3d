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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from protocol.errors import MalformedMessage
from protocol.platform import Requirements
from protocol.quality import QualityPlan, parse_gate
from server.db import as_utc
from server.orm import Version, VersionVariant
from server.registry import fidelity
from server.registry import store as registry_store
from server.rollouts import stages as staging
from server.rollouts import store
from server.rollouts import windows as windowing

#: The start of a rollout whose stored windows no longer parse: it stays closed rather than open.
NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PackageView:
    codec: str
    sha256: str
    model_sha256: str
    variant: int = 0  # which export of the version it encodes (issue 20; 0: the version's own)


@dataclass(frozen=True)
class VersionView:
    id: int
    number: int
    packages: dict[str, PackageView]  # codec -> package
    shipping: str | None = None  # the smallest package that passed the line's gate, else lossless (fidelity.py)
    requirements: Requirements | None = None  # what a car needs to run it (issue 20); None: nothing
    # platform digest -> whether that platform meets ``requirements`` (decision.can_run fills it)
    fits: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    variant: int = 0  # issue 20: 0 for the version's own export, n for its n-th variant (same id and number)
    variants: tuple[VersionView, ...] = ()  # the other exports, each a view of its own packages and requirements


@dataclass(frozen=True)
class RolloutView:
    id: int
    selector: dict[str, Any]
    percents: tuple[float, ...]
    current_stage: int
    version: VersionView
    codec: str | None
    rollback: bool
    # Issue 18: the plan signed into the offers of the shadow stage's cars while the rollout is in it (None:
    # no shadow stage), and the plan of every offer once it is past it (None: no gates, no comparison).
    shadow_plan: QualityPlan | None = None
    live_plan: QualityPlan | None = None
    # Issue 21 item 2: no new offers before ``starts_at`` or outside ``windows`` (none: always open)
    starts_at: datetime | None = None
    windows: tuple[windowing.Window, ...] = ()

    def is_open(self, now: datetime) -> bool:
        """Whether the rollout may make new offers at ``now`` (cars it already offered go on regardless)."""
        return (self.starts_at is None or now >= self.starts_at) and windowing.is_open(self.windows, now)

    def plan(self) -> QualityPlan | None:
        """The quality plan of this rollout's offers now (the same for every car it has reached)."""
        return self.shadow_plan if self.shadow_plan is not None and self.current_stage == 0 else self.live_plan


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
    quality: QualityPlan | None = None  # signed into the offer (protocol.offer.Offer.quality)
    open: bool = True  # False: the rollout is before its start or outside its windows: no NEW offer


def _version_view(session: Session, version: Version, gate: float | None) -> VersionView:
    variants = tuple(_export_view(session, version, v.variant, requirements_of(v), gate)
                     for v in registry_store.variants(session, version.id))
    return _export_view(session, version, 0, requirements_of(version), gate, variants)


def _export_view(session: Session, version: Version, variant: int, needs: Requirements | None,
                 gate: float | None, variants: tuple[VersionView, ...] = ()) -> VersionView:
    rows = registry_store.packages(session, version.id, variant)
    pkgs = {p.codec: PackageView(p.codec, p.sha256, p.model_sha256, variant) for p in rows}
    shipping = fidelity.shipping_codec(((p.codec, p.bytes, p.fidelity) for p in rows), gate)
    return VersionView(version.id, version.number, pkgs, shipping, needs, variant=variant, variants=variants)


def requirements_of(version: Version | VersionVariant) -> Requirements | None:
    """A stored version's (or variant's) requirements (None: published before issue 20, or unreadable: it needs
    nothing)."""
    if not version.requirements:
        return None
    try:
        return Requirements.from_dict(version.requirements)
    except MalformedMessage:
        return None


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
        shadow_plan, live_plan = plans(r.shadow, r.gates)
        starts_at = as_utc(r.starts_at) if r.starts_at is not None else None
        try:
            ws = windowing.parse_all(r.windows)
        except windowing.WindowError:
            ws, starts_at = (), NEVER
        rollouts.append(RolloutView(r.id, dict(r.selector), percents, r.current_stage,
                                    _version_view(session, version, line.min_agreement), r.codec, r.rollback,
                                    shadow_plan, live_plan, starts_at, ws))
    stable = None
    if line.stable_version is not None:
        version = registry_store.version(session, line.id, line.stable_version)
        stable = _version_view(session, version, line.min_agreement) if version is not None else None
    return LineView(line.id, line.name, stable, tuple(rollouts))


#: A live comparison rolls a car back only after this many compared frames in its health window: fewer
#: frames make a noisy agreement, and a good version must not roll back on a few hard frames.
LIVE_ROLLBACK_MIN_FRAMES = 100


def plans(shadow: dict[str, Any] | None, gates: list[Any] | None) -> tuple[QualityPlan | None, QualityPlan | None]:
    """(shadow plan, live plan) of a rollout from its stored settings (``Rollout.shadow``, ``Rollout.gates``).

    The live plan exists only when the rollout has gates; its rollback agreement is the ``agreement`` gate's
    threshold (a car rolls back on its own figures only when an agreement gate would fail the rollout).
    """
    sample_every = int((shadow or {}).get("sample_every", 10))
    cpu = float((shadow or {}).get("max_cpu_share", 0.25))
    shadow_plan = QualityPlan("shadow", sample_every=sample_every, max_cpu_share=cpu) if shadow else None
    if not gates:
        return shadow_plan, None
    parsed = [parse_gate(str(g)) for g in gates]
    floor = max((g.threshold for g in parsed if g.metric == "agreement" and g.op in (">=", ">")), default=None)
    live = QualityPlan("live", sample_every=sample_every, max_cpu_share=cpu,
                       rollback_below_agreement=None if floor is None else min(max(floor, 0.0), 1.0),
                       min_frames=LIVE_ROLLBACK_MIN_FRAMES)
    return shadow_plan, live


def desired_in(line: LineView, device_id: str, tags: dict[str, Any], now: datetime | None = None) -> TargetView | None:
    """Newest offering rollout that has reached the device, else the stable version (pure).

    A rollout that reached the device but is closed at ``now`` (before its start, outside its windows) is
    still the device's target, with ``open`` False: the caller resends an offer it already made and makes no
    new one; the device does not fall through to an older rollout meanwhile.
    """
    for r in line.rollouts:
        if not staging.selector_matches(r.selector, tags):
            continue
        stage = staging.stage_of(r.id, device_id, r.percents)
        if stage is not None and stage <= r.current_stage:
            is_open = now is None or r.is_open(now)
            return TargetView(r.version, r, r.codec, r.rollback, r.plan(), open=is_open)
    # a car outside every rollout gets what a rollout without --codec would ship (issue 17)
    return TargetView(line.stable, None, line.stable.shipping, False) if line.stable is not None else None


def choose_package(version: VersionView, wanted: str | None, preferred: Sequence[str]) -> PackageView | None:
    """The rollout's codec, else the server's preferred codecs in order, else any."""
    for name in (*([wanted] if wanted else []), *preferred, *sorted(version.packages)):
        if name in version.packages:
            return version.packages[name]
    return None
