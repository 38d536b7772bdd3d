"""Cross-process invalidation for the poll caches: every server process hears what the others committed.

A change feed carries, for each committed transaction that changed something
the poll caches hold, the device pks it touched and whether it touched a
line, rollout, version or package (``pollcache.PollCache.attach`` gathers
them).  Every process publishes its own commits and listens to all the others,
so a cached entry stays valid until a change to it is heard, not for a fixed
few seconds: a fleet polling every 60 s answers from memory (issue 8).

Two carriers, chosen by the database:

- PostgreSQL: ``NOTIFY`` sent inside the committing transaction (delivered
  only if it commits, and to every listener on every host) and one ``LISTEN``
  connection per process in a daemon thread;
- SQLite (every process is on the host that holds the file): one line per
  commit appended, after the commit, to ``<database file>-changes`` beside the
  database, which each process tails every ``TAIL_INTERVAL_S``.

``trust`` is ``(since, until)``: the monotonic times between which every
change was heard without a gap, ``until`` None while still listening (None
before the first listen).  The cache trusts an entry past its short
time-to-live only if it was read after ``since``; after a gap (a lost
connection, a truncated file) such an entry is known fresh as of ``until`` and
answers for the time-to-live from then (so polls still answer through a brief
database outage), and one read before ``since`` only for its time-to-live.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger("ota.server.pollcache")

CHANNEL = "ota_pollcache"
TAIL_INTERVAL_S = 0.05  # SQLite: how often the changes file is checked (one stat)
MAX_FILE_BYTES = 4 * 1024 * 1024  # SQLite: the file is emptied past this; every reader then drops everything
MAX_PAYLOAD_PKS = 500  # PostgreSQL NOTIFY payloads must stay under 8,000 bytes

OnChange = Callable[[list[int], bool], None]  # (device pks, lines changed)
OnGap = Callable[[], None]  # changes may have been missed: drop everything


def encode(source: str, device_pks: Iterable[int], lines: bool) -> list[str]:
    """Payloads ``<source> L|- <pk,pk,...>`` for one commit, each small enough for NOTIFY."""
    pks = sorted(device_pks)
    flag = "L" if lines else "-"
    chunks = [pks[i:i + MAX_PAYLOAD_PKS] for i in range(0, len(pks), MAX_PAYLOAD_PKS)] or [[]]
    return [f"{source} {flag} {','.join(map(str, c))}" for c in chunks]


def decode(payload: str) -> tuple[str, list[int], bool]:
    """(source, device pks, lines changed).  Raises ValueError for a malformed payload."""
    source, flag, pks = (payload.strip().split(" ", 2) + ["", ""])[:3]
    if flag not in ("L", "-"):
        raise ValueError(f"not a poll cache change: {payload!r}")
    return source, [int(p) for p in pks.split(",") if p], flag == "L"


class ChangeFeed:
    """Base: an id for this process's own messages (skipped on receipt) and the listener thread's lifecycle."""

    #: How long after a commit every other listening process has heard of it (a revocation waits this long
    #: before answering, so that the revoked device's next poll is refused by every worker).
    propagation_s = 0.0

    def __init__(self) -> None:
        self.source = uuid.uuid4().hex[:12]
        self.trust: tuple[float, float | None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def trusted_since(self) -> float | None:
        """Since when every change has been heard, while still listening; None otherwise."""
        trust = self.trust
        return trust[0] if trust is not None and trust[1] is None else None

    def _listening(self) -> None:
        self.trust = (time.monotonic(), None)

    def _gap(self) -> None:
        trust = self.trust
        if trust is not None and trust[1] is None:
            self.trust = (trust[0], time.monotonic())

    def publish_in_transaction(self, session: Session, device_pks: set[int], lines: bool) -> None:
        """Called before a commit that changed cached things (PostgreSQL sends here, atomically)."""

    def publish_committed(self, device_pks: set[int], lines: bool) -> None:
        """Called after such a commit succeeded (SQLite appends here)."""

    def start(self, on_change: OnChange, on_gap: OnGap) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(on_change, on_gap), name="pollcache-feed",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.trust = None

    def _deliver(self, payload: str, on_change: OnChange) -> None:
        try:
            source, pks, lines = decode(payload)
        except ValueError:
            log.warning("ignoring a malformed poll cache change: %r", payload)
            return
        if source != self.source:
            on_change(pks, lines)

    def _run(self, on_change: OnChange, on_gap: OnGap) -> None:
        raise NotImplementedError


class PostgresFeed(ChangeFeed):
    propagation_s = 0.2  # NOTIFY reaches a waiting LISTEN connection within milliseconds

    def __init__(self, sqlalchemy_url: str) -> None:
        super().__init__()
        self.libpq_url = make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)

    def publish_in_transaction(self, session: Session, device_pks: set[int], lines: bool) -> None:
        conn = session.connection()
        for payload in encode(self.source, device_pks, lines):
            conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})

    def _run(self, on_change: OnChange, on_gap: OnGap) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                # keepalives: a peer that vanished without closing the socket is noticed within ~10 s
                with psycopg.connect(self.libpq_url, autocommit=True, connect_timeout=5, keepalives=1,
                                     keepalives_idle=5, keepalives_interval=2, keepalives_count=2) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._listening()  # every commit from now on is heard
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            self._deliver(n.payload, on_change)
            except Exception as e:  # noqa: BLE001 - any failure: stop trusting, reconnect
                if self._stop.is_set():
                    return
                log.warning("poll cache change feed lost (%s); entries fall back to their time-to-live", e)
            self._gap()
            on_gap()
            self._stop.wait(1.0)


class FileFeed(ChangeFeed):
    """SQLite: ``<database file>-changes``, appended after each commit, tailed by every process."""

    propagation_s = 4 * TAIL_INTERVAL_S

    def __init__(self, database_file: Path) -> None:
        super().__init__()
        self.path = Path(f"{database_file}-changes")

    def publish_committed(self, device_pks: set[int], lines: bool) -> None:
        data = "".join(p + "\n" for p in encode(self.source, device_pks, lines)).encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)  # one write with O_APPEND: lines of concurrent writers do not interleave
                if os.fstat(fd).st_size > MAX_FILE_BYTES:
                    os.ftruncate(fd, 0)  # every reader sees the file shrink and drops everything
            finally:
                os.close(fd)
        except OSError as e:  # readers in other processes fall back to the time-to-live after a gap
            log.warning("could not record a poll cache change in %s: %s", self.path, e)

    def _run(self, on_change: OnChange, on_gap: OnGap) -> None:
        offset: int | None = None
        partial = b""
        while not self._stop.wait(TAIL_INTERVAL_S):
            try:
                size = self.path.stat().st_size if self.path.exists() else 0
                if offset is None or size < offset:  # start, or emptied: what was in between is unknown
                    if offset is not None:
                        on_gap()
                    offset, partial = size, b""
                    self._listening()
                    continue
                if size == offset:
                    continue
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                offset += len(chunk)
                *complete, partial = (partial + chunk).split(b"\n")
                for line in complete:
                    if line:
                        self._deliver(line.decode(errors="replace"), on_change)
            except OSError as e:
                log.warning("poll cache change file %s unreadable (%s)", self.path, e)
                self._gap()
                offset = None
                on_gap()


class InProcessFeed(ChangeFeed):
    """An in-memory SQLite database: no other process can change it, nothing to hear."""

    def _run(self, on_change: OnChange, on_gap: OnGap) -> None:
        self._listening()


def for_database(sqlalchemy_url: str) -> ChangeFeed:
    """The feed that suits this database URL."""
    url = make_url(sqlalchemy_url)
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            return InProcessFeed()
        return FileFeed(Path(url.database).resolve())
    return PostgresFeed(sqlalchemy_url)
