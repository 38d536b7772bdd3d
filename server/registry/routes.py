"""HTTP for lines, versions, publish, storage figures and artifact downloads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from server.accounting import service as accounting
from server.db import utcnow
from server.deps import Admin, Ctx, DbSession
from server.devices.auth import DeviceOrAdmin
from server.errors import TooLarge
from server.registry import artifacts, schemas, service
from server.registry.storage import PackageStorage

router = APIRouter(prefix="/api/v1")
MAX_NOTES_CHARS = 10_000  # release notes are shown on the dashboard and by `ota versions`
MAX_SPEC_CHARS = 2_000_000  # an input contract with its labels (ImageNet's 1,000 take ~30 KB)


def _storage(ctx: Ctx) -> PackageStorage:
    return ctx.services["storage"]


async def _read_limited(upload: UploadFile, limit: int, setting: str = "OTA_MAX_UPLOAD_BYTES") -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"upload {upload.filename or ''!r} is larger than the {limit}-byte limit ({setting}); "
                       "nothing was stored")
    return data


@router.post("/lines/{line}/versions", status_code=201, response_model=schemas.VersionOut)
async def publish(line: str, ctx: Ctx, _admin: Admin,
                  file: Annotated[UploadFile, File(description="the ONNX model")],
                  notes: Annotated[str | None, Form(max_length=MAX_NOTES_CHARS)] = None,
                  publisher: Annotated[str | None, Form(max_length=200)] = None,
                  min_agreement: Annotated[float | None, Form()] = None,
                  codecs: Annotated[str | None, Form(max_length=200)] = None,
                  contract: Annotated[str | None, Form(max_length=MAX_SPEC_CHARS, description=(
                      "the input contract as a JSON object of contract fields (docs/PROTOCOL.md, 'Input "
                      "contract'); fields left out come from the graph, then from the line's previous version"))]
                  = None,
                  probe: Annotated[UploadFile | None, File(description=(
                      "calibration images for the line (an .npz of uint8 images; replaces the line's): the gate "
                      "measures lossy packages on them"))] = None) -> schemas.VersionOut:
    # The admin token and the upload limit are enforced before the body is read (server/limits.py); the
    # limit is checked again here on the file parts alone.
    data = await _read_limited(file, ctx.settings.max_upload_bytes)
    images = await _read_limited(probe, ctx.settings.max_probe_bytes, "OTA_MAX_PROBE_BYTES") if probe else None
    return await run_in_threadpool(service.publish, ctx.db, _storage(ctx), ctx.settings, line, data, notes=notes,
                                   publisher=publisher, codecs=codecs, min_agreement=min_agreement,
                                   spec=contract, probe=images)


@router.get("/lines", response_model=list[schemas.LineOut])
def list_lines(session: DbSession, _admin: Admin) -> list[schemas.LineOut]:
    return service.list_lines(session)


@router.get("/lines/{line}/versions", response_model=list[schemas.VersionOut])
def list_versions(line: str, session: DbSession, _admin: Admin) -> list[schemas.VersionOut]:
    return service.list_versions(session, line)


@router.get("/lines/{line}/versions/{number}", response_model=schemas.VersionOut)
def get_version(line: str, number: int, session: DbSession, _admin: Admin) -> schemas.VersionOut:
    return service.get_version(session, line, number)


@router.get("/lines/{line}/storage", response_model=schemas.StorageOut)
def storage(line: str, session: DbSession, _admin: Admin) -> schemas.StorageOut:
    return service.storage_report(session, line)


@router.get("/artifacts/{sha256}")
@router.head("/artifacts/{sha256}", operation_id="head_artifact")  # one operation id per method (OpenAPI)
def download(sha256: str, request: Request, ctx: Ctx, session: DbSession, device: DeviceOrAdmin,
             range_: Annotated[str | None, Header(alias="range")] = None,
             if_range: Annotated[str | None, Header()] = None) -> Response:
    art = artifacts.resolve(session, _storage(ctx), device, sha256)
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
        ctx.services["metrics"].bytes_sent.labels(attribution.kind).inc(sent)
        # Its own transaction (the request's has ended by now), through a write slot: hundreds of downloads
        # ending together must queue on the event loop, not in threads blocked on the lock (server/db.py).
        await ctx.db.run_write(accounting.record, attribution, sent, complete, started, utcnow())

    return artifacts.CountingResponse(art.data, start, end, 206 if span else 200, headers, on_done,
                                      chunk=ctx.settings.chunk_bytes, send_body=request.method != "HEAD")
