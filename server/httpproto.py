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

Every place that runs the registry under uvicorn passes ``HTTP_PROTOCOL``
(``ota serve`` and the tests' live server), so what is tested is what runs.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: A request line plus headers larger than this is refused (h11's default limit is 16 KiB; nginx's 32 KiB).
MAX_HEAD_BYTES = 32 * 1024

_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
              b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over ``MAX_HEAD_BYTES`` with a 431."""

    max_head_bytes = MAX_HEAD_BYTES
    _head_bytes = 0  # bytes fed since the current request's head began (or the last message ended)
    _in_body = False  # the head is complete: the bytes now fed are the body, limited elsewhere

    def data_received(self, data: bytes) -> None:
        if self._in_body:
            super().data_received(data)
            return
        self._head_bytes += len(data)
        super().data_received(data)
        if not self._in_body and self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            detail = f"request line and headers larger than {self.max_head_bytes} bytes".encode()
            self.logger.warning("refused a request head over %d bytes from %s", self.max_head_bytes, self.client)
            self.transport.write(_TOO_LARGE % (len(detail), detail))
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_body, self._head_bytes = True, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body, self._head_bytes = False, 0
        super().on_message_complete()


#: What to pass as ``uvicorn.run(http=...)`` / ``uvicorn.Config(http=...)``.
HTTP_PROTOCOL = BoundedHttpToolsProtocol
