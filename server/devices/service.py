"""Device decisions: polls that answer with signed offers, reports, inventory, drift (enrolment: ``enrollment.py``).

Poll path: resolve the desired version (``rollouts.service.desired_for``),
and if the car is not running it, answer with a signed offer.  The offer is
stored on the device's update row and re-sent unchanged on later polls
(same ``manifest_version``), so a steady-state poll writes nothing; it is
re-signed with a higher ``manifest_version`` only when it is about to
expire or the car's base package changed (a different delta applies).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protocol.contract import InputContract
from protocol.offer import Artifact, Delta, Offer, Smoke, artifact_url
from server.config import Settings
from server.db import as_utc, utcnow
from server.devices import device_keys, schemas, states, store
from server.devices.pollcache import signed_by
from server.devices.presence import LastSeen
from server.errors import IllegalTransition, NotFound, Unauthorized
from server.orm import AuditEntry, Device, DeviceReport, DeviceUpdate, Line, Package, Version
from server.registry import store as registry_store
from server.registry.storage import PackageStorage
from server.rollouts import service as rollouts
from server.security import Signer


def _next_manifest_version(device: Device, now: datetime) -> int:
    return max(int(device.manifest_version or 0) + 1, int(now.timestamp() * 1000))


def _choose_codec(session: Session, version: Version, wanted: str | None, settings: Settings) -> Package | None:
    pkgs = {p.codec: p for p in registry_store.packages(session, version.id)}
    for name in ([wanted] if wanted else []) + settings.codec_list() + sorted(pkgs):
        if name in pkgs:
            return pkgs[name]
    return None


def _delta(session: Session, storage: PackageStorage, line: Line, target: Package,
           current_package_sha256: str | None) -> tuple[Any, Package | None]:
    if not current_package_sha256 or current_package_sha256 == target.sha256:
        return None, None
    base = registry_store.line_package_by_sha(session, line.id, current_package_sha256)
    if base is None or base.codec != target.codec:
        return None, None
    return storage.delta_for(session, base, target), base


def _offer(device: Device, line: Line, version: Version, pkg: Package, rollout_id: int | None, rollback: bool,
           delta: Any, base: Package | None, manifest_version: int, expires: datetime) -> dict[str, Any]:
    """The ``signed`` body of an offer (protocol/offer.py is the one definition of its fields)."""
    smoke = pkg.smoke
    return Offer(
        device_id=device.device_id, line=line.name, rollout_id=rollout_id, manifest_version=manifest_version,
        target_version=version.number, rollback=rollback, codec=pkg.codec, model_sha256=pkg.model_sha256,
        contract=InputContract.from_dict(version.contract),
        package=Artifact(pkg.sha256, pkg.bytes, artifact_url(pkg.sha256)),
        delta=None if delta is None or base is None else Delta(
            delta.sha256, delta.bytes, artifact_url(delta.sha256), base_package_sha256=base.sha256),
        smoke=Smoke(seed=smoke["seed"], count=smoke["count"], shape=tuple(smoke["shape"]),
                    input_name=smoke["input_name"], expected=smoke["expected"], atol=smoke["atol"]),
        expires=expires,
    ).to_signed()


def _note_running(device: Device, line: Line, body: schemas.PollIn) -> None:
    """Record what the car runs, and flag drift; writes only when something changed."""
    if device.line != line.name:
        device.line = line.name
    if device.running_version != body.current_version or device.running_model_sha256 != body.current_model_sha256:
        device.running_version = body.current_version
        device.running_model_sha256 = body.current_model_sha256
    drift = device.reported_version is not None and body.current_version != device.reported_version
    detail = (f"reported installed version {device.reported_version} but polls with version {body.current_version}"
              if drift else None)
    if device.drift != drift or device.drift_detail != detail:
        device.drift, device.drift_detail = drift, detail


def _new_update(session: Session, device: Device, rollout_id: int | None, version: Version,
                now: datetime) -> DeviceUpdate:
    """The offer row, created once even if the same device polls twice at the same moment."""
    row = DeviceUpdate(device_pk=device.id, rollout_id=rollout_id, rollout_key=rollout_id or 0,
                       version_id=version.id, target_version=version.number, state="offered", bytes_reported=0,
                       codec="", package_sha256="", manifest_version=0, envelope={}, expires_at=now, created_at=now,
                       updated_at=now)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
        return row
    except IntegrityError:
        winner = store.update_for(session, device.id, rollout_id, version.id)
        assert winner is not None
        return winner


def _offered_package(session: Session, settings: Settings, device: Device, body: schemas.PollIn,
                     ) -> tuple[Line, rollouts.Target, Package] | None:
    """The line, target and package a poll would offer, or None when it offers nothing (a read)."""
    line = registry_store.line_by_name(session, body.line)
    if line is None:
        return None
    target = rollouts.desired_for(session, line, device)
    pkg = _choose_codec(session, target.version, target.codec, settings) if target else None
    if target is None or pkg is None or not _offers(target, pkg, body):
        return None
    return line, target, pkg


def _offers(target: rollouts.Target | None, pkg: Package | None, body: schemas.PollIn) -> bool:
    """Whether a poll gets an offer: there is a target with a package, not already run, and not a downgrade."""
    if target is None or pkg is None:
        return False
    runs_target = body.current_version == target.version.number and (
        body.current_model_sha256 in (None, pkg.model_sha256))
    downgrade = target.version.number < body.current_version and not target.rollback
    return not runs_target and not downgrade


def prepare_poll(session: Session, settings: Settings, storage: PackageStorage, device: Device,
                 body: schemas.PollIn) -> None:
    """Make the transfer delta this poll will offer, if nobody has: in a read scope, before the write slot.

    The codec work of an on-demand delta took SQLite's only write slot for its whole duration, so another
    car's enrolment or reports waited for it (issue 15).  ``poll`` then finds the bytes made and only
    inserts the delta's row.
    """
    offered = _offered_package(session, settings, device, body)
    if offered is None or not body.current_package_sha256 or body.current_package_sha256 == offered[2].sha256:
        return
    line, _, pkg = offered
    base = registry_store.line_package_by_sha(session, line.id, body.current_package_sha256)
    if base is not None and base.codec == pkg.codec:
        storage.prepare_delta(session, base, pkg)


def poll(session: Session, settings: Settings, signer: Signer, storage: PackageStorage, presence: LastSeen,
         device: Device, body: schemas.PollIn) -> schemas.PollOut:
    """Answer a poll: no offer when the car runs its desired version, else a signed offer.

    Raises:
        NotFound: the line does not exist.
    """
    now = utcnow()
    presence.note(device.id, now)
    interval = device.poll_interval_s or settings.poll_interval_s
    line = registry_store.line_by_name(session, body.line)
    if line is None:
        raise NotFound(f"model line {body.line!r} does not exist on this registry")
    target = rollouts.desired_for(session, line, device)
    pkg = _choose_codec(session, target.version, target.codec, settings) if target else None
    if target is None or pkg is None or not _offers(target, pkg, body):
        _note_running(device, line, body)
        return schemas.PollOut(poll_interval_s=interval, offer=None)
    rollout_id = target.rollout.id if target.rollout else None
    existing = store.update_for(session, device.id, rollout_id, target.version.id)
    if existing is not None and existing.state == "rolled_back":
        _note_running(device, line, body)  # this device tried and fell back; wait for an operator
        return schemas.PollOut(poll_interval_s=interval, offer=None)
    delta, base = _delta(session, storage, line, pkg, body.current_package_sha256)
    _note_running(device, line, body)
    wanted_delta = delta.sha256 if delta is not None else None
    if existing is not None and existing.codec == pkg.codec and existing.delta_sha256 == wanted_delta and \
            as_utc(existing.expires_at) - now > timedelta(seconds=settings.offer_ttl_s / 2) and \
            signed_by(existing.envelope) == signer.key_id:  # after a key rotation: signed again
        return schemas.PollOut(poll_interval_s=interval, offer=existing.envelope)  # same offer, no write
    mv = _next_manifest_version(device, now)
    device.manifest_version = mv
    expires = now + timedelta(seconds=settings.offer_ttl_s)
    envelope = signer.envelope(_offer(device, line, target.version, pkg, rollout_id, target.rollback, delta, base,
                                      mv, expires))
    if existing is None:
        existing = _new_update(session, device, rollout_id, target.version, now)
    existing.codec, existing.package_sha256 = pkg.codec, pkg.sha256
    existing.delta_sha256 = wanted_delta
    existing.base_package_sha256 = base.sha256 if delta is not None and base is not None else None
    existing.rollback, existing.manifest_version, existing.envelope = target.rollback, mv, envelope
    existing.expires_at, existing.updated_at = expires, now
    session.flush()
    return schemas.PollOut(poll_interval_s=interval, offer=envelope)


def _apply_report(session: Session, device: Device, r: schemas.ReportIn) -> DeviceUpdate:
    """Raises NotFound (no such offer) or IllegalTransition; changes nothing when it raises."""
    update = store.update_for_report(session, device.id, r.rollout_id, r.target_version)
    if update is None:
        raise NotFound(f"no offer of version {r.target_version} (rollout {r.rollout_id}) was made to this device")
    new = states.transition(update.state, r.state)
    now = utcnow()
    update.state, update.updated_at = new, now
    update.reason = r.reason if new in ("failed", "rolled_back") else None
    if r.bytes_received is not None:
        update.bytes_reported = max(update.bytes_reported or 0, r.bytes_received)
    if r.artifact:
        update.artifact_reported = r.artifact
    if new == "installed":
        device.reported_version = r.target_version
        device.reported_model_sha256 = r.running_model_sha256
    elif new == "rolled_back":
        device.reported_version = r.running_version
        device.reported_model_sha256 = r.running_model_sha256
    return update


def _signatures(device: Device, body: schemas.ReportsIn, raw: list[dict[str, Any]] | None) -> dict[int, bool]:
    """seq -> whether the report was signed by the device's registered key (as sent: ``raw``).

    A device enrolled without a key (before keys existed) may sign anyway: its reports count as unsigned.

    Raises:
        Unauthorized: a report carries a signature that does not verify (nothing is applied).
    """
    signed: dict[int, bool] = {}
    for i, r in enumerate(body.reports):
        sent = raw[i] if raw is not None and i < len(raw) and isinstance(raw[i], dict) else None
        ok = sent is not None and r.signature is not None and device_keys.report_verifies(device.public_key, sent)
        if r.signature is not None and not ok and device.public_key is not None:
            raise Unauthorized(f"report seq {r.seq}: signature does not verify with the device's registered key "
                               "(wrong key, or the report was altered); sign the canonical JSON of the report "
                               "without its signature field")
        signed[r.seq] = ok
    return signed


def _install_evidence(session: Session, device: Device, update: DeviceUpdate, signed: bool) -> str | None:
    """Why an "installed" report is believed: its signature, or a full download of the offer's artifact."""
    if signed:
        return "signed"
    artifacts = {sha for sha in (update.package_sha256, update.delta_sha256) if sha}
    return "download" if store.downloaded_in_full(session, device.id, artifacts) else None


def report(session: Session, device: Device, body: schemas.ReportsIn,
           raw: list[dict[str, Any]] | None = None) -> schemas.ReportsOut:
    """Apply queued reports in seq order; re-sent seqs are acknowledged without effect.

    ``raw`` is the reports as the car sent them (their signatures cover those exact fields).

    Raises:
        Unauthorized: a report's signature does not verify (nothing changes).
        IllegalTransition / NotFound: a request with a single report that is refused (nothing changes).
    """
    accepted: list[int] = []
    rejected: list[schemas.Rejected] = []
    touched: set[int] = set()
    signed = _signatures(device, body, raw)
    # One device's report requests queue behind each other (row lock on PostgreSQL; SQLite's BEGIN IMMEDIATE
    # already serialises): a re-sent batch racing the original is then seen as already applied, not applied twice.
    session.refresh(device, with_for_update=True)
    for r in sorted(body.reports, key=lambda x: x.seq):
        if store.report(session, device.id, r.seq) is not None:
            accepted.append(r.seq)  # already applied: idempotent
            continue
        try:
            with session.begin_nested():
                update = _apply_report(session, device, r)
                if r.state == "installed":
                    update.install_evidence = _install_evidence(session, device, update, signed[r.seq])
                session.add(DeviceReport(device_pk=device.id, seq=r.seq, update_id=update.id, state=r.state,
                                         accepted=True, body=r.model_dump(mode="json"), signed=signed[r.seq],
                                         received_at=utcnow()))
                device.last_seq = max(device.last_seq or 0, r.seq)
                session.flush()
        except (IllegalTransition, NotFound) as e:
            if len(body.reports) == 1:
                raise
            rejected.append(schemas.Rejected(seq=r.seq, error=e.code, detail=e.message))
            continue
        accepted.append(r.seq)
        if update.rollout_id is not None:
            touched.add(update.rollout_id)
    for rollout_id in sorted(touched):
        rollouts.evaluate(session, rollout_id)
    return schemas.ReportsOut(accepted=accepted, rejected=rejected)


def _device_out(session: Session, device: Device, presence: LastSeen, with_updates: bool) -> schemas.DeviceOut:
    seen = presence.peek(device.id) or as_utc(device.last_seen_at)
    updates = [schemas.UpdateOut(rollout_id=u.rollout_id, target_version=u.target_version, codec=u.codec,
                                 state=u.state, reason=u.reason, bytes_reported=u.bytes_reported,
                                 manifest_version=u.manifest_version, updated_at=u.updated_at)
               for u in store.updates(session, device.id)] if with_updates else []
    return schemas.DeviceOut(device_id=device.device_id, tags=device.tags, line=device.line,
                             running_version=device.running_version, reported_version=device.reported_version,
                             drift=device.drift, drift_detail=device.drift_detail,
                             poll_interval_s=device.poll_interval_s, last_seen_at=seen,
                             created_at=device.created_at, updates=updates, public_key=device.public_key,
                             revoked_at=device.revoked_at, decommissioned_at=device.decommissioned_at,
                             reauthorized_until=device.reauthorized_until)


def inventory(session: Session, presence: LastSeen, tag_filter: dict[str, str] | None = None,
              drift_only: bool = False) -> list[schemas.DeviceOut]:
    out = []
    for d in store.all_devices(session):
        if d.decommissioned_at is not None:
            continue  # no longer part of the fleet (``device_detail`` still shows it)
        if tag_filter and not all(str(d.tags.get(k)) == v for k, v in tag_filter.items()):
            continue
        if drift_only and not d.drift:
            continue
        out.append(_device_out(session, d, presence, with_updates=False))
    return out


def device_detail(session: Session, presence: LastSeen, device_id: str) -> schemas.DeviceOut:
    d = store.by_device_id(session, device_id)
    if d is None:
        raise NotFound(f"device {device_id!r} is not enrolled")
    return _device_out(session, d, presence, with_updates=True)


def update_device(session: Session, presence: LastSeen, device_id: str, body: schemas.DevicePatch,
                  actor: str) -> schemas.DeviceOut:
    """Change a device's tags or poll interval (the next poll answer carries the new interval).

    Raises:
        NotFound: the device is not enrolled.
    """
    d = store.by_device_id(session, device_id)
    if d is None:
        raise NotFound(f"device {device_id!r} is not enrolled")
    changes = body.model_dump(exclude_unset=True)
    if "tags" in changes and body.tags is not None:
        d.tags = dict(body.tags)
    if "poll_interval_s" in changes:
        d.poll_interval_s = body.poll_interval_s
    session.add(AuditEntry(at=utcnow(), actor=actor, action="device.update", detail={"device_id": device_id,
                                                                                      **changes}))
    session.flush()
    return _device_out(session, d, presence, with_updates=True)


__all__ = ["device_detail", "inventory", "poll", "report", "update_device"]
