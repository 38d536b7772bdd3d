"""Private, crash-safe file writes for the server's state: created 0600, fsynced, renamed into place.

``mkstemp`` creates the temporary file 0600, so no other user can read the bytes at any moment (a
write-then-chmod leaves a window in which they can); ``os.replace`` makes the new content appear whole.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, readable by this user only; the folder is made 0700 if missing."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
