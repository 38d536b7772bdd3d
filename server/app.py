"""``create_app(settings)``: the registry's FastAPI app, its lifespan and its error mapping.

The lifespan resolves secrets, opens the database and refuses to start if
the schema is not at the migrations' head, loads (or creates) the signing
key, builds the blob store and feature singletons, and runs two small
background loops: flushing batched last-seen times, evaluating running
rollouts (so soak times expire without a report arriving; the same tick
computes the fleet gauges of /metrics) and delivering webhooks from their
outbox (server/webhooks/worker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator

from anyio import CapacityLimiter
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DataError

from server import audit
from server.accounting.routes import router as accounting_router
from server.artifacts.routes import router as artifacts_router
from server.audit.routes import router as audit_router
from server.blobs import BlobStore, LocalBlobStore
from server.config import Settings, resolve_secrets
from server.dashboard.app import create_dashboard
from server.db import Database, check_schema, current_revision, head_revision
from server.deps import AppContext, require_admin
from server.devices import changefeed
from server.devices.fastpoll import POLL_LOADERS, POLL_PATH, REPORTS_PATH, poll_fast_path
from server.devices.pollcache import PollCache
from server.devices.presence import LastSeen
from server.devices.ratelimit import RateLimiter
from server.devices.routes import router as devices_router
from server.devices.summaries import SummaryIngest
from server.errors import RegistryError, Unauthorized
from server.keys import keys_stamp, load_keyring
from server.limits import RateLimits, limit_requests
from server.metrics import Metrics
from server.openapi import document_errors
from server.registry.routes import router as registry_router
from server.registry.storage import PackageStorage
from server.releases.routes import router as releases_router
from server.rollouts import service as rollouts
from server.rollouts.gauges import fleet_figures
from server.rollouts.membership import MembershipCache
from server.rollouts.quality import JudgeThrottle
from server.rollouts.routes import router as rollouts_router
from server.status import StatusCache
from server.webhooks import worker as webhook_worker
from server.webhooks.routes import router as webhooks_router

log = logging.getLogger("ota.server")


def build_context(settings: Settings, metrics: Metrics | None = None) -> AppContext:
    """Everything the app needs at run time, as the context's typed fields.

    Raises:
        InsecureConfiguration: production without proper secrets.
        SchemaNotAtHead: the database is not migrated.
    """
    settings = resolve_secrets(settings)
    db = Database(settings.sqlalchemy_url)
    try:
        check_schema(db.engine)
    except Exception:
        db.dispose()
        raise
    if settings.blob_backend == "s3":
        from server.blobs_s3 import S3BlobStore  # boto3 is the optional `s3` extra

        blobs: BlobStore = S3BlobStore.from_settings(settings)
    else:
        blobs = LocalBlobStore(settings.blob_dir)
    keys = load_keyring(settings)
    cache = PollCache(settings.poll_cache_s, max_age_s=settings.poll_cache_max_s,
                      feed=changefeed.for_database(settings.sqlalchemy_url))
    members, judge = MembershipCache(), JudgeThrottle(settings.quality_judge_s)
    return AppContext(settings=settings, db=db, blobs=blobs, signer=keys.signer, keys=keys,
                      statuses=StatusCache(keys.signer, settings.status_ttl_s),
                      storage=PackageStorage(blobs, settings.package_cache_items), presence=LastSeen(),
                      pollcache=cache.attach(db.sessions),  # poll path, issue 8
                      membership=members, quality_judge=judge, summaries=SummaryIngest(db, members, judge.due),
                      metrics=metrics or Metrics(),
                      enroll_limiter=RateLimiter(settings.enroll_rate_per_s, settings.enroll_burst),
                      poll_loaders=CapacityLimiter(POLL_LOADERS))


async def _every(seconds: float, job, what: str, stop: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
    """Run ``job`` in a worker thread every ``seconds`` until ``stop`` is set.

    Stopping by event rather than by cancelling lets a job that is running finish (and return its
    database connection) before the lifespan disposes of the engine.
    """
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        if stop.is_set():
            return
        try:
            await run_in_threadpool(job)
        except Exception:  # noqa: BLE001 - a background job must not die; the next tick retries
            log.exception("background %s failed", what)


def _reload_keys(ctx: AppContext) -> None:
    """Pick up ``ota keys rotate`` without a restart: a changed delegation file swaps the online key in.

    A broken or half-written rotation keeps the key already loaded (and says why in the log); stored offers
    signed by the old key are re-signed on their next poll (``devices/decision.py``: a stored offer another key signed is not resent).
    """
    stamp = keys_stamp(ctx.settings)
    if stamp == ctx.keys.stamp:
        return
    ring = load_keyring(ctx.settings, create=False)
    if ring.signer.key_id != ctx.signer.key_id:
        log.warning("online signing key rotated: delegation v%d, key %s", ring.version, ring.signer.key_id[:12])
        with ctx.db.session_scope() as session:  # issue 21: each worker that swaps the key in says so
            audit.record(session, "server", "keys.rotate", target=f"key:{ring.signer.key_id[:40]}",
                         delegation_version=ring.version, previous_key=ctx.signer.key_id, pid=os.getpid())
    ctx.keys, ctx.signer, ctx.statuses = ring, ring.signer, StatusCache(ring.signer, ctx.settings.status_ttl_s)


def _tick_rollouts(ctx: AppContext) -> None:
    with ctx.db.session_scope() as session:
        rollouts.evaluate_running(session, ctx.membership)
    with ctx.db.read_scope() as session:
        ctx.metrics.set_quality(rollouts.quality_figures(session))
        fleet = fleet_figures(session)
    ctx.metrics.set_fleet(fleet.devices, fleet.updates, fleet.active, fleet.rollouts)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The registry app; nothing is opened until the lifespan starts."""
    settings = settings or Settings()
    metrics = Metrics()
    limits = RateLimits(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = await run_in_threadpool(build_context, settings, metrics)
        app.state.ctx = ctx
        stop_metrics = (metrics.serve_separately(settings.metrics_host, settings.metrics_port)
                        if settings.metrics_port else None)
        # What startup loaded (modules, ORM, codecs) lives as long as the process: move it out of the
        # collector's reach so a full collection under load walks only request garbage (poll tail, issue 8).
        gc.collect()
        gc.freeze()
        switch_before = sys.getswitchinterval()
        sys.setswitchinterval(ctx.settings.gil_switch_interval_s)
        presence = ctx.presence
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_every(ctx.settings.last_seen_flush_s, lambda: presence.flush(ctx.db), "flush",
                                            stop)),
                 asyncio.create_task(_every(ctx.settings.rollout_tick_s, lambda: _tick_rollouts(ctx), "rollouts",
                                            stop)),
                 asyncio.create_task(_every(ctx.settings.keys_reload_s, lambda: _reload_keys(ctx), "key reload",
                                            stop))]
        # Webhooks (issue 21): every process delivers; claims in the database keep them from colliding.
        hooks = webhook_worker.http_client(ctx.settings)
        tasks.append(asyncio.create_task(_every(ctx.settings.webhook_tick_s,
                                                lambda: webhook_worker.deliver_due(ctx.db, ctx.settings, hooks),
                                                "webhook delivery", stop)))
        cache = ctx.pollcache
        if ctx.settings.poll_cache_s > 0:  # keep the poll caches fresh (server/devices/pollcache.py)
            cache.start()
            tasks.append(asyncio.create_task(_every(ctx.settings.poll_cache_s / 2, lambda: cache.refresh(ctx.db),
                                                    "poll cache refresh", stop)))
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ctx.summaries.close()
            await run_in_threadpool(cache.stop)
            await run_in_threadpool(presence.flush, ctx.db)
            hooks.close()
            ctx.db.dispose()
            if stop_metrics is not None:
                stop_metrics()
            sys.setswitchinterval(switch_before)  # (a registry inside another program: its own setting back)

    app = FastAPI(title="OTA model registry", version="1", lifespan=lifespan)

    @app.exception_handler(RegistryError)
    async def _registry_error(request: Request, exc: RegistryError) -> JSONResponse:
        if isinstance(exc, Unauthorized) and request.client is not None:
            limits.note_failure(request.client.host)  # a spent allowance turns into 429s (server/limits.py)
        return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(_request: Request, exc: Exception) -> JSONResponse:
        # A number in the path or query larger than the database column (SQLite raises OverflowError,
        # PostgreSQL DataError): the caller's mistake, not the server's.
        return JSONResponse({"error": "bad_request", "detail": "a number in the request is outside the range the "
                             "registry stores (ids and versions are 32-bit)"}, status_code=400)

    @app.exception_handler(OSError)
    async def _disk_full(_request: Request, exc: OSError) -> JSONResponse:
        # A full data disk is the operator's to fix, and must say so instead of a bare 500.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise exc
        log.error("disk full: %s", exc)
        return JSONResponse({"error": "insufficient_storage", "detail": f"the registry's disk is full ({exc.strerror}); "
                             "free space under the data directory (or grow the volume) and retry; the request was "
                             "not applied"}, status_code=507)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        detail = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str})
        return JSONResponse({"error": "validation_error", "detail": detail, "errors": errors}, status_code=422)

    for router in (registry_router, artifacts_router, devices_router, rollouts_router, releases_router,
                   accounting_router, audit_router, webhooks_router):
        app.include_router(router)
    app.mount("/dashboard", create_dashboard(lambda: app.state.ctx))  # issue 7: server-rendered pages
    # Middleware, innermost first: cached polls and summary-only reports answered below FastAPI's routing
    # (issues 8 and 18); the limits before
    # work around them, so an oversized or unauthenticated poll is refused before the fast path reads it
    # (issue 15); the metrics around everything, fast answers and refusals included.
    fast_routes = {path: next(r for r in devices_router.routes if getattr(r, "path", None) == path)
                   for path in (POLL_PATH, REPORTS_PATH)}
    app.add_middleware(poll_fast_path, get_ctx=lambda: app.state.ctx, routes=fast_routes)  # type: ignore[arg-type]
    app.add_middleware(limit_requests, get_settings=lambda: app.state.ctx.settings,  # type: ignore[arg-type]
                       limits=limits)
    app.add_middleware(metrics.asgi)  # type: ignore[arg-type]  # a middleware factory: app -> app
    document_errors(app)  # 422 bodies in /openapi.json are the protocol's error shape

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request) -> JSONResponse:
        ctx: AppContext = request.app.state.ctx
        try:
            with ctx.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            current = current_revision(ctx.db.engine)
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            return JSONResponse({"error": "unavailable", "detail": f"database unreachable: {e}"}, status_code=503)
        if current != head_revision():
            return JSONResponse({"error": "unavailable", "detail": f"schema at {current}, need {head_revision()}"},
                                status_code=503)
        return JSONResponse({"status": "ready", "schema": current})

    # Public only in development (or OTA_METRICS_PUBLIC=true): fleet size and activity are not for strangers.
    @app.get("/metrics", dependencies=[] if settings.metrics_are_public else [Depends(require_admin)])
    def metrics_endpoint():  # type: ignore[no-untyped-def]
        return metrics.render()

    return app
