"""The delivery worker: claim the due head of each subscription's outbox, POST it, record the outcome.

Runs in every server process (``app.py`` schedules ``deliver_due`` every ``OTA_WEBHOOK_TICK_S``); the
processes share the work through the database, in three short transactions per round and none held
across the HTTP request:

1. **claim**: on PostgreSQL the active subscriptions are locked ``FOR UPDATE SKIP LOCKED`` (two processes
   never claim for the same subscription at once, and neither waits for the other); on SQLite the
   transaction's ``BEGIN IMMEDIATE`` is the single-writer lock that serializes claims.  For each
   subscription the oldest *pending* delivery is its head; if it is due it is leased (attempts + 1,
   ``next_attempt_at`` pushed past the request's timeout) so that nobody else sends it meanwhile.  A head
   that is not due yet blocks the deliveries behind it: a receiver gets its events in order.
2. **send**: POST (up to ``MAX_PARALLEL_SENDS`` receivers at once, so receivers that hang until the
   timeout cost the others one timeout per round, not one each) with ``X-OTA-Event``, ``X-OTA-Delivery`` and ``X-OTA-Signature``; redirects are not
   followed and the answer's body is never read.
3. **record**: 2xx -> delivered; otherwise the next attempt after an exponential backoff with jitter, or
   failed after ``OTA_WEBHOOK_MAX_ATTEMPTS``.

A process that dies between 1 and 3 leaves a lease that expires: the delivery is sent again (at least
once; receivers dedupe on ``X-OTA-Delivery``).
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from server.config import Settings
from server.db import Database, as_utc, utcnow
from server.orm import WebhookDelivery, WebhookSubscription
from server.webhooks import signing

log = logging.getLogger("ota.webhooks")

MAX_ERROR_CHARS = 500
MAX_PARALLEL_SENDS = 8  # one slow or unreachable receiver must not hold up the others' deliveries
LEASE_MARGIN_S = 30.0  # a claimed delivery is not retried until its request's timeout plus this has passed


@dataclass(frozen=True)
class Claim:
    """One delivery leased for sending: everything the POST needs, read inside the claim's transaction."""

    delivery_id: int
    attempt: int
    url: str
    secret: str
    event: str
    body: bytes


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    attempt: int
    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def backoff_s(attempt: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempt + 1``: base * 2^(attempt-1), capped, times a jitter in [0.5, 1)
    (so that many deliveries failed by one outage do not all come back at the same instant)."""
    ceiling = min(settings.webhook_backoff_max_s, settings.webhook_backoff_s * 2 ** min(attempt - 1, 30))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


def claim(session: Session, settings: Settings, now: datetime) -> list[Claim]:
    """Lease the due head delivery of every active subscription (see the module docstring)."""
    subs = select(WebhookSubscription).where(WebhookSubscription.active.is_(True)).order_by(WebhookSubscription.id)
    if session.get_bind().dialect.name == "postgresql":
        subs = subs.with_for_update(skip_locked=True)
    lease = timedelta(seconds=settings.webhook_timeout_s + LEASE_MARGIN_S)
    claims = []
    for sub in session.scalars(subs).all():
        head = session.scalars(select(WebhookDelivery)
                               .where(WebhookDelivery.subscription_id == sub.id, WebhookDelivery.state == "pending")
                               .order_by(WebhookDelivery.id).limit(1)).first()
        if head is None or as_utc(head.next_attempt_at) > now:
            continue
        head.attempts += 1
        head.next_attempt_at = now + lease
        claims.append(Claim(head.id, head.attempts, sub.url, sub.secret, head.event,
                            signing.body(head.id, head.event, as_utc(head.created_at), head.payload)))
    session.flush()
    return claims


def send(client: httpx.Client, c: Claim) -> Outcome:
    """POST one claimed delivery; never raises (a failure is an outcome to record)."""
    headers = {"Content-Type": "application/json", "User-Agent": "ota-registry-webhooks/1",
               "X-OTA-Event": c.event, "X-OTA-Delivery": str(c.delivery_id),
               "X-OTA-Signature": signing.signature(c.secret, c.body)}
    try:
        with client.stream("POST", c.url, content=c.body, headers=headers) as r:  # the body is never read
            status = r.status_code
    except httpx.HTTPError as e:
        return Outcome(c.delivery_id, c.attempt, None, f"{type(e).__name__}: {e}"[:MAX_ERROR_CHARS])
    error = None if 200 <= status < 300 else f"receiver answered HTTP {status}"
    return Outcome(c.delivery_id, c.attempt, status, error)


def record(session: Session, settings: Settings, outcomes: list[Outcome], now: datetime) -> None:
    """Write each outcome to its delivery, unless something else (a removal) has settled it meanwhile."""
    for o in outcomes:
        d = session.get(WebhookDelivery, o.delivery_id)
        if d is None or d.state != "pending" or d.attempts != o.attempt:
            continue
        d.last_status_code, d.last_error = o.status_code, o.error
        if o.ok:
            d.state, d.delivered_at = "delivered", now
        elif d.attempts >= settings.webhook_max_attempts:
            d.state = "failed"
            log.warning("webhook delivery %d (%s) failed after %d attempts: %s", d.id, d.event, d.attempts, o.error)
        else:
            d.next_attempt_at = now + timedelta(seconds=backoff_s(d.attempts, settings))
    session.flush()


def anything_due(db: Database, now: datetime) -> bool:
    """Whether some pending delivery is due (a read on the (state, next_attempt_at) index, no lock)."""
    with db.read_scope() as session:
        return bool(session.scalar(select(exists().where(WebhookDelivery.state == "pending",
                                                         WebhookDelivery.next_attempt_at <= now))))


def deliver_due(db: Database, settings: Settings, client: httpx.Client, budget_s: float = 2.0) -> int:
    """Rounds of claim -> send -> record until nothing is due or ``budget_s`` has passed; returns deliveries sent.

    Each round sends at most one delivery per subscription (its head), so a backlog drains in order.
    """
    sent = 0
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        if not anything_due(db, utcnow()):  # no write lock (SQLite) or row locks (PostgreSQL) on an idle tick
            break
        with db.session_scope() as session:
            claims = claim(session, settings, utcnow())
        if not claims:
            break
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_SENDS, len(claims)),
                                thread_name_prefix="ota-webhook") as pool:
            outcomes = list(pool.map(lambda c: send(client, c), claims))
        with db.session_scope() as session:
            record(session, settings, outcomes, utcnow())
        sent += len(outcomes)
        if not any(o.ok for o in outcomes):
            break  # every receiver failed: their heads now wait for their backoff
    return sent


def http_client(settings: Settings) -> httpx.Client:
    """The worker's client: the settings' timeout, no redirects (a receiver cannot bounce the signed body
    elsewhere), no proxies from the environment (library code reads no environment)."""
    return httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False)


__all__ = ["Claim", "Outcome", "anything_due", "backoff_s", "claim", "deliver_due", "http_client", "record", "send"]
