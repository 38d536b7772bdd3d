"""HTTP for artifact downloads: content-addressed, resumable, counted per device (``service``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import RedirectResponse

from server.accounting import service as accounting
from server.artifacts import service as artifacts
from server.db import utcnow
from server.deps import Ctx, ReadSession
from server.devices.auth import DeviceOrAdmin
from server.registry.deps import Storage

router = APIRouter(prefix="/api/v1")


@router.get("/artifacts/{sha256}")
@router.head("/artifacts/{sha256}", operation_id="head_artifact")  # one operation id per method (OpenAPI)
def download(sha256: str, request: Request, ctx: Ctx, session: ReadSession, storage: Storage, device: DeviceOrAdmin,
             range_: Annotated[str | None, Header(alias="range")] = None,
             if_range: Annotated[str | None, Header()] = None) -> Response:
    art = artifacts.resolve(session, storage, device, sha256)
    presign = getattr(ctx.blobs, "presigned_url", None)  # only the S3 store has it (server/blobs_s3.py)
    if (ctx.settings.s3_redirect_downloads and presign is not None and range_ is None
            and ctx.blobs.exists(art.attribution.artifact_sha256)):
        # Whole-artifact GETs go to the store (or the CDN in front of it); resumes (Range) stay here,
        # where If-Range can be checked against our SHA-256 ETag.  Redirected bytes are not counted.
        return RedirectResponse(presign(art.attribution.artifact_sha256), status_code=307,
                                headers={"ETag": f'"{art.attribution.artifact_sha256}"', "Cache-Control": "no-store"})
    size = len(art.data)
    etag = f'"{art.attribution.artifact_sha256}"'
    span = artifacts.parse_range(range_, if_range, etag, size)
    start, end = span or (0, size)
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable", "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream", "Content-Length": str(end - start)}
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    attribution = accounting.Attribution(**{**art.attribution.__dict__, "range_start": start})
    started = utcnow()

    async def on_done(sent: int, complete: bool) -> None:
        ctx.metrics.bytes_sent.labels(attribution.kind).inc(sent)
        # Its own transaction (the request's has ended by now), through a write slot: hundreds of downloads
        # ending together must queue on the event loop, not in threads blocked on the lock (server/db.py).
        await ctx.db.run_write(accounting.record, attribution, sent, complete, started, utcnow())

    return artifacts.CountingResponse(art.data, start, end, 206 if span else 200, headers, on_done,
                                      chunk=ctx.settings.chunk_bytes, send_body=request.method != "HEAD")
