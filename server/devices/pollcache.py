"""Per-process caches that let a steady-state poll answer with no SQL at all.

Two caches:

- device token digest -> ``DeviceView`` (the device's id, tags, poll interval,
  what it last said it runs, and its recent offers with their signed
  envelopes), so authentication and the "same offer again" answer need no
  query;
- line name -> ``rollouts.lineview.LineView`` (stable version and offering
  rollouts with their stages), so the desired-version decision needs none.

``answer`` is the pure fast path: it asks ``decision.decide`` on the cached
views and returns the response, or None whenever the decision asks for a
write (a new or re-signed offer, a changed running version, drift) or needs
the database for a delta; the caller then runs the transactional
``service.poll``, which decides again on the same views read in its
transaction.

Freshness is by invalidation, not by age.  Every session of this process
reports what it flushed; when a transaction that changed devices, offers,
rollouts, lines, versions or packages commits, the affected entries are
dropped here at once and the change is published on the change feed
(``changefeed.py``: PostgreSQL NOTIFY, or a changes file beside the SQLite
database), from which every other process (other uvicorn workers, other
replicas) drops the same entries within milliseconds.  While the feed is
listening, an entry read after it started listening stays valid until a
change drops it or ``OTA_POLL_CACHE_MAX_S`` passes (a safety net, default
600 s): a fleet polling every 60 s is answered from memory.  While the feed
is not listening (connection lost, file emptied) entries answer only for
``OTA_POLL_CACHE_S`` seconds after they were read (default 5), as a plain
time-to-live cache; a background ``refresh`` re-reads cached lines every
``OTA_POLL_CACHE_S / 2``.  A loader that raced a commit does not store what it
read (epoch check: every drop bumps it).  For devices the check is per device:
a load is refused only when that device (or everything) was dropped after the
load began, so that a fleet's cold start is not undone by other cars' offers
being written meanwhile (at 10,000 cars, 1,800 devices were still uncached
after a 10 s warm-up when any drop refused every load in flight).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any

from sqlalchemy import bindparam, event, select
from sqlalchemy.orm import Session, sessionmaker

from protocol.errors import MalformedMessage
from protocol.platform import Platform
from server.config import Settings
from server.db import Database, as_utc
from server.devices import schemas
from server.devices.changefeed import ChangeFeed
from server.devices.decision import DeviceView, LineRun, NewOffer, OfferView, PollPolicy, PollView, Resend, decide
from server.orm import Device, DeviceLine, DeviceReport, DeviceUpdate, Line, Package, Rollout, RolloutStage, Version
from server.rollouts.lineview import LineView, load_line

_LINE_TYPES = (Line, Rollout, RolloutStage, Version, Package)
Trust = tuple[float, float | None] | None  # ChangeFeed.trust: (heard since, until or None while listening)


_DEVICE_COLUMNS = (Device.id, Device.device_id, Device.tags, Device.poll_interval_s, Device.platform,
                   Device.platform_sha256)
_LINE_COLUMNS = (DeviceLine.line, DeviceLine.running_version, DeviceLine.running_model_sha256,
                 DeviceLine.reported_version, DeviceLine.drift, DeviceLine.drift_detail)
_OFFER_COLUMNS = (DeviceUpdate.rollout_key, DeviceUpdate.version_id, DeviceUpdate.state, DeviceUpdate.codec,
                  DeviceUpdate.delta_sha256, DeviceUpdate.base_package_sha256, DeviceUpdate.expires_at,
                  DeviceUpdate.envelope)
RECENT_OFFERS = 20  # older offers are not cached: a poll that needs one takes the slow path
# Built once: constructing a select costs SQLAlchemy ~0.2 ms of Python, the indexed lookup in SQLite ~25 us.
_DEVICE_BY_TOKEN = select(*_DEVICE_COLUMNS).where(Device.token_sha256 == bindparam("digest"))
_DEVICE_LINES = select(*_LINE_COLUMNS).where(DeviceLine.device_pk == bindparam("pk"))
_RECENT_OFFERS = (select(*_OFFER_COLUMNS).where(DeviceUpdate.device_pk == bindparam("pk"))
                  .order_by(DeviceUpdate.id.desc()).limit(RECENT_OFFERS))


_ALL_OFFERS = (select(*_OFFER_COLUMNS).where(DeviceUpdate.device_pk == bindparam("pk"))
               .order_by(DeviceUpdate.id.desc()))


def load_device(session: Session, token_sha256: str, every_offer: bool = False) -> DeviceView | None:
    """The device holding this token digest, with what it runs on each line and its recent offers
    (``every_offer``: all); None if none has it.

    Three indexed Core selects of just the columns the decision needs (the cache loads this on a miss: after a
    restart, every car's first poll; the database path loads it with every offer inside its transaction).
    """
    conn = session.connection()
    row = conn.execute(_DEVICE_BY_TOKEN, {"digest": token_sha256}).first()
    if row is None:
        return None
    pk, device_id, tags, interval, platform, digest = row
    lines = {name: LineRun(running, running_sha, reported, bool(drift), detail)
             for name, running, running_sha, reported, drift, detail in conn.execute(_DEVICE_LINES, {"pk": pk})}
    offers: dict[tuple[int, int], OfferView] = {}
    for key, version_id, state, codec, delta, base, expires, envelope in conn.execute(
            _ALL_OFFERS if every_offer else _RECENT_OFFERS, {"pk": pk}):
        offers.setdefault((key, version_id), OfferView(state, codec, delta, base, as_utc(expires),
                                                       json.dumps(envelope).encode(), signed_by(envelope),
                                                       signed_plan(envelope)))
    return DeviceView(pk, device_id, dict(tags or {}), interval, lines, offers, stored_platform(platform), digest)


def stored_platform(d: dict[str, Any] | None) -> Platform | None:
    """A device's stored platform (None: never reported; unreadable, which the parsing at the door prevents)."""
    try:
        return Platform.from_dict(d) if d else None
    except MalformedMessage:
        return None


def poll_view(body: schemas.PollIn) -> PollView:
    """What the car said in its poll, as the decision reads it (a platform sent in full: its own digest)."""
    platform = Platform.from_dict(body.platform) if body.platform is not None else None
    return PollView(body.line, body.current_version, body.current_model_sha256, body.current_package_sha256,
                    platform_sha256=platform.digest() if platform is not None else body.platform_sha256,
                    platform=platform)


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """A poll's response body, and whether it carries an offer (what the poll metric is labelled by)."""

    content: bytes
    offered: bool


def encode_answer(poll_interval_s: int, envelope_json: bytes | None, status_json: bytes) -> PollAnswer:
    """The poll response body (docs/PROTOCOL.md "Poll"): an offer, or the device's signed status and no offer."""
    if envelope_json is not None:
        return PollAnswer(b'{"poll_interval_s":%d,"offer":%s}' % (poll_interval_s, envelope_json), True)
    return PollAnswer(b'{"poll_interval_s":%d,"status":%s,"offer":null}' % (poll_interval_s, status_json), False)


def signed_by(envelope: dict[str, Any] | None) -> str | None:
    """The keyid of an envelope's first signature (the online key that signed a stored offer)."""
    try:
        return str(envelope["signatures"][0]["keyid"]) if envelope else None
    except (KeyError, IndexError, TypeError):
        return None


def signed_plan(envelope: dict[str, Any] | None) -> dict[str, Any] | None:
    """The quality plan a stored offer was signed with (None: none, or an offer from before issue 18)."""
    try:
        plan = envelope["signed"].get("quality") if envelope else None
    except (KeyError, AttributeError, TypeError):
        return None
    return plan if isinstance(plan, dict) else None


def policy(settings: Settings, key_id: str) -> PollPolicy:
    """The decision's view of the settings (and of the online key); ``PollCache.policy`` keeps the current one."""
    return PollPolicy(settings.poll_interval_s, tuple(settings.codec_list()), settings.offer_ttl_s, key_id)


def answer(d: DeviceView, line: LineView, body: schemas.PollIn, now: datetime, rules: PollPolicy,
           status_json: bytes) -> PollAnswer | None:
    """The poll's answer from the cached views, or None when the decision asks for a write (pure).

    ``status_json`` is the device's signed status, sent with a "no offer" answer.
    """
    decision = decide(d, line, poll_view(body), now, rules)
    if decision.running is not None or isinstance(decision, NewOffer):
        return None  # the database path decides again in its transaction and writes
    if isinstance(decision, Resend):
        return encode_answer(decision.poll_interval_s, decision.envelope_json, status_json)
    return encode_answer(decision.poll_interval_s, None, status_json)


class _Expiring:
    """key -> [value, verified at]: an entry answers until ``verified at + ttl``, or, when it was verified
    while the change feed was listening (``ChangeFeed.trust``), until a change drops it or ``max_age_s`` passes.

    ``epoch`` is bumped by every drop, so a loader that read before a commit does not store its result.
    """

    def __init__(self, ttl_s: float, max_age_s: float, clock: Callable[[], float]) -> None:
        self.ttl_s, self.max_age_s, self.clock = ttl_s, max(max_age_s, ttl_s), clock
        self.items: dict[Any, list[Any]] = {}
        self.epoch = 0
        self._swept = clock()

    def _valid(self, verified_at: float, now: float, trust: Trust) -> bool:
        age = now - verified_at
        if age < self.ttl_s:
            return True
        if trust is None or verified_at < trust[0] or age >= self.max_age_s:
            return False
        return trust[1] is None or now - trust[1] < self.ttl_s  # after a gap: fresh as of its start

    def get(self, key: Any, trust: Trust) -> Any | None:
        hit = self.items.get(key)
        if hit is None or not self._valid(hit[1], self.clock(), trust):
            return None
        return hit[0]

    def put(self, key: Any, value: Any, epoch: int | None, verified_at: float, trust: Trust) -> bool:
        """Store unless something was dropped since ``epoch`` was read (the value may predate that commit);
        ``epoch`` None: the caller checked what was dropped."""
        if (epoch is not None and epoch != self.epoch) or self.ttl_s <= 0:
            return False
        now = self.clock()
        if now - self._swept > max(self.ttl_s, 60.0):  # drop entries that can no longer answer, now and then
            self.items = {k: v for k, v in self.items.items() if self._valid(v[1], now, trust)}
            self._swept = now
        self.items[key] = [value, verified_at]
        return True

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
    """The two per-process caches, their invalidation (here and from the change feed) and their refresh.

    Thread-safe: the event loop reads, loader threads store, the feed's thread drops.
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic, max_age_s: float = 600.0,
                 feed: ChangeFeed | None = None) -> None:
        self.ttl_s = ttl_s
        self.feed = feed
        self._clock = clock
        self._lock = threading.Lock()
        self._devices = _Expiring(ttl_s, max_age_s, clock)  # token digest -> DeviceView
        self._device_digest: dict[int, str] = {}  # device pk -> token digest, to drop by pk
        # device pk -> the devices' epoch its latest drop made; a load that began before it is not stored.
        self._device_drops: dict[int, int] = {}
        self._devices_cleared = 0  # the devices' epoch of the latest drop of every device
        self._lines = _Expiring(ttl_s, max_age_s, clock)  # line name -> LineView
        self._policy: PollPolicy | None = None

    def policy(self, settings: Settings, key_id: str) -> PollPolicy:
        """The decision's settings, made once per online key (a rotation makes a new one)."""
        rules = self._policy
        if rules is None or rules.key_id != key_id:
            rules = self._policy = policy(settings, key_id)
        return rules

    def _trust(self) -> Trust:
        return self.feed.trust if self.feed is not None else None

    def device(self, token_sha256: str) -> DeviceView | None:
        trusted = self._trust()
        with self._lock:
            return self._devices.get(token_sha256, trusted)

    def line(self, name: str) -> LineView | None:
        trusted = self._trust()
        with self._lock:
            return self._lines.get(name, trusted)

    def sizes(self) -> tuple[int, int]:
        with self._lock:
            return len(self._devices), len(self._lines)

    def epochs(self) -> tuple[int, int, float]:
        """Read before loading from the database; pass to ``store``."""
        with self._lock:
            return self._devices.epoch, self._lines.epoch, self._clock()

    def store(self, epochs: tuple[int, int, float], token_sha256: str, device: DeviceView | None,
              line: LineView | None) -> None:
        trusted = self._trust()
        with self._lock:
            if device is not None and self._may_store(device.pk, epochs[0]) and self._devices.put(
                    token_sha256, device, None, epochs[2], trusted):
                old = self._device_digest.get(device.pk)
                if old is not None and old != token_sha256:
                    self._devices.drop([old])  # a rotated token: the old digest must not answer
                self._device_digest[device.pk] = token_sha256
            if line is not None:
                self._lines.put(line.name, line, epochs[1], epochs[2], trusted)

    MAX_DROPS_KEPT = 100_000  # past this many devices dropped, the record starts over (refusing loads in flight)

    def _may_store(self, pk: int, epoch: int) -> bool:
        """Whether a device load that began at devices' epoch ``epoch`` is still as fresh as the database."""
        return epoch >= self._devices_cleared and self._device_drops.get(pk, -1) <= epoch

    def invalidate(self, device_pks: Iterable[int] = (), lines: bool = False) -> None:
        """Drop the entries of these devices (and every line when ``lines``)."""
        with self._lock:
            pks = list(device_pks)
            if pks:
                self._devices.drop([self._device_digest.pop(pk) for pk in pks if pk in self._device_digest])
                if len(self._device_drops) > self.MAX_DROPS_KEPT:
                    self._device_drops.clear()
                    self._devices_cleared = self._devices.epoch
                for pk in pks:  # also devices not cached here: a load of one may be in flight
                    self._device_drops[pk] = self._devices.epoch
            if lines:
                self._lines.drop()

    def clear(self) -> None:
        """Drop everything (the change feed had a gap: changes may have been missed)."""
        with self._lock:
            self._devices.drop()
            self._device_digest.clear()
            self._device_drops.clear()
            self._devices_cleared = self._devices.epoch
            self._lines.drop()

    def start(self) -> None:
        """Start listening to the other processes' changes (the app's lifespan)."""
        if self.feed is not None and self.ttl_s > 0:
            # After a gap nothing needs dropping: entries answer for ``ttl_s`` after the gap began, then need a
            # read after the feed listens again (so a poll during a brief database outage is still answered).
            self.feed.start(lambda pks, lines: self.invalidate(pks, lines), lambda: None)

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.stop()

    def refresh(self, db: Database) -> None:
        """Re-read every cached line (a few selects each): keeps them answering when the feed is not listening.

        Runs in a worker thread every ``ttl_s / 2`` (the app's lifespan).  Devices are not re-read: one not
        covered by the feed simply expires and is reloaded on its next poll.  While the feed listens it reads
        nothing: its entries stay valid until a change drops them (a refresh every few seconds cost the
        event loop up to 28 ms of GIL under bench/load.py).  Raises what the database raises.
        """
        if self.ttl_s <= 0 or (self.feed is not None and self.feed.trusted_since is not None):
            return
        with self._lock:
            started = self._clock()
            line_epoch, names = self._lines.epoch, list(self._lines.items)
        with db.read_scope() as session:
            lines = {name: load_line(session, name) for name in names}
        trusted = self._trust()
        with self._lock:
            for name, line in lines.items():
                if line is None:
                    self._lines.drop([name])
                else:  # refused if a commit raced the read
                    self._lines.put(name, line, line_epoch, started, trusted)

    def attach(self, sessions: sessionmaker[Session]) -> PollCache:
        """Invalidate on commit of any session from ``sessions`` that changed what the caches hold, here and
        (through the change feed) in every other process."""

        def after_flush(session: Session, _ctx: object) -> None:
            pending = session.info.setdefault("pollcache", {"devices": set(), "lines": False})
            for obj in chain(session.new, session.dirty, session.deleted):
                if isinstance(obj, Device):
                    pending["devices"].add(obj.id)
                elif isinstance(obj, (DeviceUpdate, DeviceReport, DeviceLine)):
                    pending["devices"].add(obj.device_pk)
                elif isinstance(obj, _LINE_TYPES):
                    pending["lines"] = True

        def before_commit(session: Session) -> None:
            if self.feed is None or session.in_nested_transaction():
                return  # a savepoint's release: the outer commit publishes
            session.flush()  # what the commit would flush, noted by after_flush before we publish
            pending = session.info.get("pollcache")
            if pending and (pending["devices"] or pending["lines"]):
                self.feed.publish_in_transaction(session, pending["devices"], pending["lines"])

        def after_commit(session: Session) -> None:
            pending = session.info.pop("pollcache", None)
            if pending and (pending["devices"] or pending["lines"]):
                self.invalidate(pending["devices"], pending["lines"])
                if self.feed is not None:
                    self.feed.publish_committed(pending["devices"], pending["lines"])

        # A rolled-back flush leaves its note in session.info: at worst a later commit drops a few entries more.
        event.listen(sessions, "after_flush", after_flush)
        event.listen(sessions, "before_commit", before_commit)
        event.listen(sessions, "after_commit", after_commit)
        return self
