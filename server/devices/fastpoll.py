"""The cached poll answered below FastAPI: an ASGI wrapper that skips routing, dependencies and the response class.

Under load a poll answered from the caches (``pollcache.answer``) costs a
fraction of what FastAPI's routing, dependency solving and validation cost
around it (issue 8: on the 2-core machine they were most of a poll's CPU and
so of its tail latency).  ``poll_fast_path(app, ...)`` looks at
``POST /api/v1/device/poll`` only, and answers it itself only in the one case
the route would answer without touching the database: a JSON body that
validates as ``PollIn``, a bearer token whose device is cached, a cached line,
and ``cached_answer`` (the route's entry to the same answer) returning one.  Everything else (a missing or
unknown token, a malformed body, a cache miss, an offer to sign) is handed to
the app unchanged with the body replayed, so every error and every write keeps
exactly one implementation: ``server/devices/routes.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.db import utcnow
from server.deps import AppContext
from server.devices import pollcache, schemas
from server.devices.decision import DeviceView
from server.devices.pollcache import PollAnswer
from server.rollouts.lineview import LineView
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


def answer_from_cache(ctx: AppContext, authorization: str | None, raw: bytes) -> PollAnswer | None:
    """The poll's answer if the caches alone can give it, else None (the route then answers)."""
    token = bearer(authorization)
    if token is None:
        return None
    device = ctx.pollcache.device(token_digest(token))
    if device is None:
        return None
    try:
        body = schemas.PollIn.model_validate_json(raw)
    except ValidationError:
        return None
    line = ctx.pollcache.line(body.line)
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
        answer = None if more else answer_from_cache(get_ctx(), authorization, raw)
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
