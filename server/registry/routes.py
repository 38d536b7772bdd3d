"""HTTP for lines, versions, publish and storage figures (downloads: ``server/artifacts``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from server import audit
from server.deps import Admin, Ctx, ReadSession
from server.errors import RegistryError, TooLarge
from server.registry import schemas, service
from server.registry.deps import Storage
from server.registry.requirements import MAX_REQUIREMENTS_CHARS

router = APIRouter(prefix="/api/v1")
MAX_NOTES_CHARS = 10_000  # release notes are shown on the dashboard and by `ota versions`
MAX_SPEC_CHARS = 2_000_000  # an input contract with its labels (ImageNet's 1,000 take ~30 KB)


async def _read_limited(upload: UploadFile, limit: int, setting: str = "OTA_MAX_UPLOAD_BYTES") -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"upload {upload.filename or ''!r} is larger than the {limit}-byte limit ({setting}); "
                       "nothing was stored")
    return data


@router.post("/lines/{line}/versions", status_code=201, response_model=schemas.VersionOut)
async def publish(line: str, ctx: Ctx, storage: Storage, actor: Admin,
                  file: Annotated[UploadFile, File(description="the ONNX model")],
                  notes: Annotated[str | None, Form(max_length=MAX_NOTES_CHARS)] = None,
                  publisher: Annotated[str | None, Form(max_length=200)] = None,
                  min_agreement: Annotated[float | None, Form()] = None,
                  codecs: Annotated[str | None, Form(max_length=200)] = None,
                  contract: Annotated[str | None, Form(max_length=MAX_SPEC_CHARS, description=(
                      "the input contract as a JSON object of contract fields (docs/PROTOCOL.md, 'Input "
                      "contract'); fields left out come from the graph, then from the line's previous version"))]
                  = None,
                  requirements: Annotated[str | None, Form(max_length=MAX_REQUIREMENTS_CHARS, description=(
                      "what a car must have beyond what the model says (a JSON object: min_ort_version, "
                      "providers, arch, hardware, min_memory_mb, ir_version, opsets); docs/PROTOCOL.md "
                      "'Compatibility'"))] = None,
                  variant_of: Annotated[int | None, Form(ge=1, le=2**31 - 1, description=(
                      "publish another export of this version number (issue 20: e.g. an older opset for old "
                      "cars); its contract must be the version's"))] = None,
                  probe: Annotated[UploadFile | None, File(description=(
                      "calibration images for the line (an .npz of uint8 images; replaces the line's): the gate "
                      "measures lossy packages on them"))] = None) -> schemas.VersionOut:
    # The admin token and the upload limit are enforced before the body is read (server/limits.py); the
    # limit is checked again here on the file parts alone.
    try:
        data = await _read_limited(file, ctx.settings.max_upload_bytes)
        images = await _read_limited(probe, ctx.settings.max_probe_bytes, "OTA_MAX_PROBE_BYTES") if probe else None
        return await run_in_threadpool(service.publish, ctx.db, storage, ctx.settings, line, data, notes=notes,
                                       publisher=publisher, codecs=codecs, min_agreement=min_agreement,
                                       spec=contract, probe=images, requirements=requirements, actor=actor,
                                       variant_of=variant_of)
    except RegistryError as e:  # a refused publish is audited too (issue 21), in a transaction of its own
        await ctx.db.run_write(audit.record, actor, "version.publish", target=f"line:{line[:100]}",
                               outcome="refused", line=line[:100], publisher=publisher, status=e.status_code,
                               code=e.code, reason=e.message[:1000])
        raise


@router.get("/lines", response_model=list[schemas.LineOut])
def list_lines(session: ReadSession, _admin: Admin) -> list[schemas.LineOut]:
    return service.list_lines(session)


@router.get("/lines/{line}/versions", response_model=list[schemas.VersionOut])
def list_versions(line: str, session: ReadSession, _admin: Admin) -> list[schemas.VersionOut]:
    return service.list_versions(session, line)


@router.get("/lines/{line}/versions/{number}", response_model=schemas.VersionOut)
def get_version(line: str, number: int, session: ReadSession, _admin: Admin) -> schemas.VersionOut:
    return service.get_version(session, line, number)


@router.get("/lines/{line}/storage", response_model=schemas.StorageOut)
def storage(line: str, session: ReadSession, _admin: Admin) -> schemas.StorageOut:
    return service.storage_report(session, line)
