"""The HTTP/1.1 protocol the registry runs under uvicorn: httptools, with a cap on a request's head.

Why httptools: on the 2-core machine a cached poll spent about 40% of the
server's CPU in h11, uvicorn's pure-Python parser (py-spy, bench/load.py's
saturation run); with httptools (llhttp, in C) the same run carried 5,197
polls/s instead of 2,881 (issue 8).

Why a subclass: h11 refuses a request whose head (request line and headers)
outgrows 16 KiB, uvicorn's httptools protocol has no such limit, and llhttp
buffers a header's value however long it grows, so one client could make a
worker hold any amount of memory.  ``BoundedHttpToolsProtocol`` counts the
bytes fed to the parser while a request's head is incomplete and answers
``431 Request Header Fields Too Large`` (and closes) once they pass
``MAX_HEAD_BYTES``: a worker holds at most that plus one read per connection.

Slow clients (issue 15): uvicorn closes an idle kept-alive connection, but
not one that trickles a byte of its head or body now and then, so a few
hundred such clients held every connection slot (slowloris).  The protocol
also gives a request's head ``head_timeout_s`` from the connection's (or
the request's) first byte, and its body ``body_timeout_s`` from the end of
the head; past either the connection is closed (a head still incomplete is
answered 408 first).

Every place that runs the registry under uvicorn passes ``HTTP_PROTOCOL``
(the tests' live server) or ``http_protocol(settings)`` (``ota serve``), so
what is tested is what runs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.config import Settings

#: A request line plus headers larger than this is refused (h11's default limit is 16 KiB; nginx's 32 KiB).
MAX_HEAD_BYTES = 32 * 1024

_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
              b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over ``MAX_HEAD_BYTES`` with a 431 and closing
    connections whose head or body arrive too slowly."""

    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = 10.0
    body_timeout_s = 120.0
    _head_bytes = 0  # bytes fed since the current request's head began (or the last message ended)
    _in_body = False  # the head is complete: the bytes now fed are the body, limited elsewhere
    _deadline: asyncio.TimerHandle | None = None  # when the head (or body) being received must be complete

    def __init__(self, *args: Any, head_timeout_s: float | None = None, body_timeout_s: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if head_timeout_s is not None:
            self.head_timeout_s = head_timeout_s
        if body_timeout_s is not None:
            self.body_timeout_s = body_timeout_s

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout_s, "head")  # a client that connects and sends nothing is slow too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, part)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, part: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.logger.warning("closed a connection from %s: request %s not received in time", self.client, part)
        if part == "head":
            detail = f"request line and headers not received within {self.head_timeout_s:g} s".encode()
            self.transport.write(_TIMEOUT % (len(detail), detail))
        self.transport.close()  # a body cut short reaches the app as a disconnect

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            super().data_received(data)
            return
        if self._deadline is None:  # the first byte of the next request on a kept-alive connection
            self._arm(self.head_timeout_s, "head")
        self._head_bytes += len(data)
        super().data_received(data)
        if not self._in_body and self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            detail = f"request line and headers larger than {self.max_head_bytes} bytes".encode()
            self.logger.warning("refused a request head over %d bytes from %s", self.max_head_bytes, self.client)
            self.transport.write(_TOO_LARGE % (len(detail), detail))
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_body, self._head_bytes = True, 0
        self._arm(self.body_timeout_s, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body, self._head_bytes = False, 0
        self._disarm()
        super().on_message_complete()


#: What to pass as ``uvicorn.run(http=...)`` / ``uvicorn.Config(http=...)`` (default timeouts).
HTTP_PROTOCOL = BoundedHttpToolsProtocol


def http_protocol(settings: Settings) -> Callable[..., BoundedHttpToolsProtocol]:
    """The protocol with the settings' timeouts, for ``uvicorn.run(http=...)``.

    A ``functools.partial`` of the module-level class rather than a subclass made here: uvicorn pickles its
    config into each worker process, and a partial of an importable class pickles.
    """
    return functools.partial(BoundedHttpToolsProtocol, head_timeout_s=settings.head_timeout_s,
                             body_timeout_s=settings.body_timeout_s)
