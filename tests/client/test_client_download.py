"""Downloads against a real HTTP server that misbehaves like a real link."""

import asyncio
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from agent_factories import sha
from client_range_server import RangeServer

from client.download import DownloadSpec, fetch, partial_path
from client.errors import DownloadError, HashMismatch, ServerError, StorageError
from client.ratelimit import TokenBucket

BLOB = random.Random(1).randbytes(300_000)
NAME = sha(BLOB)


@pytest.fixture
def server() -> Iterator[RangeServer]:
    s = RangeServer()
    s.blobs[NAME] = BLOB
    yield s
    s.close()


async def _nosleep(_: float) -> None:
    return None


def download(server: RangeServer, dest: Path, **kw: object) -> object:
    spec = DownloadSpec(url=f"/artifacts/{NAME}", sha256=NAME, size=len(BLOB), dest_dir=dest,
                        chunk_bytes=16 * 1024, **kw)  # type: ignore[arg-type]

    async def go() -> object:
        async with httpx.AsyncClient(base_url=server.url) as client:
            return await fetch(client, spec, sleep=_nosleep)

    return asyncio.run(go())


def test_full_download_lands_verified_and_leaves_no_part_file(server: RangeServer, tmp_path: Path) -> None:
    r = download(server, tmp_path)
    assert (tmp_path / NAME).read_bytes() == BLOB
    assert not partial_path(tmp_path, NAME).exists()
    assert r.bytes_received == len(BLOB) and r.attempts == 1  # type: ignore[attr-defined]


def test_resume_after_drop_at_half_download_refetches_only_the_rest(server: RangeServer, tmp_path: Path) -> None:
    server.faults.drop_after_bytes = [150_000]
    r = download(server, tmp_path)
    assert (tmp_path / NAME).read_bytes() == BLOB
    assert [q["range"] for q in server.requests] == [None, "bytes=150000-"]
    assert server.requests[1]["if_range"] == f'"{NAME}"'
    assert r.bytes_received == len(BLOB)  # type: ignore[attr-defined]
    assert server.bytes_sent == len(BLOB)


def test_partial_file_from_an_earlier_process_is_resumed(server: RangeServer, tmp_path: Path) -> None:
    partial_path(tmp_path, NAME).write_bytes(BLOB[:200_000])
    r = download(server, tmp_path)
    assert (tmp_path / NAME).read_bytes() == BLOB
    assert [q["range"] for q in server.requests] == ["bytes=200000-"]
    assert r.bytes_received == 100_000 and r.resumed_from == 200_000  # type: ignore[attr-defined]


def test_server_that_ignores_range_restarts_the_part_cleanly(server: RangeServer, tmp_path: Path) -> None:
    partial_path(tmp_path, NAME).write_bytes(BLOB[:1000])
    server.faults.ignore_range = True
    download(server, tmp_path)
    assert (tmp_path / NAME).read_bytes() == BLOB


def test_bit_flip_in_transit_is_caught_and_the_artifact_refetched(server: RangeServer, tmp_path: Path) -> None:
    server.faults.flip_bit_at = [123_456]
    r = download(server, tmp_path)
    assert (tmp_path / NAME).read_bytes() == BLOB
    assert r.attempts == 2 and len(server.requests) == 2  # type: ignore[attr-defined]
    assert server.requests[1]["range"] is None  # the corrupt part was discarded, not resumed


def test_persistent_corruption_gives_up_with_hash_mismatch_and_installs_nothing(
        server: RangeServer, tmp_path: Path) -> None:
    server.faults.flip_bit_at = [10, 10, 10]
    with pytest.raises(HashMismatch, match="different SHA-256"):
        download(server, tmp_path, max_attempts=3)
    assert not (tmp_path / NAME).exists() and not partial_path(tmp_path, NAME).exists()


def test_server_sending_more_than_the_manifest_size_is_cut_off(server: RangeServer, tmp_path: Path) -> None:
    server.faults.extra_bytes = 5000
    with pytest.raises(ServerError, match="signed offer sizes at 300000"):
        download(server, tmp_path)
    assert not (tmp_path / NAME).exists()
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) == 0


def test_404_is_not_hammered(server: RangeServer, tmp_path: Path) -> None:
    server.faults.status = 404
    with pytest.raises(ServerError, match="refused with 404"):
        download(server, tmp_path)
    assert len(server.requests) == 1


def test_link_that_keeps_dropping_gives_up_after_max_attempts_keeping_the_part(
        server: RangeServer, tmp_path: Path) -> None:
    server.faults.drop_after_bytes = [10_000] * 3
    with pytest.raises(DownloadError, match="30000 of 300000 bytes kept"):
        download(server, tmp_path, max_attempts=3)
    assert partial_path(tmp_path, NAME).read_bytes() == BLOB[:30_000]
    download(server, tmp_path)  # the link came back: resumes at 30000
    assert server.requests[-1]["range"] == "bytes=30000-"
    assert (tmp_path / NAME).read_bytes() == BLOB


def test_rate_limit_paces_the_transfer(server: RangeServer, tmp_path: Path) -> None:
    t0 = time.monotonic()
    download(server, tmp_path, bucket=TokenBucket(1_000_000, 16 * 1024))
    assert time.monotonic() - t0 >= 0.25  # 300 kB at 1 MB/s, minus one burst


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 128 KiB tmpfs: writes fail with ENOSPC like a full flash card (needs root, as in CI here)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_gives_a_clear_storage_error(server: RangeServer, tiny_disk: Path) -> None:
    assert os.statvfs(tiny_disk).f_blocks * os.statvfs(tiny_disk).f_frsize <= 256 * 1024
    with pytest.raises(StorageError, match="disk full: free space under"):
        download(server, tiny_disk)
    assert not (tiny_disk / NAME).exists()
