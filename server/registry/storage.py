"""Package storage as deltas with keyframes, materialized on demand.

A version's package is kept as a delta against the same codec's package of
the previous version, with a full package (keyframe) every
``keyframe_interval`` versions, as video codecs and git packs do.  The
storage delta is the very same blob as the transfer delta from the previous
version, so precomputing transfer deltas costs no extra disk.
``materialize`` walks back to the keyframe and applies the patches, checks
the SHA-256, and keeps the last few packages in a small LRU cache.

Transfer deltas from other bases are made on demand by ``delta_for``,
single-flight: one thread per process computes a given (base, target) pair
while the others wait for it, and a unique constraint settles races between
processes.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import codec
from models.errors import ModelError
from server.blobs import BlobNotFound, BlobStore
from server.errors import RegistryError
from server.orm import Delta, Package
from server.registry import store


class StorageCorrupt(RegistryError):
    status_code, code = 500, "storage_corrupt"


class PackageCache:
    """A thread-safe LRU of materialized package bytes, keyed by SHA-256."""

    def __init__(self, items: int) -> None:
        self.items = items
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> bytes | None:
        with self._lock:
            data = self._data.get(sha256)
            if data is not None:
                self._data.move_to_end(sha256)
            return data

    def put(self, sha256: str, data: bytes) -> None:
        with self._lock:
            self._data[sha256] = data
            self._data.move_to_end(sha256)
            while len(self._data) > self.items:
                self._data.popitem(last=False)


class PackageStorage:
    """Reads packages back from their stored form and makes transfer deltas."""

    def __init__(self, blobs: BlobStore, cache_items: int) -> None:
        self.blobs = blobs
        self.cache = PackageCache(cache_items)
        self._flights: dict[tuple[str, str], threading.Lock] = {}
        self._flights_lock = threading.Lock()
        self._made: dict[tuple[str, str], tuple[str, int]] = {}  # pair -> (blob sha, size), this process

    def materialize(self, session: Session, row: Package) -> bytes:
        """The full package bytes of ``row``.

        Raises:
            StorageCorrupt: a stored blob is missing or does not rebuild the recorded SHA-256.
        """
        cached = self.cache.get(row.sha256)
        if cached is not None:
            return cached
        try:
            if row.storage_kind == "full":
                data = self.blobs.get(row.storage_blob)
            else:
                base = store.package_by_sha(session, row.storage_base_sha256 or "")
                if base is None:
                    raise StorageCorrupt(f"package {row.sha256[:12]} is stored on a base that is not in the registry")
                data = codec.patch(self.materialize(session, base), self.blobs.get(row.storage_blob))
        except (BlobNotFound, ModelError) as e:
            raise StorageCorrupt(f"package {row.sha256[:12]} cannot be rebuilt from storage: {e}") from e
        if hashlib.sha256(data).hexdigest() != row.sha256:
            raise StorageCorrupt(f"package {row.sha256[:12]} rebuilt with a different SHA-256; storage is damaged")
        self.cache.put(row.sha256, data)
        return data

    def _flight(self, key: tuple[str, str]) -> threading.Lock:
        with self._flights_lock:
            return self._flights.setdefault(key, threading.Lock())

    def make_delta(self, session: Session, base: Package, target: Package) -> tuple[str, int]:
        """The blob (SHA-256, size) of the transfer delta base -> target, diffed once per process.

        The codec work (materialize both packages, diff, entropy-code) takes
        a good part of a second: callers do it in a read scope, before they
        take a write slot (issue 15: a poll used to hold SQLite's only write
        slot for it).  Single-flight: one thread computes a pair while the
        others wait for it and reuse its bytes.
        """
        key = (base.sha256, target.sha256)
        with self._flight(key):
            made = self._made.get(key)
            if made is None:
                patch = codec.diff(self.materialize(session, base), self.materialize(session, target))
                made = self._made[key] = (self.blobs.put(patch), len(patch))
        return made

    def prepare_delta(self, session: Session, base: Package, target: Package) -> None:
        """Make the delta's blob now unless its row exists, so that ``delta_for`` later only inserts the row."""
        if store.delta(session, base.sha256, target.sha256) is None:
            self.make_delta(session, base, target)

    def delta_for(self, session: Session, base: Package, target: Package) -> Delta | None:
        """The transfer delta base -> target, computed once if missing; None if it would not be smaller.

        The row goes into the caller's transaction, and a concurrent insert
        from another process (unique constraint) is settled by taking the row
        that won.  Call ``prepare_delta`` first, outside the write
        transaction, so that the diff is not made while holding it.
        """
        key = (base.sha256, target.sha256)
        existing = store.delta(session, *key)
        if existing is None:
            made = self.make_delta(session, base, target)
            existing = store.delta(session, *key)  # another request may have committed it meanwhile
            if existing is None:
                try:
                    with session.begin_nested():
                        existing = store.add_delta(session, base.sha256, target.sha256, made[0], made[1])
                except IntegrityError:
                    existing = store.delta(session, *key)
        return existing if existing is not None and existing.bytes < target.bytes else None
