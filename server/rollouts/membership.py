"""Which devices a rollout's stages hold, cached per process for a few seconds.

A device's stage is a pure function of (rollout id, device id, stage
percents) and of whether the rollout's selector matches its tags
(``stages.stage_of``), but answering "how many devices does each stage hold"
means reading and hashing every device of the line: about 0.3 s for 10,000
devices on SQLite.  ``evaluate`` runs after every report, inside the
report's write transaction, so doing that work each time made a fleet's
reports queue behind each other (and behind them every request waiting for
SQLite's write lock, holding a pooled connection).

``MembershipCache`` keeps one ``Membership`` per rollout and rebuilds it
when the line's devices change (their count or highest primary key: an
enrolment) or after ``ttl_s`` (a tag edited by an operator is seen within
that time, as the poll cache's decisions are; so is a car's newly reported
platform, issue 20).  The states of the devices'
updates are never cached: ``service`` reads them on every evaluation.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from protocol.errors import MalformedMessage
from protocol.platform import Platform
from server.rollouts import stages as staging
from server.rollouts import store

DEFAULT_TTL_S = 5.0
_MAX_ENTRIES = 256  # rollouts evaluated by one process; beyond this the cache starts over


@dataclass(frozen=True)
class Membership:
    """Devices of the line the rollout reaches: primary key -> stage index, and the count per stage; and (issue
    20) the platform digest of those that reported one, with each distinct platform."""

    stage_of_pk: dict[int, int]
    assigned: tuple[int, ...]
    platform_of_pk: dict[int, str] = field(default_factory=dict)
    platforms: dict[str, Platform] = field(default_factory=dict)


def build(rows: list[tuple[int, str, dict[str, Any] | None, str | None]], rollout_id: int, selector: dict[str, str],
          percents: tuple[float, ...]) -> Membership:
    """The membership from (pk, device id, tags, platform digest) rows (pure); tags may be None when the selector
    is empty.  ``platforms`` is left for the caller to fill."""
    stage_of_pk: dict[int, int] = {}
    platform_of_pk: dict[int, str] = {}
    assigned = [0] * len(percents)
    for pk, device_id, tags, digest in rows:
        if selector and not staging.selector_matches(selector, tags or {}):
            continue
        stage = staging.stage_of(rollout_id, device_id, percents)
        if stage is not None:
            stage_of_pk[pk] = stage
            assigned[stage] += 1
            if digest:
                platform_of_pk[pk] = digest
    return Membership(stage_of_pk, tuple(assigned), platform_of_pk)


def parse_platforms(stored: dict[str, dict[str, Any]]) -> dict[str, Platform]:
    """digest -> Platform of the stored platforms (an unreadable one is left out: treated as unknown)."""
    out: dict[str, Platform] = {}
    for digest, d in stored.items():
        try:
            out[digest] = Platform.from_dict(d)
        except MalformedMessage:
            continue
    return out


class MembershipCache:
    """One per app (``AppContext.membership``), thread-safe; a stale entry is rebuilt by the caller that finds it."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[tuple[Any, ...], tuple[tuple[int, int], float, Membership]] = {}
        self._lock = threading.Lock()
        self.builds = 0

    def get(self, session: Session, rollout_id: int, line: str, selector: dict[str, str],
            percents: tuple[float, ...]) -> Membership:
        key = (rollout_id, line, tuple(sorted(selector.items())), percents)
        fingerprint = store.line_fingerprint(session, line)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[0] == fingerprint and now - hit[1] < self.ttl_s:
            return hit[2]
        membership = build(store.line_members(session, line, with_tags=bool(selector)), rollout_id, selector,
                           percents)
        membership.platforms.update(parse_platforms(store.platforms(session, set(membership.platform_of_pk.values()))))
        with self._lock:
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (fingerprint, now, membership)
            self.builds += 1
        return membership

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
