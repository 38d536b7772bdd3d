"""Webhook subscriptions and their delivery log (decisions; the HTTP is in ``routes``)."""

from __future__ import annotations

import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server import audit
from server.db import utcnow
from server.errors import Conflict, NotFound
from server.orm import WebhookDelivery, WebhookSubscription
from server.webhooks import schemas


def _out(s: WebhookSubscription, secret: str | None = None) -> schemas.WebhookOut:
    return schemas.WebhookOut(id=s.id, url=s.url, events=list(s.events), active=s.active, created_by=s.created_by,
                              created_at=s.created_at, secret=secret)


def add(session: Session, body: schemas.WebhookIn, actor: str, max_active: int) -> schemas.WebhookOut:
    """Subscribe ``body.url`` to ``body.events``; a missing secret is generated and returned this once.

    Raises:
        Conflict: already ``max_active`` active subscriptions (each costs a query per event and a worker slot).
    """
    active = session.scalar(select(func.count()).select_from(WebhookSubscription)
                            .where(WebhookSubscription.active.is_(True))) or 0
    if active >= max_active:
        raise Conflict(f"already {active} active webhooks (OTA_WEBHOOK_MAX_SUBSCRIPTIONS={max_active}); remove one "
                       "with `ota webhook rm ID` first; nothing was stored")
    made = None if body.secret is not None else secrets.token_urlsafe(32)
    s = WebhookSubscription(url=body.url, secret=body.secret or made, events=list(body.events), created_by=actor,
                            created_at=utcnow(), active=True)
    session.add(s)
    session.flush()
    audit.record(session, actor, "webhook.add", webhook_id=s.id, url=s.url, events=list(s.events))
    return _out(s, made)


def _get(session: Session, webhook_id: int) -> WebhookSubscription:
    s = session.get(WebhookSubscription, webhook_id)
    if s is None:
        raise NotFound(f"webhook {webhook_id} does not exist; `ota webhook list` shows them")
    return s


def list_webhooks(session: Session, include_removed: bool = False) -> list[schemas.WebhookOut]:
    q = select(WebhookSubscription).order_by(WebhookSubscription.id)
    if not include_removed:
        q = q.where(WebhookSubscription.active.is_(True))
    return [_out(s) for s in session.scalars(q)]


def remove(session: Session, webhook_id: int, actor: str) -> schemas.WebhookOut:
    """Deactivate a subscription: no new events, pending ones are marked failed; the log stays readable.

    Raises:
        NotFound: unknown id (or already removed).
    """
    s = _get(session, webhook_id)
    if not s.active:
        raise NotFound(f"webhook {webhook_id} was already removed")
    s.active = False
    for d in session.scalars(select(WebhookDelivery).where(WebhookDelivery.subscription_id == s.id,
                                                           WebhookDelivery.state == "pending")):
        d.state, d.last_error = "failed", "subscription removed"
    audit.record(session, actor, "webhook.remove", webhook_id=s.id, url=s.url)
    session.flush()
    return _out(s)


def deliveries(session: Session, webhook_id: int, limit: int) -> list[schemas.DeliveryOut]:
    """The newest ``limit`` deliveries of a subscription (removed ones included), newest first.

    Raises:
        NotFound: unknown id.
    """
    _get(session, webhook_id)
    rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.subscription_id == webhook_id)
                           .order_by(WebhookDelivery.id.desc()).limit(limit))
    return [schemas.DeliveryOut(id=d.id, event=d.event, state=d.state, attempts=d.attempts, created_at=d.created_at,
                                next_attempt_at=d.next_attempt_at if d.state == "pending" else None,
                                last_status_code=d.last_status_code, last_error=d.last_error,
                                delivered_at=d.delivered_at) for d in rows]
