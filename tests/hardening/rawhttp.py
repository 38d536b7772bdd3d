"""A hostile HTTP client on a raw socket, and a peak-RSS probe, for the limits tests (issue 15, finding 3).

httpx cannot play the attacker here: it insists on sending the whole body
before it reads the answer, and a server that answers early and closes
turns into a write error that hides the status.  ``send_body`` writes the
request head, then the body chunk by chunk, and stops as soon as the server
has answered, closed the connection, or stopped reading; it returns the
status (if one arrived) and how many body bytes went out.

``PeakRss`` samples a process's resident set in a thread and also reads the
kernel's high-water mark (``VmHWM``), so a spike between two samples is
still seen.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024


@dataclass
class Outcome:
    status: int | None  # None: the server closed (or reset) without an answer
    body_bytes_sent: int
    response: bytes


def repeated(chunk: bytes, total: int) -> Iterator[bytes]:
    """``total`` bytes as chunks of one reused buffer (the test process keeps no copy)."""
    sent = 0
    while sent < total:
        piece = chunk if total - sent >= len(chunk) else chunk[: total - sent]
        sent += len(piece)
        yield piece


def _answered(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _read_answer(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        # At most 64 KB of the answer: the old server's 422 echoed the whole 400 MB body back.
        while len(data) < 65536 and (b"\r\n\r\n" not in data or len(data) < _answer_length(data)):
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    except (ConnectionResetError, TimeoutError, OSError):
        pass
    return data


def _answer_length(data: bytes) -> int:
    """Head plus declared body length of the answer received so far (its head must be complete)."""
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(head) + 4


def send_body(port: int, method: str, path: str, headers: dict[str, str], body: Iterable[bytes], *,
              length: int | None, prefix: bytes = b"", suffix: bytes = b"", timeout_s: float = 10.0) -> Outcome:
    """Send a request whose body is ``prefix + body + suffix``; chunked unless ``length`` is declared.

    Stops sending at the first sign that the server has answered or given up (readable socket, broken
    pipe, or a write blocked for ``timeout_s``), then reads what answer there is.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: registry\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
        sock.sendall(head.encode("latin-1") + b"\r\n")
        sent, finished = 0, True
        for piece in _pieces(prefix, body, suffix):
            if _answered(sock):
                finished = False
                break
            try:
                sock.sendall(piece if length is not None else b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                finished = False
                break
            sent += len(piece)
        if finished and length is None:
            try:
                sock.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass
        answer = _read_answer(sock, timeout_s)
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
        return Outcome(status, sent, answer)
    finally:
        sock.close()


def _pieces(prefix: bytes, body: Iterable[bytes], suffix: bytes) -> Iterator[bytes]:
    if prefix:
        yield prefix
    yield from body
    if suffix:
        yield suffix


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def spooled_bytes(pid: int, spool_dir: Path) -> int:
    """Bytes in the files under ``spool_dir`` that ``pid`` holds open (unlinked temporary files included)."""
    total, prefix = 0, str(spool_dir)
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd).startswith(prefix):
                total += os.stat(fd).st_size
        except OSError:  # closed between the listing and the look
            continue
    return total


class PeakRss:
    """``with PeakRss(pid) as peak: ...`` then ``peak.growth``: the most the RSS rose above its value at entry.

    With ``spool_dir``, ``peak.spooled`` is the most the process held in open files under that directory.
    """

    def __init__(self, pid: int, every_s: float = 0.01, spool_dir: Path | None = None) -> None:
        self.pid, self.every_s, self.spool_dir = pid, every_s, spool_dir
        self.start = self.peak = self.spooled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kb(self.pid, "VmRSS"))
            if self.spool_dir is not None:
                self.spooled = max(self.spooled, spooled_bytes(self.pid, self.spool_dir))
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRss:
        self.start = self.peak = _status_kb(self.pid, "VmRSS")
        self._hwm_before = _status_kb(self.pid, "VmHWM")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        hwm = _status_kb(self.pid, "VmHWM")
        if hwm > self._hwm_before:  # the process reached a new high inside the block: that is the peak
            self.peak = max(self.peak, hwm)

    @property
    def growth(self) -> int:
        return self.peak - self.start
