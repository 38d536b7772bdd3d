"""Content-addressed blob store: bytes keyed by their SHA-256.

``BlobStore`` is the interface the registry uses; ``LocalBlobStore`` keeps
blobs in a two-level folder tree and writes atomically (temp file, fsync,
rename), so a crash never leaves a half-written blob under a real name.
Another backend (S3-compatible, issue 8) implements the same four methods.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Protocol

from server.files import write_private

_SHA = re.compile(r"^[0-9a-f]{64}$")


class BlobNotFound(KeyError):
    """No blob with that digest."""


def is_sha256(value: str) -> bool:
    return bool(_SHA.match(value))


class BlobStore(Protocol):
    def put(self, data: bytes) -> str: ...
    def get(self, sha256: str) -> bytes: ...
    def exists(self, sha256: str) -> bool: ...
    def size(self, sha256: str) -> int: ...
    def count(self) -> int: ...


class LocalBlobStore:
    """Blobs as files under ``root/ab/abcdef...``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # models are the fleet's, not the host's users'

    def _path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise BlobNotFound(sha256)  # never build a path from untrusted text
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent) and return its SHA-256."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if path.exists():
            return digest
        write_private(path, data)
        return digest

    def get(self, sha256: str) -> bytes:
        """Raises BlobNotFound."""
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError as e:
            raise BlobNotFound(sha256) from e

    def exists(self, sha256: str) -> bool:
        try:
            return self._path(sha256).exists()
        except BlobNotFound:
            return False

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError as e:
            raise BlobNotFound(sha256) from e

    def count(self) -> int:
        return sum(1 for p in self.root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
