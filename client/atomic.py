"""Crash-safe file writes: temp file, fsync, ``os.replace``, fsync of the directory.

After ``write_atomic`` returns, the path holds either the old content or the
new, never a mix, even if power is cut at any instant.  Disk errors become
``StorageError`` with the path and what to do.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from client.errors import StorageError


def storage_error(e: OSError, what: str, path: Path) -> StorageError:
    """Wrap an ``OSError`` from the car's disk with an actionable message."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = f"disk full: free space under {path.parent} (the running model is untouched)"
    elif e.errno == errno.EROFS:
        hint = f"{path.parent} is mounted read-only"
    else:
        hint = os.strerror(e.errno) if e.errno else str(e)
    return StorageError(f"could not write {what} to {path}: {hint}")


def fsync_dir(directory: Path) -> None:
    """Make a rename or create in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, what: str = "file") -> None:
    """Write a scratch file (no fsync, no rename: nothing trusts it after a crash).

    Raises:
        StorageError: the disk refused the write; the partial file is removed.
    """
    try:
        path.write_bytes(data)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise storage_error(e, what, path) from e


def write_atomic(path: Path, data: bytes, *, fsync: bool = True, what: str = "file", mode: int = 0o666) -> None:
    """Replace ``path`` with ``data`` atomically.

    The file is created with ``mode`` (less the umask), so a secret passed ``mode=0o600`` is never
    readable by others, not even between its creation and a later chmod: there is no later chmod.
    A temp file left by an earlier crash is removed first rather than reused with its old mode.

    Raises:
        StorageError: the disk refused the write; ``path`` keeps its old content.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise storage_error(e, what, path) from e


def commit_file(tmp: Path, path: Path, *, fsync: bool = True, what: str = "file") -> None:
    """Move a fully written ``tmp`` into place, durably.

    Raises:
        StorageError: fsync or rename failed; ``path`` is unchanged.
    """
    try:
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    except OSError as e:
        raise storage_error(e, what, path) from e
