"""Engine, sessions, and the schema-at-head check.

``Database`` is built by the app's lifespan (never at import time).  Each
request gets one session and one transaction through ``session_scope``: the
dependency commits when the handler returns and rolls back if it raises;
services and stores only ``flush()``.

Write slots (issue 8, the SQLite enrolment-burst stall): a request's write
transaction first takes one of ``Database.write_slots`` on the event loop (1
on SQLite, which has one writer anyway; 16 on PostgreSQL, below the pool's
20 connections).  Why: FastAPI runs a sync endpoint, then its response
validation, each in a worker thread of anyio's default pool (40 threads),
and commits a ``WriteSession`` only after both.  Without the slots a burst of a
few hundred writers filled all 40 threads with requests blocked in ``BEGIN
IMMEDIATE`` (or on the connection pool) while the lock holder waited for a
thread to validate its response: nothing moved until busy timeouts (30 s)
failed the waiters.  With them, a request waiting to write waits on the
event loop, holding no thread, so a holder always finds a thread to finish.
Paths that write in one thread call use ``Database.run_write``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Concatenate, ParamSpec, TypeVar, overload

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from anyio import CapacityLimiter, to_thread
from pydantic import AfterValidator
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from server.errors import Unavailable

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = ROOT / "migrations"

SQLITE_WRITE_SLOTS = 1  # one writer at a time is all SQLite runs; more would only queue inside BEGIN IMMEDIATE
POSTGRES_WRITE_SLOTS = 16  # below the pool's 10 + 10 connections, leaving some to read_scope readers

_P = ParamSpec("_P")
_T = TypeVar("_T")


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]
"""A datetime field for API schemas: always serialized with its UTC offset."""


def create_private_sqlite_file(url: str) -> None:
    """For a SQLite file URL: create the file 0600 (in a 0700 folder) before SQLite opens it.

    SQLite would create it with 0644 (under the usual umask): the registry's database, readable by every
    user of the host.  SQLite gives its ``-wal`` and ``-shm`` files the database's mode, so those follow.
    An existing file is left alone.  Other databases: nothing to do.
    """
    if not url.startswith("sqlite:///") or url in ("sqlite://", "sqlite:///:memory:"):
        return
    path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    if not path.name or path.name == ":memory:" or path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # another worker created it first, the same way


def make_engine(url: str) -> Engine:
    """An engine tuned per backend.

    SQLite: WAL, busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for every
    transaction.  The driver's own deferred transactions break SAVEPOINT and
    let a transaction that read first fail to upgrade to a write with an
    immediate "database is locked"; taking the write lock up front makes
    transactions simply queue for each other (busy timeout 30 s).
    """
    if url.startswith("sqlite"):
        create_private_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=8)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
            # Read-only sessions (Database.read_scope, the poll path's cache misses) run in the driver's
            # autocommit mode: each SELECT reads a committed snapshot (WAL) without queueing behind writers.
            if not conn.get_execution_options().get("ota_read_only", False):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_to_head(url: str) -> None:
    """Run ``alembic upgrade head`` (what ``ota serve`` does before starting)."""
    create_private_sqlite_file(url)  # alembic may be the first to open a new database
    command.upgrade(alembic_config(url), "head")


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class SchemaNotAtHead(RuntimeError):
    """The database was not migrated to the code's schema."""


def check_schema(engine: Engine) -> None:
    """Raises SchemaNotAtHead with the command to fix it."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaNotAtHead(
            f"database schema is at revision {current or 'none (empty database)'} but this server needs {head}; "
            "run `alembic upgrade head` (or start with `ota serve`, which migrates first)"
        )


class Database:
    """Holds the engine and the session factory for one app instance."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads for the poll caches: on PostgreSQL in autocommit (no BEGIN/ROLLBACK round trips around two
        # selects; the cache's epoch check and change feed cover a commit that lands between them).
        readers = self.engine.execution_options(ota_read_only=True)
        if not url.startswith("sqlite"):
            readers = readers.execution_options(isolation_level="AUTOCOMMIT")
        self._readers = sessionmaker(readers)
        self.write_slots = SQLITE_WRITE_SLOTS if url.startswith("sqlite") else POSTGRES_WRITE_SLOTS
        self._writers: CapacityLimiter | None = None

    def writers(self) -> CapacityLimiter:
        """The write slots (see the module docstring).  Call on the event loop: the limiter is made there."""
        if self._writers is None:
            self._writers = CapacityLimiter(self.write_slots)
        return self._writers

    async def run_write(self, fn: Callable[Concatenate[Session, _P], _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(session, ...)`` in one transaction, begun and committed in one worker thread, once a write slot is free.

        Waiting for the slot happens on the event loop (no thread held), and the transaction never spans a
        thread hop, so its lock is released as soon as ``fn`` returns.

        Raises:
            Unavailable: the database cannot be reached (or stayed locked past the busy timeout).
        """
        return await to_thread.run_sync(functools.partial(self._in_transaction, fn, *args, **kwargs),
                                        limiter=self.writers())

    def _in_transaction(self, fn: Callable[Concatenate[Session, _P], _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        with self.session_scope() as session:
            return fn(session, *args, **kwargs)

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any exception.

        Raises:
            Unavailable: the database cannot be reached.
        """
        session = self.sessions()
        try:
            yield session
            session.commit()
        except OperationalError as e:
            session.rollback()
            raise Unavailable(f"database unavailable: {e.orig}; retry shortly") from e
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def read_scope(self) -> Iterator[Session]:
        """A read-only session (rolled back at the end; on SQLite each statement reads on its own, no lock).

        Raises:
            Unavailable: the database cannot be reached.
        """
        session = self._readers()
        try:
            yield session
        except OperationalError as e:
            raise Unavailable(f"database unavailable: {e.orig}; retry shortly") from e
        finally:
            session.close()  # rolls back

    def dispose(self) -> None:
        self.engine.dispose()
