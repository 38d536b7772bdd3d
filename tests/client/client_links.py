"""Fake links for agent tests: the outside world between a real agent and a real server.

They wrap httpx's real transport (real sockets, real server) and add what a
cellular link does: flip bits, go offline.  The simulator will do the same
with rate, latency and drop-outs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx


class _FlippingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, at: int) -> None:
        self.inner, self.at, self.pos = inner, at, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            if self.pos <= self.at < self.pos + len(chunk):
                b = bytearray(chunk)
                b[self.at - self.pos] ^= 0x04
                chunk = bytes(b)
            self.pos += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class BadLink(httpx.AsyncBaseTransport):
    """Real HTTP, plus: flip one bit in the next ``flips`` artifact bodies; refuse paths while offline."""

    def __init__(self, flips: int = 0, flip_at: int = 1000) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.flips = flips
        self.flip_at = flip_at
        self.offline_paths: set[str] = set()
        self.artifact_requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if any(request.url.path.endswith(p) for p in self.offline_paths):
            raise httpx.ConnectError("link down (tunnel)", request=request)
        response = await self.inner.handle_async_request(request)
        if "/artifacts/" in request.url.path:
            self.artifact_requests += 1
            if self.flips > 0 and response.status_code in (200, 206):
                self.flips -= 1
                assert isinstance(response.stream, httpx.AsyncByteStream)
                return httpx.Response(response.status_code, headers=response.headers,
                                      stream=_FlippingStream(response.stream, self.flip_at),
                                      request=request, extensions=response.extensions)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
