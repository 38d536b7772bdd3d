"""HTTP for enrollment, polls, reports (device credentials) and the inventory (admin).

The device-facing endpoints are async and write through ``Database.run_write``: each transaction is
begun and committed inside one worker thread, after a write slot was awaited on the event loop, so a
burst of several hundred cars queues on the loop instead of in threads blocked on the database's write
lock (issue 8; see ``server/db.py``).  Their responses are validated on the event loop.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from server.db import utcnow
from server.deps import Admin, AppContext, Ctx, ReadSession, WriteSession
from server.devices import enrollment, fastpoll, pollcache, schemas, service, tokens
from server.devices.auth import UNKNOWN_DEVICE, device_by_token, known_device
from server.devices.deps import Presence
from server.devices.pollcache import PollAnswer
from server.devices.store import InventoryFilter
from server.errors import Conflict, Unauthorized, Unprocessable
from server.security import bearer, token_digest

router = APIRouter(prefix="/api/v1")


@router.get("/keys", response_model=schemas.KeysOut)
def keys(ctx: Ctx) -> schemas.KeysOut:
    """The root-signed delegation naming the online key (public: a car verifies it with its provisioned root key)."""
    return schemas.KeysOut(root_keyid=ctx.keys.root_keyid, delegation=ctx.keys.delegation)


@router.post("/devices/enroll", status_code=201, response_model=schemas.EnrollOut,
             responses={409: {"description": "the id is enrolled: prove its key or have it reauthorised"},
                        429: {"description": "too many enrolments from this address or with this token"}})
async def enroll(body: schemas.EnrollIn, request: Request, ctx: Ctx,
                 authorization: Annotated[str | None, Header()] = None) -> schemas.EnrollOut | Response:
    token = bearer(authorization)
    client = request.client.host if request.client else "unknown"
    credential = f"token:{token_digest(token)}" if token else f"proof:{body.device_id}"
    wait_s = ctx.enroll_limiter.take(f"addr:{client}", credential)
    if wait_s > 0:
        retry = str(max(1, math.ceil(min(wait_s, 86400.0))))
        return JSONResponse({"error": "rate_limited", "detail": f"too many enrolments from {client} or with this "
                             f"credential; retry in {retry} s"}, status_code=429, headers={"Retry-After": retry})
    try:
        return await ctx.db.run_write(enrollment.enroll, ctx.settings, ctx.signer, token, body,
                                      ctx.keys.delegation)
    except (Unauthorized, Conflict) as e:
        await ctx.db.run_write(enrollment.record_refusal, body, client, e.status_code, e.message)
        raise


@router.post("/devices/{device_id}/reauthorize", response_model=schemas.DeviceActionOut)
def reauthorize_device(device_id: str, session: WriteSession, actor: Admin,
                       body: schemas.ReauthorizeIn | None = None) -> schemas.DeviceActionOut:
    """Allow one enrolment of this id (with an enrolment token) to replace its key, within ``valid_s``."""
    return enrollment.reauthorize(session, device_id, (body or schemas.ReauthorizeIn()).valid_s, actor)


async def _revoke(ctx: AppContext, device_id: str, actor: str, decommission: bool) -> schemas.DeviceActionOut:
    """Commit the revocation, then wait until every other process has heard of it (the change feed) so that
    the device's very next poll is refused whichever worker or replica answers it."""
    out = await ctx.db.run_write(enrollment.revoke, device_id, actor, decommission)
    feed = ctx.pollcache.feed
    await asyncio.sleep(feed.propagation_s if feed is not None else 0.0)
    return out


@router.post("/devices/{device_id}/revoke", response_model=schemas.DeviceActionOut)
async def revoke_device(device_id: str, ctx: Ctx, actor: Admin) -> schemas.DeviceActionOut:
    return await _revoke(ctx, device_id, actor, decommission=False)


@router.post("/devices/{device_id}/decommission", response_model=schemas.DeviceActionOut)
async def decommission_device(device_id: str, ctx: Ctx, actor: Admin) -> schemas.DeviceActionOut:
    return await _revoke(ctx, device_id, actor, decommission=True)


@router.post("/enrollment-tokens", status_code=201, response_model=schemas.EnrollmentTokenCreated)
def create_enrollment_token(body: schemas.EnrollmentTokenIn, session: WriteSession,
                            actor: Admin) -> schemas.EnrollmentTokenCreated:
    return tokens.create(session, body, actor)


@router.get("/enrollment-tokens", response_model=list[schemas.EnrollmentTokenOut])
def list_enrollment_tokens(session: ReadSession, _admin: Admin) -> list[schemas.EnrollmentTokenOut]:
    return tokens.list_tokens(session)


@router.post("/enrollment-tokens/{token_id}/revoke", response_model=schemas.EnrollmentTokenOut)
def revoke_enrollment_token(token_id: int, session: WriteSession, actor: Admin) -> schemas.EnrollmentTokenOut:
    return tokens.revoke(session, token_id, actor)


# The poll is async with async dependencies only: a steady-state poll is answered from the per-process
# caches (server/devices/pollcache.py) on the event loop, with no threadpool hop and no SQL.  Anything
# else (a cache miss, a first or re-signed offer, a changed running version) runs in a worker thread.

def _poll_in_transaction(session: Session, ctx: AppContext, token: str, body: schemas.PollIn) -> PollAnswer:
    """The database path (may sign and store an offer); run by ``run_write``, so committed before the answer is sent."""
    device = known_device(session, token)
    interval, envelope_json = service.poll(session, ctx.settings, ctx.signer, ctx.storage, ctx.presence, device, body)
    return pollcache.encode_answer(interval, envelope_json, ctx.statuses.get(device.device_id, utcnow()))


def _prepare_poll(ctx: AppContext, token: str, body: schemas.PollIn) -> None:
    """The poll's codec work (an on-demand delta) in a read scope, before its write transaction."""
    with ctx.db.read_scope() as session:
        device = device_by_token(session, token)
        if device is not None:
            service.prepare_poll(session, ctx.settings, ctx.signer, ctx.storage, device, body)


@dataclass(frozen=True)
class _Caller:
    token: str
    device: pollcache.DeviceView


async def _polling_device(request: Request, authorization: Annotated[str | None, Header()] = None) -> _Caller:
    """The calling device from the cache (or one read).  Raises Unauthorized for a missing or unknown token."""
    ctx: AppContext = request.app.state.ctx
    token = bearer(authorization)
    if token is None:
        raise Unauthorized(UNKNOWN_DEVICE)
    device = await fastpoll.cached_device(ctx, token_digest(token))
    if device is None:
        raise Unauthorized(UNKNOWN_DEVICE)
    return _Caller(token, device)


@router.post("/device/poll", response_model=schemas.PollOut)
async def poll(body: schemas.PollIn, request: Request,
               caller: Annotated[_Caller, Depends(_polling_device)]) -> Response:
    ctx: AppContext = request.app.state.ctx
    line = await fastpoll.cached_line(ctx, body.line)
    answer = fastpoll.cached_answer(ctx, caller.device, line, body) if line is not None else None
    if answer is None:  # the decision asks for a write (an unknown line: the database path raises NotFound)
        # A delta to make is made first, holding no write slot (issue 15); the transaction only writes rows.
        ctx.metrics.poll_writes.inc()
        await to_thread.run_sync(_prepare_poll, ctx, caller.token, body)
        answer = await ctx.db.run_write(_poll_in_transaction, ctx, caller.token, body)
        fastpoll.count_poll(ctx, answer)
    return Response(answer.content, media_type="application/json")


def _report_in_transaction(session: Session, ctx: AppContext, token: str | None, body: schemas.ReportsIn,
                           raw: list[dict[str, Any]] | None) -> schemas.ReportsOut:
    """Raises Unauthorized for a missing or unknown token (looked up in the write transaction: no extra hop)."""
    return service.report(session, ctx.membership, known_device(session, token), body, raw,
                          judge_quality=ctx.quality_judge.due)


@router.post("/device/reports", response_model=schemas.ReportsOut)
async def reports(body: schemas.ReportsIn, request: Request, ctx: Ctx,
                  authorization: Annotated[str | None, Header()] = None) -> schemas.ReportsOut:
    sent = await request.json()  # already parsed for ``body``; signatures cover the reports exactly as sent
    raw = sent.get("reports") if isinstance(sent, dict) else None  # (quality summaries are not signed)
    ack = await ctx.db.run_write(_report_in_transaction, ctx, bearer(authorization), body,
                                 raw if isinstance(raw, list) else None)
    states = {r.seq: r.state for r in body.reports}
    for seq in ack.accepted:
        ctx.metrics.reports.labels("accepted", states[seq]).inc()
    for rej in ack.rejected:
        ctx.metrics.reports.labels("rejected", states[rej.seq]).inc()
    return ack


UPDATE_STATES = "^(offered|downloading|downloaded|verified|installed|failed|rolled_back)$"


@router.get("/devices", response_model=list[schemas.DeviceOut])
def list_devices(presence: Presence, session: ReadSession, _admin: Admin, response: Response,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                 cursor: Annotated[str | None, Query(min_length=1, max_length=400,
                                                     description="X-Next-Cursor of the previous page")] = None,
                 line: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
                 version: Annotated[int | None, Query(ge=0, le=schemas.INT32,
                                                      description="running version (on ``line`` if given)")] = None,
                 tag: Annotated[list[str] | None, Query(description="key=value, repeatable")] = None,
                 drift: bool = False,
                 state: Annotated[str | None, Query(pattern=UPDATE_STATES,
                                                    description="state of the newest offer")] = None,
                 seen_since: Annotated[datetime | None, Query(description="ISO 8601 with a zone")] = None,
                 q: Annotated[str | None, Query(min_length=1, max_length=200, description="part of the id")] = None,
                 ) -> list[schemas.DeviceOut]:
    """One page of the inventory by device id; a full page carries ``X-Next-Cursor`` (pass it as ``cursor``)."""
    if seen_since is not None and seen_since.tzinfo is None:
        raise Unprocessable(f"seen_since must carry a time zone (for example 2026-12-07T06:00:00Z), got "
                            f"{seen_since.isoformat()}", code="bad_time")
    f = InventoryFilter(line=line, version=version, tags=service.parse_tag_filter(tag), drift=drift, state=state,
                        seen_since=seen_since, q=q)
    devices, next_cursor = service.inventory_page(session, presence, f, limit=limit, cursor=cursor)
    if next_cursor is not None:
        response.headers["X-Next-Cursor"] = next_cursor
    return devices


@router.get("/devices/{device_id}", response_model=schemas.DeviceOut)
def show_device(device_id: str, presence: Presence, session: ReadSession, _admin: Admin) -> schemas.DeviceOut:
    return service.device_detail(session, presence, device_id)


@router.patch("/devices/{device_id}", response_model=schemas.DeviceOut)
def update_device(device_id: str, body: schemas.DevicePatch, presence: Presence, session: WriteSession,
                  actor: Admin) -> schemas.DeviceOut:
    return service.update_device(session, presence, device_id, body, actor)
