"""Per-process caches that let a steady-state poll answer with no SQL at all.

Two caches, each entry valid for ``OTA_POLL_CACHE_S`` seconds (default 5):

- device token digest -> ``DeviceView`` (the device's id, tags, poll interval,
  what it last said it runs, and its recent offers with their signed
  envelopes), so authentication and the "same offer again" answer need no
  query;
- line name -> ``rollouts.lineview.LineView`` (stable version and offering
  rollouts with their stages), so the desired-version decision needs none.

``answer`` is the pure fast path: it repeats ``service.poll``'s decision on
the cached views and returns the response bytes, or None whenever the poll
would have to write something (a new or re-signed offer, a changed running
version, drift) or needs the database for a delta; the caller then runs the
ordinary transactional ``service.poll``.

Freshness: every session of this process reports what it flushed; when a
transaction that changed devices, offers, rollouts, lines, versions or
packages commits, the affected entries are dropped at once (``attach``).  A
background ``refresh`` every ``OTA_POLL_CACHE_S / 2`` seconds re-reads, in a
few batched selects, a fingerprint of every cached device (its row and a
count/max-id/max-updated-at stamp of its offers) and every cached line; an
entry that still matches is renewed, one that changed is dropped.  Changes
made by *other* processes (other uvicorn workers) are therefore seen within
``OTA_POLL_CACHE_S`` seconds: a new rollout, an advance, a revoked or rotated
token or a device PATCH is stale for at most that long on the other workers
(docs/PROTOCOL.md "Poll").  Without a refresh an entry simply expires after
``OTA_POLL_CACHE_S``.  A loader that raced a commit does not store what it
read (epoch check), and the refresh renews only the very entry it checked.
Only entries used since their last check are renewed: a device that polls
less often than the refresh runs (a fleet at 60 s polls) is cheaper to reload
on its next poll (three indexed selects) than to re-check every few seconds,
and memory stays proportional to the devices polling within the interval.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from server.config import Settings
from server.db import Database, as_utc
from server.devices import schemas
from server.orm import Device, DeviceReport, DeviceUpdate, Line, Package, Rollout, RolloutStage, Version
from server.rollouts.lineview import LineView, choose_package, desired_in, load_line

_LINE_TYPES = (Line, Rollout, RolloutStage, Version, Package)


@dataclass(frozen=True)
class OfferView:
    """One stored offer (a ``DeviceUpdate`` row) and its envelope, already JSON-encoded."""

    state: str
    codec: str
    delta_sha256: str | None
    base_package_sha256: str | None
    expires_at: datetime
    envelope_json: bytes


@dataclass(frozen=True)
class DeviceView:
    pk: int
    device_id: str
    tags: dict[str, Any]
    poll_interval_s: int | None
    line: str | None
    running_version: int | None
    running_model_sha256: str | None
    reported_version: int | None
    drift: bool
    drift_detail: str | None
    offers: dict[tuple[int, int], OfferView]  # (rollout id or 0, version id) -> offer
    fingerprint: tuple[Any, ...]  # what ``refresh`` compares with the database


_DEVICE_COLUMNS = (Device.id, Device.token_sha256, Device.device_id, Device.tags, Device.poll_interval_s,
                   Device.line, Device.running_version, Device.running_model_sha256, Device.reported_version,
                   Device.drift, Device.drift_detail)
_OFFER_COLUMNS = (DeviceUpdate.rollout_key, DeviceUpdate.version_id, DeviceUpdate.state, DeviceUpdate.codec,
                  DeviceUpdate.delta_sha256, DeviceUpdate.base_package_sha256, DeviceUpdate.expires_at,
                  DeviceUpdate.envelope)
# Every change to an offer row (new offer, re-sign, report) adds a row or stamps updated_at.
_OFFER_STAMP = (DeviceUpdate.device_pk, func.count(), func.max(DeviceUpdate.id), func.max(DeviceUpdate.updated_at))
RECENT_OFFERS = 20  # older offers are not cached: a poll that needs one takes the slow path
REFRESH_CHUNK = 500  # device pks per batched fingerprint select


def _fingerprint(device_row: Sequence[Any], stamp: Sequence[Any] | None) -> tuple[Any, ...]:
    return (*device_row, tuple(stamp[1:]) if stamp is not None else (0, None, None))


def load_device(session: Session, token_sha256: str) -> DeviceView | None:
    """The device holding this token digest, with its recent offers; None if no device has it.

    Three indexed Core selects of just the columns the fast path needs (this runs on a cache miss).
    """
    conn = session.connection()
    row = conn.execute(select(*_DEVICE_COLUMNS).where(Device.token_sha256 == token_sha256)).first()
    if row is None:
        return None
    pk, _digest, device_id, tags, interval, line, running, running_sha, reported, drift, detail = row
    stamp = conn.execute(select(*_OFFER_STAMP).where(DeviceUpdate.device_pk == pk)
                         .group_by(DeviceUpdate.device_pk)).first()
    q = (select(*_OFFER_COLUMNS).where(DeviceUpdate.device_pk == pk)
         .order_by(DeviceUpdate.id.desc()).limit(RECENT_OFFERS))
    offers: dict[tuple[int, int], OfferView] = {}
    for key, version_id, state, codec, delta, base, expires, envelope in conn.execute(q):
        offers.setdefault((key, version_id), OfferView(state, codec, delta, base, as_utc(expires),
                                                       json.dumps(envelope).encode()))
    return DeviceView(pk, device_id, dict(tags or {}), interval, line, running, running_sha, reported, bool(drift),
                      detail, offers, _fingerprint(row, stamp))


def fingerprints(session: Session, pks: Sequence[int]) -> dict[int, tuple[Any, ...]]:
    """device pk -> the fingerprint ``load_device`` recorded, as the database has it now (batched)."""
    conn = session.connection()
    out: dict[int, tuple[Any, ...]] = {}
    for i in range(0, len(pks), REFRESH_CHUNK):
        chunk = pks[i:i + REFRESH_CHUNK]
        stamps = {r[0]: r for r in conn.execute(select(*_OFFER_STAMP).where(DeviceUpdate.device_pk.in_(chunk))
                                                .group_by(DeviceUpdate.device_pk))}
        for row in conn.execute(select(*_DEVICE_COLUMNS).where(Device.id.in_(chunk))):
            out[row[0]] = _fingerprint(row, stamps.get(row[0]))
    return out


def encode_answer(poll_interval_s: int, envelope_json: bytes | None) -> bytes:
    """The poll response body (docs/PROTOCOL.md "Poll")."""
    return b'{"poll_interval_s":%d,"offer":%s}' % (poll_interval_s, envelope_json or b"null")


def _unchanged_running(d: DeviceView, line: str, body: schemas.PollIn) -> bool:
    """True when ``service._note_running`` would write nothing for this poll."""
    drift = d.reported_version is not None and body.current_version != d.reported_version
    detail = (f"reported installed version {d.reported_version} but polls with version {body.current_version}"
              if drift else None)
    return (d.line == line and d.running_version == body.current_version
            and d.running_model_sha256 == body.current_model_sha256 and d.drift == drift and d.drift_detail == detail)


def answer(d: DeviceView, line: LineView, body: schemas.PollIn, now: datetime, settings: Settings) -> bytes | None:
    """``service.poll``'s answer from the cached views, or None when the poll needs the database (pure)."""
    interval = d.poll_interval_s or settings.poll_interval_s
    if not _unchanged_running(d, line.name, body):
        return None
    target = desired_in(line, d.device_id, d.tags)
    pkg = choose_package(target.version, target.codec, settings.codec_list()) if target else None
    if target is None or pkg is None:
        return encode_answer(interval, None)
    runs_target = body.current_version == target.version.number and (
        body.current_model_sha256 in (None, pkg.model_sha256))
    downgrade = target.version.number < body.current_version and not target.rollback
    if runs_target or downgrade:
        return encode_answer(interval, None)
    offer = d.offers.get((target.rollout.id if target.rollout else 0, target.version.id))
    if offer is None:
        return None  # a first offer: signed and stored by the slow path
    if offer.state == "rolled_back":
        return encode_answer(interval, None)
    base = body.current_package_sha256
    if not base or base == pkg.sha256:
        same_delta = offer.delta_sha256 is None
    else:  # only the stored base is known without the database
        same_delta = offer.delta_sha256 is not None and offer.base_package_sha256 == base
    fresh = offer.expires_at - now > timedelta(seconds=settings.offer_ttl_s / 2)
    if same_delta and offer.codec == pkg.codec and fresh:
        return encode_answer(interval, offer.envelope_json)
    return None


class _Expiring:
    """key -> [value, verified at, last hit]: an entry answers until ``verified at + ttl``.

    ``epoch`` is bumped by every drop, so a loader that read before a commit does not store its result.
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float]) -> None:
        self.ttl_s, self.clock = ttl_s, clock
        self.items: dict[Any, list[Any]] = {}
        self.epoch = 0
        self._swept = clock()

    def get(self, key: Any) -> Any | None:
        hit = self.items.get(key)
        if hit is None:
            return None
        now = self.clock()
        if now - hit[1] >= self.ttl_s:
            return None
        hit[2] = now
        return hit[0]

    def put(self, key: Any, value: Any, epoch: int, verified_at: float) -> bool:
        """Store unless something was dropped since ``epoch`` was read (the value may predate that commit)."""
        if epoch != self.epoch or self.ttl_s <= 0:
            return False
        now = self.clock()
        if now - self._swept > self.ttl_s:  # drop expired entries now and then
            self.items = {k: v for k, v in self.items.items() if now - v[1] < self.ttl_s}
            self._swept = now
        self.items[key] = [value, verified_at, now]
        return True

    def renew(self, key: Any, value: Any, verified_at: float) -> None:
        """Extend the entry if it is still this very value (not dropped or replaced meanwhile)."""
        hit = self.items.get(key)
        if hit is not None and hit[0] is value:
            hit[1] = max(hit[1], verified_at)

    def drop(self, keys: Iterable[Any] | None = None) -> None:
        """Drop these keys (all when None) and bump the epoch so in-flight loads are not stored."""
        self.epoch += 1
        if keys is None:
            self.items.clear()
        else:
            for k in keys:
                self.items.pop(k, None)

    def __len__(self) -> int:
        return len(self.items)


class PollCache:
    """The two per-process caches, their invalidation and their refresh (thread-safe)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._devices = _Expiring(ttl_s, clock)  # token digest -> DeviceView
        self._device_digest: dict[int, str] = {}  # device pk -> token digest, to drop by pk
        self._lines = _Expiring(ttl_s, clock)  # line name -> LineView

    def device(self, token_sha256: str) -> DeviceView | None:
        with self._lock:
            return self._devices.get(token_sha256)

    def line(self, name: str) -> LineView | None:
        with self._lock:
            return self._lines.get(name)

    def sizes(self) -> tuple[int, int]:
        with self._lock:
            return len(self._devices), len(self._lines)

    def epochs(self) -> tuple[int, int, float]:
        """Read before loading from the database; pass to ``store``."""
        with self._lock:
            return self._devices.epoch, self._lines.epoch, self._clock()

    def store(self, epochs: tuple[int, int, float], token_sha256: str, device: DeviceView | None,
              line: LineView | None) -> None:
        with self._lock:
            if device is not None and self._devices.put(token_sha256, device, epochs[0], epochs[2]):
                old = self._device_digest.get(device.pk)
                if old is not None and old != token_sha256:
                    self._devices.drop([old])  # a rotated token: the old digest must not answer
                self._device_digest[device.pk] = token_sha256
            if line is not None:
                self._lines.put(line.name, line, epochs[1], epochs[2])

    def invalidate(self, device_pks: Iterable[int] = (), lines: bool = False) -> None:
        """Drop the entries of these devices (and every line when ``lines``)."""
        with self._lock:
            pks = list(device_pks)
            if pks:
                self._devices.drop([self._device_digest.pop(pk) for pk in pks if pk in self._device_digest])
            if lines:
                self._lines.drop()

    def refresh(self, db: Database) -> int:
        """Re-check every cached entry against the database in a few batched reads; returns how many were dropped.

        Runs in a worker thread every ``ttl_s / 2`` (the app's lifespan).  Raises what the database raises.
        """
        if self.ttl_s <= 0:
            return 0
        with self._lock:
            started = self._clock()
            # Only entries hit since they were last verified: re-checking one costs more than reloading it
            # on a miss unless its device polls more often than the refresh runs.
            devices = {k: v[0] for k, v in self._devices.items.items() if v[2] > v[1]}
            line_epoch, names = self._lines.epoch, list(self._lines.items)
        with db.read_scope() as session:
            now = fingerprints(session, sorted({d.pk for d in devices.values()}))
            lines = {name: load_line(session, name) for name in names}
        stale = [d.pk for d in devices.values() if now.get(d.pk) != d.fingerprint]
        with self._lock:
            for digest, view in devices.items():
                if now.get(view.pk) == view.fingerprint:
                    self._devices.renew(digest, view, started)
            if stale:
                self._devices.drop([self._device_digest.pop(pk) for pk in stale if pk in self._device_digest])
            for name, line in lines.items():
                if line is None:
                    self._lines.drop([name])
                else:
                    self._lines.put(name, line, line_epoch, started)  # refused if a commit raced the read
        return len(stale)

    def attach(self, sessions: sessionmaker[Session]) -> PollCache:
        """Invalidate on commit of any session from ``sessions`` that changed what the caches hold."""

        def after_flush(session: Session, _ctx: object) -> None:
            pending = session.info.setdefault("pollcache", {"devices": set(), "lines": False})
            for obj in chain(session.new, session.dirty, session.deleted):
                if isinstance(obj, Device):
                    pending["devices"].add(obj.id)
                elif isinstance(obj, (DeviceUpdate, DeviceReport)):
                    pending["devices"].add(obj.device_pk)
                elif isinstance(obj, _LINE_TYPES):
                    pending["lines"] = True

        def after_commit(session: Session) -> None:
            pending = session.info.pop("pollcache", None)
            if pending:
                self.invalidate(pending["devices"], pending["lines"])

        # A rolled-back flush leaves its note in session.info: at worst a later commit drops a few entries more.
        event.listen(sessions, "after_flush", after_flush)
        event.listen(sessions, "after_commit", after_commit)
        return self
