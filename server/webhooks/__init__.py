"""Events out (issue 21 item 4): webhooks signed with HMAC-SHA256, delivered from an outbox.

How the pieces fit:

- ``emit(session, event, **data)`` is the one way a service raises an event (like ``server.audit.record``):
  it adds one ``webhook_deliveries`` row per active subscription that wants ``event`` to the caller's
  transaction.  So an event exists if and only if the change that caused it committed, and a restart
  between the commit and the delivery loses nothing: the row waits in the database.
- ``worker.deliver_due`` (run by the app's lifespan every ``OTA_WEBHOOK_TICK_S``, in every server process)
  claims the oldest pending delivery of each subscription, POSTs it, and records the outcome, retrying
  with exponential backoff and jitter up to ``OTA_WEBHOOK_MAX_ATTEMPTS``.  Only the oldest pending delivery
  of a subscription is ever tried, so a receiver sees its events in order.
- ``service`` / ``routes``: ``POST/GET/DELETE /api/v1/webhooks`` and ``GET /api/v1/webhooks/{id}/deliveries``
  (admin).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db import utcnow
from server.orm import WebhookDelivery, WebhookSubscription

#: Every event a subscription may ask for (docs/PROTOCOL.md "Webhooks" describes each one's data).
EVENTS = (
    "rollout.started",  # a rollout was created (not a rollback)
    "rollout.advanced",  # a rollout moved to its next stage (operator or gate)
    "rollout.paused",
    "rollout.resumed",
    "rollout.halted",  # the error threshold or a quality gate stopped it; data carries the reason
    "rollout.completed",  # its version became the line's stable version
    "rollout.aborted",
    "rollout.rolled_back",  # a rollback rollout was created (``ota rollout rollback``)
    "version.published",
    "device.drift",  # a car runs something other than what it last reported installing
)

#: The rollout machine's events (server/rollouts/machine.py) as webhook events.
ROLLOUT_EVENTS = {"advance": "rollout.advanced", "pause": "rollout.paused", "resume": "rollout.resumed",
                  "halt": "rollout.halted", "complete": "rollout.completed", "abort": "rollout.aborted"}


def emit(session: Session, event: str, **data: Any) -> int:
    """Queue ``event`` for every active subscription that wants it, in ``session``'s transaction.

    ``data`` must be JSON-serializable; it becomes the delivered body's ``data``.  Returns how many
    deliveries were queued (0 when nobody subscribed: nothing is stored).

    Raises:
        ValueError: ``event`` is not one of :data:`EVENTS` (a programming error, not the caller's input).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    subscriptions = session.execute(
        select(WebhookSubscription.id, WebhookSubscription.events).where(WebhookSubscription.active.is_(True))
    ).all()
    now = utcnow()
    queued = 0
    for sub_id, events in subscriptions:
        if event in events:
            session.add(WebhookDelivery(subscription_id=sub_id, event=event, payload=data, created_at=now,
                                        state="pending", attempts=0, next_attempt_at=now))
            queued += 1
    return queued
