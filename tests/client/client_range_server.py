"""A tiny real HTTP file server with Range/If-Range/ETag, and the link's bad habits on demand.

It stands for "the outside world" in download tests: a CDN or proxy that drops
connections, flips bits, ignores ranges, or sends too much.  Real sockets,
real HTTP; the registry itself is tested against the real server elsewhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    drop_after_bytes: list[int] = field(default_factory=list)  # per request, consumed in order
    flip_bit_at: list[int] = field(default_factory=list)  # absolute offsets, each flipped once
    ignore_range: bool = False
    extra_bytes: int = 0
    status: int | None = None


class RangeServer:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.faults = Faults()
        self.requests: list[dict[str, str | None]] = []
        self.bytes_sent = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner._serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        name = h.path.rsplit("/", 1)[-1]
        rng, if_range = h.headers.get("Range"), h.headers.get("If-Range")
        self.requests.append({"path": h.path, "range": rng, "if_range": if_range})
        f = self.faults
        if f.status is not None or name not in self.blobs:
            body = b'{"error":"not_found","detail":"no such artifact"}'
            h.send_response(f.status or 404)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        data = self.blobs[name]
        etag = f'"{name}"'
        start = 0
        if rng and not f.ignore_range and (if_range is None or if_range == etag):
            start = int(rng.removeprefix("bytes=").split("-")[0])
        body = data[start:] + b"\0" * f.extra_bytes
        for off in sorted(set(f.flip_bit_at)):
            if start <= off < start + len(body):
                b = bytearray(body)
                b[off - start] ^= 0x10
                body = bytes(b)
                f.flip_bit_at.remove(off)
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("ETag", etag)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if f.drop_after_bytes:
            cut = f.drop_after_bytes.pop(0)
            h.wfile.write(body[:cut])
            self.bytes_sent += min(cut, len(body))
            h.close_connection = True
            return
        h.wfile.write(body)
        self.bytes_sent += len(body)
