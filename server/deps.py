"""Request-scoped wiring: the app context, the one-transaction session, admin auth.

``AppContext`` is built once by the lifespan in ``app.py`` and hung on
``app.state``; routes reach it through ``Ctx`` (features give their own
typed ``Annotated`` dependencies for its fields), and a session through
exactly one of two dependencies: ``ReadSession`` (reads only, no lock) or
``WriteSession`` (one transaction that commits when the handler returns).

``WriteSession`` holds its transaction across FastAPI's thread hops (the sync
endpoint, its response validation, the commit), so it first takes a write
slot on the event loop (``Database.writers``, see ``server/db.py``): fine for
the operator's endpoints.  Device-facing writes that come in bursts
(enrolment, reports, polls that sign) instead run their whole transaction in
one thread with ``Database.run_write``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:  # the features' types, for the fields; the features import this module, not the reverse
    from anyio import CapacityLimiter

    from server.devices.pollcache import PollCache
    from server.devices.presence import LastSeen
    from server.devices.ratelimit import RateLimiter
    from server.devices.summaries import SummaryIngest
    from server.metrics import Metrics
    from server.registry.storage import PackageStorage
    from server.rollouts.membership import MembershipCache
    from server.rollouts.quality import JudgeThrottle


@dataclass
class AppContext:
    """What the app holds for its lifetime, built by the lifespan (``app.build_context``): typed fields, no lookups
    by name.  The online key, its key ring and the signed statuses are swapped together on a key rotation."""

    settings: Settings
    db: Database
    blobs: BlobStore
    signer: Signer  # the online key (keys.signer)
    keys: KeyRing
    statuses: StatusCache  # signed "no offer" answers, one per device
    storage: PackageStorage  # packages rebuilt from their stored deltas, transfer deltas made once
    presence: LastSeen  # last-seen times, flushed in batches
    pollcache: PollCache  # the poll path's per-process views (issue 8)
    membership: MembershipCache  # which devices each rollout's stages hold
    quality_judge: JudgeThrottle  # when a rollout only quality summaries touched is judged on ingest
    summaries: SummaryIngest  # summary-only reports, stored in group commits
    metrics: Metrics
    enroll_limiter: RateLimiter  # enrolments per address and credential
    poll_loaders: CapacityLimiter  # cache misses read in at most this many threads


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


async def write_session(ctx: Annotated[AppContext, Depends(get_ctx)]) -> AsyncIterator[Session]:
    """One write transaction per request: commit on success, roll back on error.

    The write slot is awaited on the event loop before the session exists, and held until the commit: a
    request queued behind a writer then holds no worker thread, so the writer always finds one for its
    response validation and commit (on SQLite, 40 threads blocked in BEGIN IMMEDIATE stalled the burst).
    No codec work may run in it (deltas are made in a read session first: ``PackageStorage.prepare_delta``).
    """
    async with ctx.db.writers(), contextmanager_in_threadpool(ctx.db.session_scope()) as session:
        yield session


def read_session(ctx: Annotated[AppContext, Depends(get_ctx)]) -> Iterator[Session]:
    """A read-only session: takes no write slot and, on SQLite, never the write lock (``Database.read_scope``).

    Whatever it changes is rolled back: use it for pages and lists, never for a handler that writes.
    """
    with ctx.db.read_scope() as session:
        yield session


def require_admin(ctx: Annotated[AppContext, Depends(get_ctx)],
                  authorization: Annotated[str | None, Header()] = None) -> str:
    """Raises Unauthorized unless the request carries the admin token."""
    if not tokens_equal(bearer(authorization), ctx.settings.admin_token):
        raise Unauthorized("admin token required: send 'Authorization: Bearer <admin token>' "
                           "(development servers write it to <data dir>/admin-token)")
    return "admin"


Ctx = Annotated[AppContext, Depends(get_ctx)]
# The two session dependencies.  scope="function": commit before the response is sent, so a client that acts
# on the answer (downloads what a poll offered) always sees the committed rows.
WriteSession = Annotated[Session, Depends(write_session, scope="function")]
ReadSession = Annotated[Session, Depends(read_session, scope="function")]
Admin = Annotated[str, Depends(require_admin)]
