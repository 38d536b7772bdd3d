"""The cached poll, and summary-only reports, answered below FastAPI: an ASGI wrapper that skips routing,
dependencies and the response class.

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

A report request that carries only quality summaries (issue 18: every shadowing car sends one every few
seconds) is likewise answered here when the caches vouch for each summary: it is queued for the next group
commit (``summaries.py``) and acknowledged once that committed.  FastAPI's dependency solving and body
validation were two thirds of such a request's cost on the event loop (py-spy, 400 cars).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from anyio import to_thread
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol.errors import MalformedMessage
from protocol.quality import QualitySummary
from server.db import utcnow
from server.deps import AppContext
from server.devices import pollcache, schemas, summaries
from server.devices.decision import DeviceView
from server.devices.pollcache import PollAnswer
from server.rollouts.lineview import LineView
from server.rollouts.lineview import load_line as load_line_view
from server.security import bearer, token_digest

POLL_PATH = "/api/v1/device/poll"
REPORTS_PATH = "/api/v1/device/reports"
MAX_FAST_BODY = 4096  # a poll body is ~250 bytes; anything larger goes the ordinary way
MAX_FAST_REPORTS_BODY = 64 * 1024  # 16 summaries of at most 2 KB each, with room
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


async def cached_device(ctx: AppContext, digest: str) -> DeviceView | None:
    """The device holding this token digest, from the cache or read into it; None if no device holds it."""
    device = ctx.pollcache.device(digest)
    if device is None:  # a miss: read it in a loader thread, without FastAPI around the read
        device = await to_thread.run_sync(load_device, ctx, digest, limiter=ctx.poll_loaders)
    return device


async def cached_line(ctx: AppContext, name: str) -> LineView | None:
    """The line's view, from the cache or read into it; None if there is no such line."""
    line = ctx.pollcache.line(name)
    if line is None:
        line = await to_thread.run_sync(load_line, ctx, name, limiter=ctx.poll_loaders)
    return line


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
    device = await cached_device(ctx, token_digest(token))
    if device is None:
        return None
    line = await cached_line(ctx, body.line)
    return cached_answer(ctx, device, line, body) if line is not None else None


def _headers(scope: Scope) -> tuple[str | None, bytes]:
    authorization, content_type = None, b""
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"content-type":
            content_type = value
    return authorization, content_type


async def answer_summaries(ctx: AppContext, authorization: str | None, raw: bytes) -> bytes | None:
    """A summary-only report request stored through the group commit (``summaries.py``), its answer; None when
    anything needs the route: reports in it, a body the route would refuse (422 there), an unknown token, a
    summary the caches cannot vouch for, or a failed write (nothing was stored: the route tries again)."""
    token = bearer(authorization)
    if token is None:
        return None
    try:
        sent = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(sent, dict) or sent.get("reports", []) != []:
        return None
    quality = sent.get("quality")
    if (not isinstance(quality, list) or not 0 < len(quality) <= schemas.MAX_SUMMARIES
            or not all(isinstance(d, dict) for d in quality)):
        return None
    try:
        parsed = [QualitySummary.from_dict(d) for d in quality]
    except (MalformedMessage, ValueError, TypeError):  # the route answers 422, naming the field
        return None
    device = await cached_device(ctx, token_digest(token))
    if device is None:
        return None
    lines = {name: await cached_line(ctx, name) for name in {s.line for s in parsed}}
    rows = summaries.fast_rows(device, parsed, lines.get)
    if rows is None:
        return None
    try:
        await ctx.summaries.submit(rows)
    except Exception:  # noqa: BLE001 - nothing was stored: the route's own path answers (503 if still down)
        return None
    return b'{"accepted":[],"rejected":[],"quality_accepted":[%s],"quality_rejected":[]}' % (
        b",".join(b"%d" % seq for seq in sorted(r.seq for r in rows)))


#: What the fast path answers, per path: (its answer, the largest body it reads; larger ones go to the app).
Answer = Callable[[AppContext, str | None, bytes], Awaitable[bytes | None]]


async def _poll_content(ctx: AppContext, authorization: str | None, raw: bytes) -> bytes | None:
    answer = await answer_from_cache(ctx, authorization, raw)
    return None if answer is None else answer.content


def poll_fast_path(app: ASGIApp, get_ctx: Callable[[], AppContext], routes: Mapping[str, Any] | None = None
                   ) -> ASGIApp:
    """Wrap ``app``; ``routes[path]`` is set as ``scope["route"]`` on fast answers (what the metrics label by)."""
    handlers: dict[str, tuple[Answer, int]] = {POLL_PATH: (_poll_content, MAX_FAST_BODY),
                                               REPORTS_PATH: (answer_summaries, MAX_FAST_REPORTS_BODY)}

    async def fast(scope: Scope, receive: Receive, send: Send) -> None:
        handler = handlers.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await app(scope, receive, send)
            return
        authorization, content_type = _headers(scope)
        if not content_type.startswith(b"application/json"):
            await app(scope, receive, send)
            return
        answer_with, max_body = handler
        chunks: list[bytes] = []
        size, more = 0, True
        while more and size <= max_body:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        content = None if more else await answer_with(get_ctx(), authorization, raw)
        if content is None:
            await app(scope, _replay(raw, more, receive), send)
            return
        route = (routes or {}).get(scope["path"])
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
