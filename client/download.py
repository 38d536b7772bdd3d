"""Resumable, bounded, rate-limited, verified artifact downloads.

Flow for one artifact (content-addressed by SHA-256):

1. ``<dir>/<sha>`` already there and verified -> done, 0 bytes.
2. ``<dir>/<sha>.part`` holds what earlier attempts (or an earlier process)
   received; ask for the rest with ``Range: bytes=N-`` and
   ``If-Range: "<sha>"``.  A 206 whose ``Content-Range`` starts at N appends;
   a 200 means the server chose to resend everything, so the part restarts.
3. Never accept more than the offer's ``size``: the stream is cut and the
   part discarded the moment it would overflow.
4. When the part reaches ``size`` it is hashed; a mismatch (a bit flipped in
   transit) discards it and the next attempt refetches; a match is fsynced
   and renamed into place.

Network failures are retried with backoff up to ``max_attempts``, each
attempt resuming; a server that says 4xx is not hammered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from client.atomic import commit_file, storage_error
from client.errors import DownloadError, HashMismatch, ServerError, Unauthorized
from client.ratelimit import TokenBucket

log = logging.getLogger("client.download")

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class DownloadResult:
    """Where the verified file landed and what it cost on the wire."""

    path: Path
    bytes_received: int
    resumed_from: int
    attempts: int


@dataclass
class DownloadSpec:
    """What to fetch and how; ``on_bytes`` is told of every chunk (for reports and the simulator)."""

    url: str
    sha256: str
    size: int
    dest_dir: Path
    chunk_bytes: int = 64 * 1024
    max_attempts: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    fsync: bool = True
    bucket: TokenBucket | None = None
    on_bytes: Callable[[int], None] | None = None


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def partial_path(dest_dir: Path, sha256: str) -> Path:
    """Where the bytes received so far for ``sha256`` are kept across attempts and restarts."""
    return dest_dir / f"{sha256}.part"


async def fetch(
    client: httpx.AsyncClient,
    spec: DownloadSpec,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> DownloadResult:
    """Download ``spec.url`` into ``spec.dest_dir/<sha256>``, resuming and verifying.

    Raises:
        DownloadError: the network kept failing for ``max_attempts`` attempts (the part file stays).
        HashMismatch: every attempt produced bytes that do not hash to ``sha256``, or the
            server kept sending more than ``size``.
        ServerError: the server refused the artifact (4xx); retrying will not help.
        StorageError: the disk refused a write (the part file keeps what it had).
    """
    rng = rng or random.Random()
    final = spec.dest_dir / spec.sha256
    part = partial_path(spec.dest_dir, spec.sha256)
    spec.dest_dir.mkdir(parents=True, exist_ok=True)
    if final.exists():
        if sha256_file(final) == spec.sha256:
            return DownloadResult(final, 0, spec.size, 0)
        final.unlink()
    resumed_from = part.stat().st_size if part.exists() else 0
    tally = [0]  # bytes read from the wire, including attempts that failed midway
    last_error: Exception | None = None
    for attempt in range(1, spec.max_attempts + 1):
        if attempt > 1:
            delay = min(spec.backoff_max_s, spec.backoff_initial_s * 2 ** (attempt - 2))
            await sleep(rng.uniform(0, delay))
        try:
            await _attempt(client, spec, part, tally)
        except DownloadError as e:
            last_error = e
            continue
        if sha256_file(part) != spec.sha256:
            part.unlink()
            last_error = HashMismatch(
                f"artifact {spec.sha256[:12]}... arrived with a different SHA-256 (corrupted in transit); refetching"
            )
            continue
        commit_file(part, final, fsync=spec.fsync, what=f"artifact {spec.sha256[:12]}")
        return DownloadResult(final, tally[0], resumed_from, attempt)
    if isinstance(last_error, HashMismatch):
        raise HashMismatch(f"{last_error} failed {spec.max_attempts} times; giving up on this offer") from None
    raise DownloadError(
        f"could not download {spec.url} after {spec.max_attempts} attempts ({last_error}); "
        f"{part.stat().st_size if part.exists() else 0} of {spec.size} bytes kept for the next try"
    ) from last_error


async def _attempt(client: httpx.AsyncClient, spec: DownloadSpec, part: Path, tally: list[int]) -> None:
    """One request; appends to ``part`` and adds the bytes read from the wire to ``tally[0]``."""
    have = part.stat().st_size if part.exists() else 0
    if have > spec.size:
        part.unlink()
        have = 0
    if have == spec.size:
        return
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        headers["If-Range"] = f'"{spec.sha256}"'
    received = 0
    log.info("request %s from byte %d of %d", spec.sha256[:12], have, spec.size)
    try:
        async with client.stream("GET", spec.url, headers=headers) as resp:
            if resp.status_code == 416:
                part.unlink(missing_ok=True)  # the server disowns our partial file: the next attempt starts at 0
            start = _check_response(resp, spec, have)
            if start == 0 and have:
                part.unlink()
            try:
                f = open(part, "ab")
            except OSError as e:
                raise storage_error(e, "download", part) from e
            with f:
                written = start
                async for chunk in resp.aiter_raw():  # as the socket delivers: a drop loses nothing received
                    if spec.bucket is not None:
                        await spec.bucket.acquire(len(chunk))
                    received += len(chunk)
                    tally[0] += len(chunk)
                    if written + len(chunk) > spec.size:
                        f.close()
                        part.unlink(missing_ok=True)
                        raise HashMismatch(
                            f"server sent more than the {spec.size} bytes the signed offer allows for "
                            f"{spec.sha256[:12]}...; discarded"
                        )
                    try:
                        f.write(chunk)
                    except OSError as e:
                        raise storage_error(e, "download", part) from e
                    written += len(chunk)
                    if spec.on_bytes is not None:
                        spec.on_bytes(len(chunk))
    except httpx.TransportError as e:  # connect, read, write, protocol errors, timeouts
        raise DownloadError(f"link failed after {received} bytes: {type(e).__name__}: {e}") from e
    if written < spec.size:
        raise DownloadError(f"connection closed early at byte {written} of {spec.size}")


def _check_response(resp: httpx.Response, spec: DownloadSpec, have: int) -> int:
    """Validate status and headers; return the offset the body starts at."""
    if resp.status_code == 401:
        raise Unauthorized("artifact download refused: device token not accepted (401)", 401)
    if resp.status_code == 416:
        raise DownloadError(f"server refused range bytes={have}- (416); restarting from zero")
    if 400 <= resp.status_code < 500:
        raise ServerError(
            f"artifact {spec.url} refused with {resp.status_code}; it was not offered to this car or no longer exists",
            resp.status_code,
        )
    if resp.status_code >= 500:
        raise DownloadError(f"server error {resp.status_code} on {spec.url}")
    if resp.headers.get("content-encoding", "identity") not in ("identity", ""):
        raise ServerError(f"artifact sent with Content-Encoding {resp.headers['content-encoding']}; expected raw bytes")
    if resp.status_code == 206:
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", ""))
        if not m or int(m.group(1)) != have:
            raise DownloadError(f"206 with Content-Range {resp.headers.get('content-range')!r}, expected start {have}")
        start = have
    elif resp.status_code == 200:
        start = 0
    else:
        raise ServerError(f"unexpected status {resp.status_code} for artifact {spec.url}", resp.status_code)
    length = resp.headers.get("content-length")
    if length is not None and length.isdigit() and start + int(length) > spec.size:
        raise ServerError(
            f"server offers {start + int(length)} bytes for an artifact the signed offer sizes at {spec.size}"
        )
    return start


def remove_partial(dest_dir: Path, sha256: str) -> None:
    """Forget a part file (after the offer it belonged to is abandoned)."""
    try:
        os.unlink(partial_path(dest_dir, sha256))
    except FileNotFoundError:
        pass
