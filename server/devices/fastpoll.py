"""The cached poll answered below FastAPI: an ASGI wrapper that skips routing, dependencies and the response class.

Under load a poll answered from the caches (``pollcache.answer``) costs a
fraction of what FastAPI's routing, dependency solving and validation cost
around it (issue 8: on the 2-core machine they were most of a poll's CPU and
so of its tail latency).  ``poll_fast_path(app, ...)`` looks at
``POST /api/v1/device/poll`` only, and answers it itself only in the one case
the route would answer without touching the database: a JSON body that
validates as ``PollIn``, a bearer token whose device is cached, a cached line,
and ``pollcache.answer`` returning bytes.  Everything else (a missing or
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
from server.devices.pollcache import PollCache
from server.security import bearer, token_digest

POLL_PATH = "/api/v1/device/poll"
MAX_FAST_BODY = 4096  # a poll body is ~250 bytes; anything larger goes the ordinary way
_JSON_HEADERS = [(b"content-type", b"application/json")]


def answer_from_cache(ctx: AppContext, authorization: str | None, raw: bytes) -> bytes | None:
    """The poll's response body if the caches alone can answer it (noting last-seen and the metric), else None."""
    token = bearer(authorization)
    if token is None:
        return None
    cache: PollCache = ctx.services["pollcache"]
    device = cache.device(token_digest(token))
    if device is None:
        return None
    try:
        body = schemas.PollIn.model_validate_json(raw)
    except ValidationError:
        return None
    line = cache.line(body.line)
    if line is None:
        return None
    now = utcnow()
    content = pollcache.answer(device, line, body, now, ctx.settings, ctx.statuses.get(device.device_id, now),
                               ctx.signer.key_id)
    if content is None:
        return None
    ctx.services["presence"].note(device.pk, now)
    ctx.services["metrics"].polls.labels("no" if content.endswith(b'"offer":null}') else "yes").inc()
    return content


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
        content = None if more else answer_from_cache(get_ctx(), authorization, raw)
        if content is None:
            await app(scope, _replay(raw, more, receive), send)
            return
        if route is not None:
            scope["route"] = route
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(content)), *_JSON_HEADERS]})
        await send({"type": "http.response.body", "body": content})

    return fast


def _replay(raw: bytes, more: bool, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then whatever the client still sends."""
    pending = [{"type": "http.request", "body": raw, "more_body": more}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
