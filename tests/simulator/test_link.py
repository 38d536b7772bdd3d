"""The simulated link trickles, drops and goes offline as its profile says."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from simulator.link import PROFILES, LinkClock, LinkTransport, NetworkProfile

BODY = bytes(range(256)) * 1024  # 256 KiB


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (stdlib API)
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/blob"
    server.shutdown()
    server.server_close()


async def _fetch(url: str, link: LinkTransport) -> bytes:
    async with httpx.AsyncClient(transport=link) as client:
        async with client.stream("GET", url) as response:
            return b"".join([chunk async for chunk in response.aiter_raw()])


def test_reliable_link_delivers_every_byte_at_about_its_bandwidth(origin: str) -> None:
    profile = NetworkProfile("test", bytes_per_s=2_000_000, rtt_s=0.0, drop_per_mb=0.0, offline_per_hour=0, offline_mean_s=0)
    link = LinkTransport(httpx.AsyncHTTPTransport(), profile, random.Random(1), LinkClock(time_scale=1.0))
    start = time.monotonic()
    body = asyncio.run(_fetch(origin, link))
    elapsed = time.monotonic() - start
    assert body == BODY and link.bytes_delivered == len(BODY)
    assert elapsed >= 0.9 * len(BODY) / profile.bytes_per_s  # 256 KiB at 2 MB/s is >= ~0.12 s


def test_lossy_link_drops_mid_body_after_delivering_a_prefix(origin: str) -> None:
    profile = NetworkProfile("lossy", bytes_per_s=1e9, rtt_s=0.0, drop_per_mb=50.0, offline_per_hour=0, offline_mean_s=0)
    link = LinkTransport(httpx.AsyncHTTPTransport(), profile, random.Random(3), LinkClock())
    received = bytearray()

    async def fetch() -> None:
        async with httpx.AsyncClient(transport=link) as client:
            async with client.stream("GET", origin) as response:
                async for chunk in response.aiter_raw():
                    received.extend(chunk)

    with pytest.raises(httpx.ReadError, match="dropped"):
        asyncio.run(fetch())
    assert link.drops == 1
    assert 0 < len(received) < len(BODY) and bytes(received) == BODY[: len(received)]


def test_offline_car_cannot_connect_until_the_spell_ends(origin: str) -> None:
    clock = LinkClock(time_scale=1000.0)
    link = LinkTransport(httpx.AsyncHTTPTransport(), PROFILES["wifi"], random.Random(0), clock)
    link.go_offline(50.0)  # 50 simulated seconds = 50 ms at this scale
    with pytest.raises(httpx.ConnectError):
        asyncio.run(_fetch(origin, link))
    time.sleep(0.08)
    assert asyncio.run(_fetch(origin, link)) == BODY


def test_profiles_are_ordered_by_bandwidth() -> None:
    rates = [PROFILES[name].bytes_per_s for name in ("2g", "3g", "lte", "wifi")]
    assert rates == sorted(rates) and PROFILES["2g"].bytes_per_s == 12_500
    with pytest.raises(ValueError):
        NetworkProfile("bad", 0, 0.1, 0, 0, 0)
