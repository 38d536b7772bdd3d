"""The cached poll answered below FastAPI: an ASGI wrapper that skips routing, dependencies and the response class.

Under load a poll answered from the caches (``pollcache.answer``) costs a
fraction of what FastAPI's routing, dependency solving and validation cost
around it (issue 8: on the 2-core machine they were most of a poll's CPU and
so of its tail latency).  ``poll_fast_path(app, ...)`` looks at
``POST /api/v1/device/poll`` only, and answers it itself only in the one case
the route would answer without touching the database: a JSON body that
validates as ``PollIn``, a bearer token whose device is cached (or read here on a
miss: a restarted server's first minute is all misses, and FastAPI around each
one tripled its cost), a line likewise, and ``cached_answer`` (the route's entry
to the same answer) returning one.  Everything else (a missing or unknown token,
a malformed body, an offer to sign) is handed to the app unchanged with the body
replayed, so every error and every write keeps exactly one implementation:
``server/devices/routes.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anyio import to_thread
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.db import utcnow
from server.deps import AppContext
from server.devices import pollcache, schemas
from server.devices.decision import DeviceView
from server.devices.pollcache import PollAnswer
from server.rollouts.lineview import LineView
from server.rollouts.lineview import load_line as load_line_view
from server.security import bearer, token_digest

POLL_PATH = "/api/v1/device/poll"
MAX_FAST_BODY = 4096  # a poll body is ~250 bytes; anything larger goes the ordinary way
POLL_LOADERS = 4  # cache misses read in at most this many threads: more only compete for the GIL and connections
_JSON_HEADERS = [(b"content-type", b"application/json")]


def cached_answer(ctx: AppContext, device: DeviceView, line: LineView, body: schemas.PollIn) -> PollAnswer | None:
    """The one entry to the cached answer (this middleware and the route): the answer, with last-seen and the
    poll metric noted, when the decision on the cached views needs no write; else None."""
    now = utcnow()
    answer = pollcache.answer(device, line, body, now, ctx.pollcache.policy(ctx.settings, ctx.signer.key_id),
                              ctx.statuses.get(device.device_id, now))
    if answer is not None:
        ctx.presence.note(device.pk, now)
        count_poll(ctx, answer)
    return answer


def count_poll(ctx: AppContext, answer: PollAnswer) -> None:
    ctx.metrics.polls.labels("yes" if answer.offered else "no").inc()


def load_device(ctx: AppContext, digest: str) -> DeviceView | None:
    """A cache miss: read the device holding this token digest and keep it (in a worker thread)."""
    cache = ctx.pollcache
    ctx.metrics.poll_cache_loads.labels("device").inc()
    epochs = cache.epochs()  # before reading: a commit racing the read keeps the result out of the cache
    with ctx.db.read_scope() as session:
        device = pollcache.load_device(session, digest)
    cache.store(epochs, digest, device, None)
    return device


def load_line(ctx: AppContext, name: str) -> LineView | None:
    """A cache miss: read the line's view and keep it (in a worker thread)."""
    cache = ctx.pollcache
    ctx.metrics.poll_cache_loads.labels("line").inc()
    epochs = cache.epochs()
    with ctx.db.read_scope() as session:
        view = load_line_view(session, name)
    cache.store(epochs, "", None, view)
    return view


async def answer_from_cache(ctx: AppContext, authorization: str | None, raw: bytes) -> PollAnswer | None:
    """The poll's answer if the caches (filled on a miss, as the route would) can give it, else None (the route
    then answers: an unknown token, a malformed body, a write to make)."""
    token = bearer(authorization)
    if token is None:
        return None
    try:
        body = schemas.PollIn.model_validate_json(raw)
    except ValidationError:
        return None
    digest = token_digest(token)
    device = ctx.pollcache.device(digest)
    if device is None:  # a cold start: read it here, without FastAPI's routing and validation around the read
        device = await to_thread.run_sync(load_device, ctx, digest, limiter=ctx.poll_loaders)
        if device is None:
            return None
    line = ctx.pollcache.line(body.line)
    if line is None:
        line = await to_thread.run_sync(load_line, ctx, body.line, limiter=ctx.poll_loaders)
    return cached_answer(ctx, device, line, body) if line is not None else None


def _headers(scope: Scope) -> tuple[str | None, bytes]:
    authorization, content_type = None, b""
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-type":
            content_type = value
    return authorization, content_type


def poll_fast_path(app: ASGIApp, get_ctx: Callable[[], AppContext], route: Any = None) -> ASGIApp:
    """Wrap ``app``; ``route`` is set as ``scope["route"]`` on fast answers (what the metrics label by)."""

    async def fast(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != POLL_PATH or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        authorization, content_type = _headers(scope)
        if not content_type.startswith(b"application/json"):
            await app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more and size <= MAX_FAST_BODY:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        answer = None if more else await answer_from_cache(get_ctx(), authorization, raw)
        if answer is None:
            await app(scope, _replay(raw, more, receive), send)
            return
        if route is not None:
            scope["route"] = route
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(answer.content)), *_JSON_HEADERS]})
        await send({"type": "http.response.body", "body": answer.content})

    return fast


def _replay(raw: bytes, more: bool, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then whatever the client still sends."""
    pending = [{"type": "http.request", "body": raw, "more_body": more}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
