"""The poll decision, once: ``decide(device, line, poll, now, policy) -> NoOffer | Resend | NewOffer`` (pure).

Both poll paths call it.  The cached path (``pollcache.answer``, on views
held in memory) sends the answer when it is ``NoOffer`` or ``Resend`` and
asks nothing to be written; anything else goes to the database path
(``service.poll``), which loads the same views inside its transaction, calls
``decide`` again and performs only the writes the decision names: the
device's running columns (``running``) and, for ``NewOffer``, a signed offer.

The rule (docs/PROTOCOL.md "Poll semantics"): the target is the newest
offering rollout whose selector matches and whose reached stages include the
device, else the line's stable version (``lineview.desired_in``); its package
is the rollout's codec, else the server's preferred codecs, else any.  No
offer when there is no such package, the car runs the target, the target is a
downgrade outside a rollback, the target's rollout is closed (before its
start or outside its maintenance windows, issue 21) and has not offered the car
the version yet, the car cannot run the target (issue 20: its
reported platform meets the requirements of no export of the version, its own
or a variant's; a car that never reported a platform is treated as able to run
anything), or the car already rolled this offer back.  The package offered is of
the export the car can run: the version's own, else the variant at the newest
opset (``export_for``).  An
offer stored for the same (rollout, version) is sent again unchanged while it
has the same codec and transfer delta, is fresh for more than half its time to
live, and was signed by the online key; otherwise a new one is signed.

Whether a transfer delta applies depends on the car's package, which only the
database knows (it is a package of the line, of the same codec, and the delta
is smaller than the package): ``PollView.deltas`` carries what is known, and a
``NewOffer`` with ``delta_known`` False asks the caller to find out and decide
again (``service.poll`` does, with the delta made outside its transaction).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from protocol.platform import Platform
from server.rollouts.lineview import LineView, PackageView, TargetView, VersionView, choose_package, desired_in

ROLLED_BACK = "rolled_back"


@dataclass(frozen=True, slots=True)
class OfferView:
    """A stored offer (one ``device_updates`` row) as the decision needs it."""

    state: str
    codec: str
    delta_sha256: str | None
    base_package_sha256: str | None
    expires_at: datetime
    envelope_json: bytes
    keyid: str | None  # which online key signed it: after a rotation the offer is signed again
    plan: dict[str, Any] | None = None  # the signed quality plan (issue 18): a changed plan is signed again


@dataclass(frozen=True, slots=True)
class LineRun:
    """What the device runs on one line (its ``device_lines`` row)."""

    running_version: int | None
    running_model_sha256: str | None
    reported_version: int | None
    drift: bool
    drift_detail: str | None


@dataclass(frozen=True, slots=True)
class DeviceView:
    pk: int
    device_id: str
    tags: dict[str, Any]
    poll_interval_s: int | None
    lines: dict[str, LineRun]  # line name -> what it runs there (issue 20: several lines per car)
    offers: dict[tuple[int, int], OfferView]  # (rollout id or 0, version id) -> offer
    platform: Platform | None = None  # what the car reported it can run (issue 20); None: never reported
    platform_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class PollView:
    """What the car said it runs, and the transfer deltas known to apply to its package.

    ``deltas``: target package SHA-256 -> the delta's SHA-256 from the car's package, or None when no delta
    applies; a target missing from it (or no mapping at all: the cached path) is not known.
    """

    line: str
    current_version: int
    current_model_sha256: str | None = None
    current_package_sha256: str | None = None
    deltas: Mapping[str, str | None] | None = None
    platform_sha256: str | None = None  # the digest the car sent (issue 20)
    platform: Platform | None = None  # the platform itself, when the car sent it


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """The server settings the decision reads, and the online key that signs offers now."""

    poll_interval_s: int
    codecs: tuple[str, ...]
    offer_ttl_s: float
    key_id: str


@dataclass(frozen=True, slots=True)
class Running:
    """The ``device_lines`` row a poll sets (what the car runs on the polled line, and drift from what it
    reported installing there); ``new``: the car polls this line for the first time (the row is created)."""

    line: str
    running_version: int
    running_model_sha256: str | None
    drift: bool
    drift_detail: str | None
    platform: Platform | None = None  # a newly reported platform to store (None: unchanged)
    new: bool = False  # the device's first poll of this line: its row is created


@dataclass(frozen=True, slots=True)
class NoOffer:
    poll_interval_s: int
    running: Running | None  # None: nothing to write


@dataclass(frozen=True, slots=True)
class Resend:
    """The stored offer again, unchanged."""

    poll_interval_s: int
    envelope_json: bytes
    running: Running | None


@dataclass(frozen=True, slots=True)
class NewOffer:
    """Sign (and store) an offer of ``package`` of ``target``.

    ``delta_known`` False: whether a transfer delta from the car's package applies is not known; the caller
    finds out (``PollView.deltas``) and decides again.  True: ``delta_sha256`` is the delta to offer, or None.
    """

    poll_interval_s: int
    target: TargetView
    package: PackageView
    delta_known: bool
    delta_sha256: str | None
    running: Running | None

    @property
    def rollout_id(self) -> int | None:
        return self.target.rollout.id if self.target.rollout else None


Decision = NoOffer | Resend | NewOffer
_UNKNOWN = object()  # "no idea which delta": a sentinel, as None means "no delta"


def running_change(device: DeviceView, line: str, poll: PollView) -> Running | None:
    """What this poll sets on the device's row for ``line``, or None when it already holds these values.

    Each line is judged alone: a car polling two lines in turn writes nothing once both rows are current.
    """
    held = device.lines.get(line)
    reported = held.reported_version if held is not None else None
    drift = reported is not None and poll.current_version != reported
    detail = (f"reported installed version {reported} but polls with version {poll.current_version}"
              if drift else None)
    platform = poll.platform if poll.platform is not None and poll.platform_sha256 != device.platform_sha256 else None
    if (held is not None and held.running_version == poll.current_version
            and held.running_model_sha256 == poll.current_model_sha256 and held.drift == drift
            and held.drift_detail == detail and platform is None):
        return None
    return Running(line, poll.current_version, poll.current_model_sha256, drift, detail, platform, new=held is None)


def can_run(version: VersionView, platform: Platform | None) -> bool:
    """Whether a car with ``platform`` can run ``version`` (issue 20).  An unknown platform can: it is a car
    from before platforms were reported, and withholding every update from it would strand it.

    Memoised per version and platform digest, so the cached poll path pays a dict lookup.
    """
    if platform is None or version.requirements is None:
        return True
    digest = platform.digest()
    fits = version.fits.get(digest)
    if fits is None:
        fits = version.fits[digest] = not version.requirements.unmet(platform)
    return fits


def export_for(version: VersionView, platform: Platform | None) -> VersionView | None:
    """The export of ``version`` this car can run (issue 20, variants): the primary when it can, else the variant
    at the newest ai.onnx opset (a later variant breaking ties); None when it can run none of them."""
    if can_run(version, platform):
        return version
    fitting = [v for v in version.variants if can_run(v, platform)]
    return max(fitting, key=lambda v: ((v.requirements.opsets.get("ai.onnx", 0) if v.requirements else 0),
                                       v.variant), default=None)


def _offered_package(offer: OfferView) -> str | None:
    """The package a stored offer names: with variants one (rollout, version) may ship more than one package."""
    try:
        return str(json.loads(offer.envelope_json)["signed"]["package"]["sha256"])
    except (ValueError, KeyError, TypeError):
        return None


def _wanted_delta(poll: PollView, package: PackageView, offer: OfferView | None) -> str | None | object:
    """The delta an offer of ``package`` should carry for this car, or ``_UNKNOWN``."""
    base = poll.current_package_sha256
    if not base or base == package.sha256:
        return None
    if poll.deltas is not None and package.sha256 in poll.deltas:
        return poll.deltas[package.sha256]
    if offer is not None and offer.delta_sha256 is not None and offer.base_package_sha256 == base:
        return offer.delta_sha256  # deltas are immutable: the one stored for this base still applies
    return _UNKNOWN


def _offers(target: TargetView, package: PackageView, poll: PollView) -> bool:
    """Whether the car should get the target: it does not run it already, and it is no downgrade."""
    runs_target = poll.current_version == target.version.number and (
        poll.current_model_sha256 in (None, package.model_sha256))
    downgrade = target.version.number < poll.current_version and not target.rollback
    return not runs_target and not downgrade


def decide(device: DeviceView, line: LineView, poll: PollView, now: datetime, policy: PollPolicy) -> Decision:
    """What to answer this poll, and what (if anything) to write (see the module docstring)."""
    interval = device.poll_interval_s or policy.poll_interval_s
    running = running_change(device, line.name, poll)
    target = desired_in(line, device.device_id, device.tags, now)
    if target is None:
        return NoOffer(interval, running)
    export = export_for(target.version, poll.platform or device.platform)
    if export is None:
        return NoOffer(interval, running)  # the car keeps its version; the rollout counts it incompatible
    package = choose_package(export, target.codec, policy.codecs)
    if package is None or not _offers(target, package, poll):
        return NoOffer(interval, running)
    offer = device.offers.get((target.rollout.id if target.rollout else 0, target.version.id))
    if offer is not None and offer.state == ROLLED_BACK:
        return NoOffer(interval, running)  # this device tried and fell back; wait for an operator
    if offer is None and not target.open:
        return NoOffer(interval, running)  # issue 21: before its start or outside its windows, no new offer
    if offer is not None and target.version.variants and _offered_package(offer) != package.sha256:
        offer = None  # it offered another export of the version (the car's platform changed): sign anew
    wanted = _wanted_delta(poll, package, offer)
    if wanted is _UNKNOWN:
        return NewOffer(interval, target, package, False, None, running)
    delta = wanted if isinstance(wanted, str) else None
    plan = target.quality.to_dict() if target.quality is not None else None
    if (offer is not None and offer.codec == package.codec and offer.delta_sha256 == delta and offer.plan == plan
            and offer.expires_at - now > timedelta(seconds=policy.offer_ttl_s / 2) and offer.keyid == policy.key_id):
        return Resend(interval, offer.envelope_json, running)
    return NewOffer(interval, target, package, True, delta, running)
