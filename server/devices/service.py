"""Device decisions: polls that answer with signed offers, reports, inventory, drift (enrolment: ``enrollment.py``).

Poll path: load the views the poll cache holds (``pollcache.load_device``,
``lineview.load_line``) inside the transaction, ask ``decision.decide``, and
perform only the writes it names: the running columns, and for a new offer a
signed envelope.  The offer is stored on the device's update row and re-sent unchanged on later polls
(same ``manifest_version``), so a steady-state poll writes nothing; it is
re-signed with a higher ``manifest_version`` only when it is about to
expire or the car's base package changed (a different delta applies).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protocol.contract import InputContract
from protocol.offer import Artifact, Delta, Offer, Smoke, artifact_url
from protocol.quality import QualityPlan
from server import audit, webhooks
from server.config import Settings
from server.db import as_utc, utcnow
from server.devices import decision, device_keys, schemas, states, store
from server.devices.pollcache import load_device, policy, poll_view
from server.devices.presence import LastSeen
from server.errors import Conflict, IllegalTransition, NotFound, Unauthorized, Unprocessable
from server.orm import Delta as DeltaRow
from server.orm import Device, DeviceLine, DeviceReport, DeviceUpdate, Line, Package, Version
from server.registry import store as registry_store
from server.registry.storage import PackageStorage
from server.rollouts import quality
from server.rollouts import service as rollouts
from server.rollouts.lineview import LineView, PackageView, load_line
from server.rollouts.membership import MembershipCache
from server.security import Signer


def _next_manifest_version(device: Device, now: datetime) -> int:
    return max(int(device.manifest_version or 0) + 1, int(now.timestamp() * 1000))


def _offer(device: Device, line: Line, version: Version, pkg: Package, rollout_id: int | None, rollback: bool,
           delta: DeltaRow | None, base: str | None, manifest_version: int, expires: datetime,
           quality: QualityPlan | None = None) -> dict[str, Any]:
    """The ``signed`` body of an offer, the one place it is built (protocol/offer.py defines its fields)."""
    smoke = pkg.smoke
    return Offer(
        device_id=device.device_id, line=line.name, rollout_id=rollout_id, manifest_version=manifest_version,
        target_version=version.number, rollback=rollback, codec=pkg.codec, model_sha256=pkg.model_sha256,
        contract=InputContract.from_dict(version.contract),
        package=Artifact(pkg.sha256, pkg.bytes, artifact_url(pkg.sha256)),
        delta=None if delta is None or base is None else Delta(
            delta.sha256, delta.bytes, artifact_url(delta.sha256), base_package_sha256=base),
        smoke=Smoke(seed=smoke["seed"], count=smoke["count"], shape=tuple(smoke["shape"]),
                    input_name=smoke["input_name"], expected=smoke["expected"], atol=smoke["atol"]),
        expires=expires,
        quality=quality,
    ).to_signed()


def _note_running(session: Session, device: Device, running: decision.Running | None) -> None:
    """Write what the decision says the car runs on the polled line (None: it is already recorded)."""
    if running is None:
        return
    row = store.device_line(session, device.id, running.line)
    if row is None:
        row = _new_device_line(session, device, running.line)
    row.running_version, row.running_model_sha256 = running.running_version, running.running_model_sha256
    if running.drift and not row.drift:  # issue 21: drift is an event operators subscribe to
        webhooks.emit(session, "device.drift", device_id=device.device_id, line=running.line,
                      running_version=running.running_version, detail=running.drift_detail)
    row.drift, row.drift_detail = running.drift, running.drift_detail
    if running.platform is not None:  # the car reported a new platform (issue 20)
        device.platform, device.platform_sha256 = running.platform.to_dict(), running.platform.digest()


def _new_device_line(session: Session, device: Device, line: str) -> DeviceLine:
    """The device's row for ``line``, created once even if two polls of the same line race."""
    row = DeviceLine(device_pk=device.id, line=line, drift=False)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
        return row
    except IntegrityError:
        winner = store.device_line(session, device.id, line)
        assert winner is not None
        return winner


def _new_update(session: Session, device: Device, rollout_id: int | None, version_id: int, target_version: int,
                now: datetime) -> DeviceUpdate:
    """The offer row, created once even if the same device polls twice at the same moment."""
    row = DeviceUpdate(device_pk=device.id, rollout_id=rollout_id, rollout_key=rollout_id or 0,
                       version_id=version_id, target_version=target_version, state="offered", bytes_reported=0,
                       codec="", package_sha256="", manifest_version=0, envelope={}, expires_at=now, created_at=now,
                       updated_at=now)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
        return row
    except IntegrityError:
        winner = store.update_for(session, device.id, rollout_id, version_id)
        assert winner is not None
        return winner


def _views(session: Session, device: Device, body: schemas.PollIn,
           ) -> tuple[decision.DeviceView, LineView, decision.PollView]:
    """The views the decision reads, loaded as the poll cache loads them (every offer of the device).

    Raises:
        NotFound: the line does not exist.
    """
    line = load_line(session, body.line)
    if line is None:
        raise NotFound(f"model line {body.line!r} does not exist on this registry")
    view = load_device(session, device.token_sha256, every_offer=True)
    assert view is not None  # the caller holds the row
    return view, line, poll_view(body)


def _delta_packages(session: Session, line: LineView, poll: decision.PollView, version_id: int,
                    target: PackageView) -> tuple[Package, Package] | None:
    """(base, target) rows when a transfer delta from the car's package can apply: same line, same codec."""
    if not poll.current_package_sha256 or poll.current_package_sha256 == target.sha256:
        return None
    base = registry_store.line_package_by_sha(session, line.id, poll.current_package_sha256)
    if base is None or base.codec != target.codec or base.variant != target.variant:
        return None  # issue 20: a variant's delta base is the same variant of the car's version, else full package
    return base, _package_row(session, version_id, target.codec, target.variant)


def _package_row(session: Session, version_id: int, codec: str, variant: int = 0) -> Package:
    row = registry_store.package(session, version_id, codec, variant)
    assert row is not None  # the line view was read in this session
    return row


def _decide(session: Session, storage: PackageStorage, device: Device, body: schemas.PollIn, now: datetime,
            rules: decision.PollPolicy, make_delta: bool) -> tuple[decision.Decision, LineView]:
    """Decide on the views read in ``session``; when the decision needs to know the transfer delta, find it
    (``make_delta``: the row, made now; else only its bytes, made for a later transaction) and decide again."""
    view, line, poll = _views(session, device, body)
    made = decision.decide(view, line, poll, now, rules)
    if not isinstance(made, decision.NewOffer) or made.delta_known:
        return made, line
    pair = _delta_packages(session, line, poll, made.target.version.id, made.package)
    if pair is not None and not make_delta:
        storage.prepare_delta(session, *pair)
        return made, line
    delta = storage.delta_for(session, *pair) if pair is not None else None
    known = replace(poll, deltas={made.package.sha256: delta.sha256 if delta is not None else None})
    return decision.decide(view, line, known, now, rules), line


def prepare_poll(session: Session, settings: Settings, signer: Signer, storage: PackageStorage, device: Device,
                 body: schemas.PollIn) -> None:
    """Make the transfer delta this poll will offer, if nobody has: in a read scope, before the write slot.

    The codec work of an on-demand delta took SQLite's only write slot for its whole duration, so another
    car's enrolment or reports waited for it (issue 15).  ``poll`` then finds the bytes made and only
    inserts the delta's row.
    """
    with contextlib.suppress(NotFound):  # an unknown line: ``poll`` says so
        _decide(session, storage, device, body, utcnow(), policy(settings, signer.key_id), make_delta=False)


def poll(session: Session, settings: Settings, signer: Signer, storage: PackageStorage, presence: LastSeen,
         device: Device, body: schemas.PollIn) -> tuple[int, bytes | None]:
    """Answer a poll: (poll interval, the offer's envelope as JSON or None), writing only what the decision asks.

    Raises:
        NotFound: the line does not exist.
    """
    now = utcnow()
    presence.note(device.id, now)
    made, line = _decide(session, storage, device, body, now, policy(settings, signer.key_id), make_delta=True)
    _note_running(session, device, made.running)
    if isinstance(made, decision.NoOffer):
        return made.poll_interval_s, None
    if isinstance(made, decision.Resend):
        return made.poll_interval_s, made.envelope_json
    envelope = _sign_offer(session, settings, signer, device, line, made, body.current_package_sha256, now)
    return made.poll_interval_s, json.dumps(envelope).encode()


def _sign_offer(session: Session, settings: Settings, signer: Signer, device: Device, line: LineView,
                made: decision.NewOffer, car_package: str | None, now: datetime) -> dict[str, Any]:
    """Sign the new offer and store it on the device's update row for this (rollout, version)."""
    version = registry_store.version_by_id(session, made.target.version.id)
    line_row = session.get(Line, line.id)
    assert version is not None and line_row is not None  # the line view was read in this session
    pkg = _package_row(session, version.id, made.package.codec, made.package.variant)
    delta = registry_store.delta(session, car_package, pkg.sha256) if made.delta_sha256 and car_package else None
    base = delta.base_sha256 if delta is not None else None
    mv = _next_manifest_version(device, now)
    device.manifest_version = mv
    expires = now + timedelta(seconds=settings.offer_ttl_s)
    envelope = signer.envelope(_offer(device, line_row, version, pkg, made.rollout_id, made.target.rollback, delta,
                                      base, mv, expires, made.target.quality))
    row = store.update_for(session, device.id, made.rollout_id, version.id)
    if row is None:
        row = _new_update(session, device, made.rollout_id, version.id, version.number, now)
    row.codec, row.package_sha256 = pkg.codec, pkg.sha256
    row.delta_sha256, row.base_package_sha256 = made.delta_sha256, base
    row.rollback, row.manifest_version, row.envelope = made.target.rollback, mv, envelope
    row.expires_at, row.updated_at = expires, now
    session.flush()
    return envelope


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
    if new in ("installed", "rolled_back"):
        line = store.line_of_update(session, update)
        row = store.device_line(session, device.id, line) or _new_device_line(session, device, line)
        row.reported_version = r.target_version if new == "installed" else r.running_version
        row.reported_model_sha256 = r.running_model_sha256
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


def report(session: Session, members: MembershipCache, device: Device, body: schemas.ReportsIn,
           raw: list[dict[str, Any]] | None = None,
           judge_quality: Callable[[int], bool] | None = None) -> schemas.ReportsOut:
    """Apply queued reports in seq order; re-sent seqs are acknowledged without effect.

    ``raw`` is the reports as the car sent them (their signatures cover those exact fields).  A rollout that
    an accepted report touched is judged now; one that only quality summaries touched, when ``judge_quality``
    says so (``JudgeThrottle.due``; None: always), else on the rollout tick.

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
    by_quality: set[int] = set()
    quality_accepted, quality_rejected = _record_quality(session, device, body, by_quality)
    touched |= {r for r in by_quality - touched if judge_quality is None or judge_quality(r)}
    for rollout_id in sorted(touched):
        rollouts.evaluate(session, members, rollout_id)
    return schemas.ReportsOut(accepted=accepted, rejected=rejected, quality_accepted=quality_accepted,
                              quality_rejected=quality_rejected)


def _record_quality(session: Session, device: Device, body: schemas.ReportsIn,
                    touched: set[int]) -> tuple[list[int], list[schemas.Rejected]]:
    """Keep each summary unless one with an equal or higher seq is held (acknowledged either way); a summary for
    a rollout that made this device no offer, or a version that does not exist, is refused on its own."""
    accepted: list[int] = []
    rejected: list[schemas.Rejected] = []
    for s in sorted(body.summaries(), key=lambda x: x.seq):
        try:
            with session.begin_nested():
                if quality.record(session, device.id, device.device_id, s):
                    assert s.rollout_id is not None
                    touched.add(s.rollout_id)
        except (NotFound, Conflict) as e:
            rejected.append(schemas.Rejected(seq=s.seq, error=e.code, detail=e.message))
            continue
        accepted.append(s.seq)
    return accepted, rejected


def _device_out(session: Session, device: Device, presence: LastSeen, with_updates: bool,
                lines: list[DeviceLine] | None = None) -> schemas.DeviceOut:
    """The device as the API shows it: every line it runs (``lines``), and for the single-line readers of
    before issue 20 its first line's figures in ``line``/``running_version``/``reported_version``, with
    ``drift`` true when any line drifts."""
    seen = presence.peek(device.id) or as_utc(device.last_seen_at)
    updates = [schemas.UpdateOut(rollout_id=u.rollout_id, target_version=u.target_version, codec=u.codec,
                                 state=u.state, reason=u.reason, bytes_reported=u.bytes_reported,
                                 manifest_version=u.manifest_version, updated_at=u.updated_at)
               for u in store.updates(session, device.id)] if with_updates else []
    runs = [schemas.DeviceLineOut(line=r.line, running_version=r.running_version,
                                  running_model_sha256=r.running_model_sha256, reported_version=r.reported_version,
                                  drift=bool(r.drift), drift_detail=r.drift_detail)
            for r in (lines if lines is not None else store.device_lines(session, device.id))]
    first = runs[0] if runs else None
    drifted = next((r for r in runs if r.drift), None)
    return schemas.DeviceOut(device_id=device.device_id, tags=device.tags, line=first.line if first else None,
                             running_version=first.running_version if first else None,
                             reported_version=first.reported_version if first else None,
                             drift=drifted is not None, drift_detail=drifted.drift_detail if drifted else None,
                             lines=runs, poll_interval_s=device.poll_interval_s, last_seen_at=seen,
                             created_at=device.created_at, updates=updates, public_key=device.public_key,
                             revoked_at=device.revoked_at, decommissioned_at=device.decommissioned_at,
                             reauthorized_until=device.reauthorized_until, platform=device.platform)


def encode_cursor(device_id: str) -> str:
    """The opaque ``X-Next-Cursor`` of a page that ends at ``device_id`` (base64url, no padding): callers pass it
    back unchanged, so the key it holds may change without breaking them."""
    return base64.urlsafe_b64encode(f"d:{device_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The device id a cursor continues after.

    Raises:
        Unprocessable: not a cursor this server made (422 naming the ``cursor`` parameter).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as e:
        raise Unprocessable(f"cursor {cursor[:40]!r} is not a cursor of GET /devices (pass X-Next-Cursor unchanged)",
                            code="bad_cursor") from e
    if not raw.startswith("d:") or not re.fullmatch(schemas.DEVICE_ID, raw[2:]):
        raise Unprocessable(f"cursor {cursor[:40]!r} is not a cursor of GET /devices (pass X-Next-Cursor unchanged)",
                            code="bad_cursor")
    return raw[2:]


def parse_tag_filter(tag: list[str] | None) -> dict[str, str]:
    """``key=value`` pairs (at most ``MAX_TAGS``) of the inventory's ``tag`` filter.

    Raises:
        Unprocessable: another shape (422 naming ``tag``).
    """
    pairs = tag or []
    if len(pairs) > schemas.MAX_TAGS:
        raise Unprocessable(f"tag: at most {schemas.MAX_TAGS} tag filters, got {len(pairs)}", code="bad_tag")
    bad = [t for t in pairs if "=" not in t or not t.split("=", 1)[0] or len(t) > 400]
    if bad:
        raise Unprocessable(f"tag {bad[0][:60]!r} is not key=value (for example region=eu)", code="bad_tag")
    return dict(t.split("=", 1) for t in pairs)


def inventory_window(session: Session, presence: LastSeen, f: store.InventoryFilter, *, limit: int,
                     after: str | None = None, before: str | None = None) -> list[schemas.DeviceOut]:
    """Up to ``limit`` devices in device id order after ``after`` (or the last ones before ``before``).

    Filters and paging run in SQL and only the page's devices and their lines are loaded, so the cost of a page
    does not grow with the fleet (issue 21).
    """
    rows = store.inventory_page(session, f, limit=limit, after=after, before=before)
    lines = store.lines_of(session, [d.id for d in rows])
    return [_device_out(session, d, presence, with_updates=False, lines=lines[d.id]) for d in rows]


def inventory_page(session: Session, presence: LastSeen, f: store.InventoryFilter, *, limit: int,
                   cursor: str | None = None) -> tuple[list[schemas.DeviceOut], str | None]:
    """One page of the inventory (device id order) and the cursor of the next page (None: this was the last).

    Raises:
        Unprocessable: a malformed cursor.
    """
    after = decode_cursor(cursor) if cursor is not None else None
    out = inventory_window(session, presence, f, limit=limit, after=after)
    return out, encode_cursor(out[-1].device_id) if len(out) == limit else None


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
    audit.record(session, actor, "device.update", device_id=device_id, **changes)
    session.flush()
    return _device_out(session, d, presence, with_updates=True)


__all__ = ["decode_cursor", "device_detail", "encode_cursor", "inventory_page", "inventory_window",
           "parse_tag_filter", "poll", "report", "update_device"]
