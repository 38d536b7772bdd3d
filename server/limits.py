"""Limits before work: body sizes per route, the publisher's credential, and per-address rate limits.

Issue 15, finding 3: request bodies were read (parsed as JSON, or spooled
to a temporary file as multipart) before any credential was checked, so a
stranger's 400 MB body cost the server over a gigabyte.  ``limit_requests``
is a plain ASGI middleware (not BaseHTTPMiddleware: README, issue 8) that
sits outside everything else but the metrics, so it also guards the cached
poll answered below FastAPI (``server/devices/fastpoll.py``).  Before the
app sees a request it:

1. answers 429 if the client's address has run out of credential failures
   (one dict lookup: the hot path's only cost when nothing is wrong);
2. answers 401 to a publish (multipart upload) without the admin token,
   from the headers alone, so a stranger's upload costs a few KB;
3. answers 413 to a declared ``Content-Length`` over the route's limit
   without reading a byte of the body, and counts the bytes of a chunked
   body as they arrive, answering 413 as soon as they pass the limit.

Every refusal carries ``connection: close``: uvicorn then closes the
socket instead of reading (and discarding) the rest of the body.

The failure limit is a token bucket per client address, per process: with
N workers an address gets up to N times the burst.  (Enrolments have their
own limit, per address and per credential, in the route:
``server/devices/ratelimit.py``.)  A 401 anywhere in the
app (``note_failure``, called by the error handler in ``server/app.py``)
takes a token from its address's failure bucket; an address with an empty
bucket gets 429 with ``Retry-After`` for everything until it refills.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.config import Settings
from server.security import bearer, tokens_equal

ENROLL_PATH = "/api/v1/devices/enroll"
POLL_PATH = "/api/v1/device/poll"
REPORTS_PATH = "/api/v1/device/reports"
PUBLISH_PATH = re.compile(r"/api/v1/lines/.+/versions")  # loose: a decoded %2F in the name still counts
MULTIPART_OVERHEAD = 64 * 1024  # part headers, boundaries and the small form fields around the uploaded model
ADMIN_REQUIRED = ("admin token required: send 'Authorization: Bearer <admin token>' "
                  "(development servers write it to <data dir>/admin-token)")


class TokenBuckets:
    """One token bucket per key (a client address): ``burst`` tokens, refilled at ``rate_per_s``.

    Memory is bounded: past ``max_keys`` addresses, the buckets that have refilled are forgotten (a
    forgotten bucket is a full one), and if that is not enough, all of them.
    """

    def __init__(self, burst: int, rate_per_s: float, max_keys: int = 100_000) -> None:
        self.burst, self.rate_per_s, self.max_keys = float(burst), rate_per_s, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when they were counted)

    def take(self, key: str, now: float) -> tuple[bool, float]:
        """Take a token: (whether there was one, seconds until the bucket holds one again)."""
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate_per_s)
        taken = tokens >= 1.0
        if taken:
            tokens -= 1.0
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._forget_full(now)
        self._buckets[key] = (tokens, now)
        return taken, max(0.0, (1.0 - tokens) / self.rate_per_s)

    def _forget_full(self, now: float) -> None:
        full = [k for k, (tokens, then) in self._buckets.items()
                if tokens + (now - then) * self.rate_per_s >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


class RateLimits:
    """Per-address allowance of credential failures (one per app, per process)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = TokenBuckets(settings.auth_failure_burst, settings.auth_failure_rate_per_s)
        self._blocked: dict[str, float] = {}  # address -> clock time until which it is answered 429
        self._clock = clock

    def blocked_for(self, address: str) -> float:
        """Seconds this address must still wait (0: let it in).  A dict lookup unless it is blocked."""
        until = self._blocked.get(address)
        if until is None:
            return 0.0
        wait = until - self._clock()
        if wait <= 0:
            self._blocked.pop(address, None)
            return 0.0
        return wait

    def note_failure(self, address: str) -> None:
        """Count a refused credential; the address is blocked once its allowance is spent."""
        now = self._clock()
        _, wait = self.failures.take(address, now)
        if wait > 0:
            if len(self._blocked) >= self.failures.max_keys:
                self._blocked = {a: u for a, u in self._blocked.items() if u > now}
            self._blocked[address] = now + wait


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    setting: str  # the environment variable an operator raises, named in the 413


class BodyLimits:
    """The most body bytes each route accepts (built once from the settings: a dict lookup per request)."""

    def __init__(self, settings: Settings) -> None:
        device = BodyLimit(settings.max_device_body_bytes, "OTA_MAX_DEVICE_BODY_BYTES")
        self.exact = {ENROLL_PATH: device, POLL_PATH: device,
                      REPORTS_PATH: BodyLimit(settings.max_reports_body_bytes, "OTA_MAX_REPORTS_BODY_BYTES")}
        self.upload = BodyLimit(settings.max_upload_bytes + MULTIPART_OVERHEAD, "OTA_MAX_UPLOAD_BYTES")
        self.default = BodyLimit(settings.max_body_bytes, "OTA_MAX_BODY_BYTES")
        self.admin_token = settings.admin_token

    def for_route(self, method: str, path: str) -> tuple[BodyLimit, bool]:
        """The route's limit, and whether it is the publish upload (which needs the admin token up front)."""
        limit = self.exact.get(path)
        if limit is not None:
            return limit, False
        if method == "POST" and PUBLISH_PATH.fullmatch(path):
            return self.upload, True
        return self.default, False


class BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once a streamed body passes its limit (the 413 is already sent)."""


def _too_large_detail(limit: BodyLimit) -> str:
    return (f"request body larger than this route's {limit.max_bytes}-byte limit (raise {limit.setting} on the "
            "server if it must be larger); nothing was stored")


async def refuse(send: Send, status: int, error: str, detail: str, retry_after_s: float | None = None) -> None:
    """Answer ``{"error", "detail"}`` with ``connection: close`` (the unread body is never read)."""
    body = json.dumps({"error": error, "detail": detail}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               (b"connection", b"close")]
    if retry_after_s is not None:
        headers.append((b"retry-after", b"%d" % max(1, math.ceil(retry_after_s))))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _declared(scope: Scope) -> tuple[int | None, str | None]:
    """The request's Content-Length (None: not declared) and its Authorization header."""
    length, authorization = None, None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"authorization":
            authorization = value.decode("latin-1")
    return length, authorization


def limit_requests(app: ASGIApp, get_settings: Callable[[], Settings], limits: RateLimits) -> ASGIApp:
    """Wrap ``app`` with the checks in this module's docstring; ``get_settings`` gives the resolved settings."""
    routes: BodyLimits | None = None

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else ""
        wait = limits.blocked_for(address)
        if wait:
            await refuse(send, 429, "rate_limited", f"too many refused credentials from {address}; retry "
                         f"after {math.ceil(wait)} s with a valid token", wait)
            return
        path, method = scope["path"], scope["method"]
        nonlocal routes
        if routes is None:  # the settings are resolved (the admin token set) once the lifespan has started
            routes = BodyLimits(get_settings())
        limit, publish = routes.for_route(method, path)
        length, authorization = _declared(scope)
        if publish and not tokens_equal(bearer(authorization), routes.admin_token):
            limits.note_failure(address)
            await refuse(send, 401, "unauthorized", ADMIN_REQUIRED)
            return
        if length is not None:  # llhttp ends the body at the declared length: nothing to count
            if length > limit.max_bytes:
                await refuse(send, 413, "too_large", _too_large_detail(limit))
            else:
                await app(scope, receive, send)
            return
        await _counted(app, scope, receive, send, limit)

    return guard


async def _counted(app: ASGIApp, scope: Scope, receive: Receive, send: Send, limit: BodyLimit) -> None:
    """Run ``app`` on a body of undeclared length, answering 413 the moment it passes ``limit``."""
    received, started, answered = 0, False, False

    async def counting_receive() -> Message:
        nonlocal received, answered
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit.max_bytes:
                if not started:
                    answered = True
                    await refuse(send, 413, "too_large", _too_large_detail(limit))
                raise BodyTooLarge(_too_large_detail(limit))
        return message

    async def guarded_send(message: Message) -> None:
        nonlocal started
        if answered:  # the app's own answer to the aborted body (a 400 or 500) goes nowhere
            return
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await app(scope, counting_receive, guarded_send)
    except Exception:
        if not answered:
            raise
