"""Batched last-seen times: polls note the time in memory, a background flush writes them.

This keeps the poll path free of a write per poll (issue 8's load target);
the inventory merges unflushed times so it is never stale.
"""

from __future__ import annotations

import threading
from datetime import datetime

from sqlalchemy import update

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
        """Write pending times (one UPDATE per device, one transaction); returns how many."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            with db.session_scope() as session:
                for pk, at in pending.items():
                    session.execute(update(Device).where(Device.id == pk).values(last_seen_at=at))
        except Exception:
            with self._lock:  # keep them for the next flush, newer notes win
                for pk, at in pending.items():
                    self._pending.setdefault(pk, at)
            raise
        return len(pending)
