"""Batched last-seen times: polls note the time in memory, a background flush writes them.

This keeps the poll path free of a write per poll (issue 8's load target);
the inventory merges unflushed times so it is never stale.
"""

from __future__ import annotations

import threading
from datetime import datetime

from sqlalchemy import bindparam, update

from server.db import Database
from server.orm import Device


class LastSeen:
    def __init__(self) -> None:
        self._pending: dict[int, datetime] = {}
        self._lock = threading.Lock()

    def note(self, device_pk: int, at: datetime) -> None:
        with self._lock:
            self._pending[device_pk] = at

    def peek(self, device_pk: int) -> datetime | None:
        with self._lock:
            return self._pending.get(device_pk)

    def flush(self, db: Database) -> int:
        """Write pending times (one batched UPDATE, one transaction); returns how many."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        # One executemany of a plain Core UPDATE (not one ORM statement per device): a few ms for thousands
        # of devices, so the flush does not hold the GIL (and the poll path's event loop) for long.
        devices = Device.__table__
        stmt = update(devices).where(devices.c.id == bindparam("pk")).values(last_seen_at=bindparam("at"))  # type: ignore[arg-type]
        try:
            with db.session_scope() as session:
                session.connection().execute(stmt, [{"pk": pk, "at": at} for pk, at in pending.items()])
        except Exception:
            with self._lock:  # keep them for the next flush, newer notes win
                for pk, at in pending.items():
                    self._pending.setdefault(pk, at)
            raise
        return len(pending)
