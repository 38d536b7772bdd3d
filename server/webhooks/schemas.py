"""Webhook API bodies.  Bad input is refused here (422 naming the field) before anything is stored."""

from __future__ import annotations

import string
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.db import UtcDateTime
from server.webhooks import EVENTS

MAX_URL_CHARS = 2048
_SECRET_CHARS = frozenset(string.printable) - frozenset(string.whitespace)


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host and no credentials or control characters.

    Only http and https: a webhook is set by an admin, but a ``file:``, ``gopher:`` or ``ftp:`` URL must not
    turn the server's delivery worker into a reader of other protocols.  No ``user:password@``: the list
    shows URLs, and the secret belongs in ``secret``.  The host itself is not restricted (receivers are
    often on the operator's own network); see docs/PROTOCOL.md "Webhooks".
    """
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"url is longer than {MAX_URL_CHARS} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError("url contains whitespace or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"url scheme must be http or https, got {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise ValueError("url has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("url must not carry credentials (user:password@); the signature authenticates deliveries")
    try:
        parts.port  # noqa: B018 - raises on a port outside 0..65535
    except ValueError as e:
        raise ValueError(f"url has a bad port: {e}") from None
    return url


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL_CHARS)
    events: list[str] = Field(min_length=1, max_length=len(EVENTS))
    # None: the server makes one and returns it once, in the creation's answer
    secret: str | None = Field(default=None, min_length=16, max_length=256)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_url(v)

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        unknown = [e for e in v if e not in EVENTS]
        if unknown:
            raise ValueError(f"unknown event(s) {', '.join(repr(e[:60]) for e in unknown[:5])}; "
                             f"known: {', '.join(EVENTS)}")
        return sorted(set(v), key=EVENTS.index)

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is not None and not set(v) <= _SECRET_CHARS:
            raise ValueError("secret must be printable ASCII without whitespace")
        return v


class WebhookOut(BaseModel):
    id: int
    url: str
    events: list[str]
    active: bool
    created_by: str
    created_at: UtcDateTime
    secret: str | None = None  # only in the answer to the creation, and only when the server made it


class DeliveryOut(BaseModel):
    id: int
    event: str
    state: str  # pending | delivered | failed
    attempts: int
    created_at: UtcDateTime
    next_attempt_at: UtcDateTime | None  # None once delivered or failed
    last_status_code: int | None
    last_error: str | None
    delivered_at: UtcDateTime | None


__all__ = ["DeliveryOut", "WebhookIn", "WebhookOut", "check_url"]
