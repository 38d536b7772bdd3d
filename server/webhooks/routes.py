"""HTTP for webhooks (admin): ``POST/GET /api/v1/webhooks``, ``DELETE /api/v1/webhooks/{id}``,
``GET /api/v1/webhooks/{id}/deliveries``."""

from __future__ import annotations

from fastapi import APIRouter, Query

from server.deps import Admin, Ctx, ReadSession, WriteSession
from server.webhooks import schemas, service

router = APIRouter(prefix="/api/v1/webhooks")


@router.post("", status_code=201, response_model=schemas.WebhookOut, response_model_exclude_none=True)
def add(body: schemas.WebhookIn, session: WriteSession, ctx: Ctx, actor: Admin) -> schemas.WebhookOut:
    return service.add(session, body, actor, ctx.settings.webhook_max_subscriptions)


@router.get("", response_model=list[schemas.WebhookOut], response_model_exclude_none=True)
def list_webhooks(session: ReadSession, _admin: Admin, removed: bool = False) -> list[schemas.WebhookOut]:
    return service.list_webhooks(session, include_removed=removed)


@router.delete("/{webhook_id}", response_model=schemas.WebhookOut, response_model_exclude_none=True)
def remove(webhook_id: int, session: WriteSession, actor: Admin) -> schemas.WebhookOut:
    """Deactivate (the delivery log stays readable); answers with the subscription as it is now."""
    return service.remove(session, webhook_id, actor)


@router.get("/{webhook_id}/deliveries", response_model=list[schemas.DeliveryOut])
def deliveries(webhook_id: int, session: ReadSession, _admin: Admin,
               limit: int = Query(default=100, ge=1, le=1000)) -> list[schemas.DeliveryOut]:
    return service.deliveries(session, webhook_id, limit)
