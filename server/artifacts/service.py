"""Artifact downloads: content-addressed, immutable, resumable, and counted.

``parse_range`` is pure.  ``resolve`` decides what the bytes are and whom
they are counted against (a device may fetch only what it was offered).
``CountingResponse`` streams a slice in chunks, stops when the client goes
away, and hands the number of bytes it actually wrote to the socket to a
callback, which records the transfer.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from sqlalchemy.orm import Session
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from server.accounting.service import Attribution
from server.blobs import is_sha256
from server.devices import store as device_store
from server.errors import Forbidden, NotFound, RangeNotSatisfiable
from server.orm import Device
from server.registry import store
from server.registry.storage import PackageStorage

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, if_range: str | None, etag: str, size: int) -> tuple[int, int] | None:
    """The (start, end-exclusive) slice to send, or None for the whole artifact.

    ``If-Range`` that does not match the ETag means "send it all" (RFC 9110).
    Multiple ranges are not supported and also get the whole artifact.

    Raises:
        RangeNotSatisfiable: the range starts at or past the end.
    """
    if not header or (if_range is not None and if_range.strip() != etag):
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable(f"range {header!r} asks for zero bytes of a {size}-byte artifact")
        return max(0, size - n), size
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        raise RangeNotSatisfiable(f"range {header!r} is outside the artifact ({size} bytes); "
                                  "restart the download from byte 0")
    return start, end


@dataclass(frozen=True)
class Artifact:
    data: bytes
    attribution: Attribution


def resolve(session: Session, storage: PackageStorage, device: Device | None, sha256: str) -> Artifact:
    """The artifact's bytes and its accounting attribution (range_start filled in later).

    Raises:
        NotFound: no package or delta has this SHA-256.
        Forbidden: the calling device was never offered it.
    """
    sha256 = sha256.lower()
    pkg = store.package_by_sha(session, sha256) if is_sha256(sha256) else None
    delta = store.delta_by_sha(session, sha256) if is_sha256(sha256) and pkg is None else None
    if pkg is None and delta is None:
        raise NotFound(f"no artifact {sha256[:64]!r}; artifacts are addressed by the SHA-256 named in an offer")
    update = None
    if device is not None:
        update = device_store.offered_update(session, device.id, sha256)
        if update is None:
            raise Forbidden("this artifact was not offered to this device; poll first and fetch what the offer names")
    if pkg is not None:
        data = storage.materialize(session, pkg)
        version = store.version_by_id(session, pkg.version_id)
        kind, base_version, target_version = "full", None, version.number if version else None
    else:
        assert delta is not None
        data = storage.blobs.get(delta.sha256)
        base = store.package_by_sha(session, delta.base_sha256)
        target = store.package_by_sha(session, delta.target_sha256)
        base_v = store.version_by_id(session, base.version_id) if base else None
        target_v = store.version_by_id(session, target.version_id) if target else None
        kind = "delta"
        base_version = base_v.number if base_v else None
        target_version = target_v.number if target_v else None
    attribution = Attribution(
        device_pk=device.id if device else None, update_id=update.id if update else None,
        rollout_id=update.rollout_id if update else None, artifact_sha256=sha256, kind=kind,
        base_version=base_version, target_version=target_version, artifact_bytes=len(data), range_start=0)
    return Artifact(data, attribution)


class CountingResponse(Response):
    """Streams ``data[start:end]`` in chunks and reports the bytes written (and whether all were)."""

    def __init__(self, data: bytes, start: int, end: int, status_code: int, headers: dict[str, str],
                 on_done: Callable[[int, bool], Awaitable[None]], chunk: int = 64 * 1024,
                 send_body: bool = True) -> None:
        super().__init__(status_code=status_code, headers=headers)
        self.data, self.start, self.end, self.chunk = memoryview(data), start, end, chunk
        self.on_done, self.send_body = on_done, send_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0
        gone = False

        async def watch_disconnect(cancel: anyio.CancelScope) -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    cancel.cancel()
                    return

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_disconnect, tg.cancel_scope)
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                if self.send_body:
                    for off in range(self.start, self.end, self.chunk):
                        if gone:
                            break
                        piece = bytes(self.data[off:min(off + self.chunk, self.end)])
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
                        sent += len(piece)
                if not gone:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
        finally:
            if self.send_body:
                with anyio.CancelScope(shield=True):
                    await self.on_done(sent, sent == self.end - self.start)
