"""HTTP for enrollment, polls, reports (device credentials) and the inventory (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query

from server.deps import Admin, Ctx, DbSession
from server.devices import schemas, service
from server.devices.auth import CurrentDevice
from server.security import bearer

router = APIRouter(prefix="/api/v1")


@router.post("/devices/enroll", status_code=201, response_model=schemas.EnrollOut)
def enroll(body: schemas.EnrollIn, ctx: Ctx, session: DbSession,
           authorization: Annotated[str | None, Header()] = None) -> schemas.EnrollOut:
    return service.enroll(session, ctx.settings, ctx.signer, bearer(authorization), body)


@router.post("/device/poll", response_model=schemas.PollOut)
def poll(body: schemas.PollIn, ctx: Ctx, session: DbSession, device: CurrentDevice) -> schemas.PollOut:
    answer = service.poll(session, ctx.settings, ctx.signer, ctx.services["storage"], ctx.services["presence"],
                          device, body)
    ctx.services["metrics"].polls.labels("yes" if answer.offer else "no").inc()
    return answer


@router.post("/device/reports", response_model=schemas.ReportsOut)
def reports(body: schemas.ReportsIn, ctx: Ctx, session: DbSession, device: CurrentDevice) -> schemas.ReportsOut:
    ack = service.report(session, device, body)
    states = {r.seq: r.state for r in body.reports}
    for seq in ack.accepted:
        ctx.services["metrics"].reports.labels("accepted", states[seq]).inc()
    for rej in ack.rejected:
        ctx.services["metrics"].reports.labels("rejected", states[rej.seq]).inc()
    return ack


@router.get("/devices", response_model=list[schemas.DeviceOut])
def list_devices(ctx: Ctx, session: DbSession, _admin: Admin,
                 tag: Annotated[list[str] | None, Query(description="key=value, repeatable")] = None,
                 drift: bool = False) -> list[schemas.DeviceOut]:
    tags = dict(t.split("=", 1) for t in (tag or []) if "=" in t)
    return service.inventory(session, ctx.services["presence"], tags, drift_only=drift)


@router.get("/devices/{device_id}", response_model=schemas.DeviceOut)
def show_device(device_id: str, ctx: Ctx, session: DbSession, _admin: Admin) -> schemas.DeviceOut:
    return service.device_detail(session, ctx.services["presence"], device_id)


@router.patch("/devices/{device_id}", response_model=schemas.DeviceOut)
def update_device(device_id: str, body: schemas.DevicePatch, ctx: Ctx, session: DbSession,
                  actor: Admin) -> schemas.DeviceOut:
    return service.update_device(session, ctx.services["presence"], device_id, body, actor)
