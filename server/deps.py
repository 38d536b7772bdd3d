"""Request-scoped wiring: the app context, the one-transaction session, admin auth.

``AppContext`` is built once by the lifespan in ``app.py`` and hung on
``app.state``; routes reach it (and a session whose transaction commits when
the handler returns) through these dependencies.

``DbSession`` holds its transaction across FastAPI's thread hops (the sync
endpoint, its response validation, the commit), so it first takes a write
slot on the event loop (``Database.writers``, see ``server/db.py``): fine for
the operator's endpoints.  Device-facing writes that come in bursts
(enrolment, reports, polls that sign) instead run their whole transaction in
one thread with ``Database.run_write``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.concurrency import contextmanager_in_threadpool
from sqlalchemy.orm import Session

from server.blobs import BlobStore
from server.config import Settings
from server.db import Database
from server.errors import Unauthorized
from server.keys import KeyRing
from server.security import Signer, bearer, tokens_equal
from server.status import StatusCache


@dataclass
class AppContext:
    settings: Settings
    db: Database
    blobs: BlobStore
    signer: Signer  # the online key (keys.signer)
    keys: KeyRing
    statuses: StatusCache  # signed "no offer" answers, one per device
    services: dict[str, Any] = field(default_factory=dict)  # feature singletons (storage, caches)


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


async def get_session(ctx: Annotated[AppContext, Depends(get_ctx)]) -> AsyncIterator[Session]:
    """One transaction per request: commit on success, roll back on error.

    The write slot is awaited on the event loop before the session exists, and held until the commit: a
    request queued behind a writer then holds no worker thread, so the writer always finds one for its
    response validation and commit (on SQLite, 40 threads blocked in BEGIN IMMEDIATE stalled the burst).
    """
    async with ctx.db.writers(), contextmanager_in_threadpool(ctx.db.session_scope()) as session:
        yield session


def require_admin(ctx: Annotated[AppContext, Depends(get_ctx)],
                  authorization: Annotated[str | None, Header()] = None) -> str:
    """Raises Unauthorized unless the request carries the admin token."""
    if not tokens_equal(bearer(authorization), ctx.settings.admin_token):
        raise Unauthorized("admin token required: send 'Authorization: Bearer <admin token>' "
                           "(development servers write it to <data dir>/admin-token)")
    return "admin"


Ctx = Annotated[AppContext, Depends(get_ctx)]
# scope="function": commit before the response is sent, so a client that acts on the answer
# (downloads what a poll offered) always sees the committed rows.
DbSession = Annotated[Session, Depends(get_session, scope="function")]
Admin = Annotated[str, Depends(require_admin)]
