"""Patch and decode model packages in a child process, so the camera thread never waits for the GIL.

Why a process: ``codec.patch`` and ``codec.unpack`` are Python- and
numpy-heavy and hold the GIL for most of their 20-60 ms.  An inference thread
returning from ONNX Runtime must re-take the GIL, and while a decode runs in a
worker thread of the same process it waits up to the switch interval (5 ms)
each time: that was the whole p99 spike during swaps.  A child process has its
own GIL and, at a lower priority, yields the CPU to the camera as well.

Both operations are pure (bytes in, bytes out), so the child needs no state:
the agent still verifies every hash it gets back, and everything that touches
the live session (load, smoke test, swap) stays in the agent process.

Pieces:

- ``Decoder``          what the agent needs: ``start``, ``patch``, ``unpack``.
- ``InProcessDecoder`` the plain calls (``AgentConfig.decode_in_subprocess=False``).
- ``DecodeWorker``     one child process, started on demand, reused while busy,
                       gone after ``idle_s`` without work (its memory with it).
- ``shared_worker``    the one ``DecodeWorker`` of this process: a simulator
                       running thousands of agents must not start thousands of children.
- ``main``             the child's loop (``python -m client.decode_worker``), reading requests on stdin.

Wire format, both directions on the child's stdin/stdout: a request is
``op`` (1 byte), ``n`` (u32), ``n`` lengths (u64) then the payloads; a reply is a
status byte, a u64 length and the payload (the result, or a JSON error
``{"type", "message"}``).  A child exits on end of input, so when the agent
dies (even by SIGKILL) its child follows as soon as it next reads or writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO, Protocol

from client.children import ONE_BLAS_THREAD, child_env, module_command
from models import errors as model_errors

log = logging.getLogger("client.decode_worker")

_OPS = {"patch": 1, "unpack": 2}
_OK, _ERR = 0, 1
_U32, _U64 = struct.Struct(">I"), struct.Struct(">Q")
#: What the agent is told when the child dies on an input (or cannot say why): the op's own error class.
_OP_ERROR: dict[str, type[model_errors.ModelError]] = {
    "patch": model_errors.DeltaError,
    "unpack": model_errors.CorruptPackage,
}


class Decoder(Protocol):
    """How the agent patches and decodes packages; both calls block (run them in a worker thread)."""

    @property
    def running(self) -> bool:
        """True if a call now would not first have to start something (``start`` would do nothing)."""
        ...

    def start(self) -> None:
        """Get ready ahead of the first call (for example while the artifact downloads)."""

    def patch(self, base_package: bytes, delta: bytes) -> bytes:
        """``codec.patch``: the new package; raises ``DeltaError`` / ``BaseMismatch``."""
        ...

    def unpack(self, package: bytes) -> bytes:
        """``codec.unpack``: the ONNX model bytes; raises ``CorruptPackage``."""
        ...


class InProcessDecoder:
    """The codec called directly, in the calling thread (holds the GIL while it works)."""

    @property
    def running(self) -> bool:
        return True

    def start(self) -> None:
        return None

    def patch(self, base_package: bytes, delta: bytes) -> bytes:
        from models import codec

        return codec.patch(base_package, delta)

    def unpack(self, package: bytes) -> bytes:
        from models import codec

        return codec.unpack(package)


class DecodeWorker:
    """A child Python process that runs ``codec.patch`` / ``codec.unpack``; thread-safe, one call at a time.

    The child is started by ``start`` (or the first call), lowers its own
    priority by ``nice``, and exits after ``idle_s`` seconds without a request;
    the next call starts a fresh one.  If the child cannot be started at all the
    worker says so once in the log and decodes in process, so an update never
    fails for want of a process.
    """

    def __init__(self, *, idle_s: float = 30.0, nice: int = 10) -> None:
        if idle_s <= 0:
            raise ValueError(f"decode worker idle_s must be > 0, got {idle_s}")
        self.idle_s = idle_s
        self.nice = nice
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._fallback: InProcessDecoder | None = None
        #: Children started so far (a cold start costs ~0.5 s of CPU for the imports, off the agent's core).
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The running child's process id (for RSS accounting), or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True if the child is up (or the worker decodes in process): ``start`` would do nothing."""
        return self._fallback is not None or self.pid is not None

    def start(self) -> None:
        """Start the child now if none runs, so its imports overlap the download."""
        with self._lock:
            self._ensure()

    def patch(self, base_package: bytes, delta: bytes) -> bytes:
        """Apply ``delta`` to ``base_package`` in the child.

        Raises:
            BaseMismatch: the delta was made for another base.
            DeltaError: the delta is corrupt, or the child died on it twice.
        """
        return self._call("patch", base_package, delta)

    def unpack(self, package: bytes) -> bytes:
        """Decode ``package`` to ONNX bytes in the child.

        Raises:
            CorruptPackage: the package does not decode, or the child died on it twice.
        """
        return self._call("unpack", package)

    def close(self) -> None:
        """End the child now (it would also leave by itself after ``idle_s``)."""
        with self._lock:
            self._stop()

    # -- parent side --------------------------------------------------------

    def _ensure(self) -> subprocess.Popen[bytes] | None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        self._stop()
        if self._fallback is not None:
            return None
        try:
            self._proc = subprocess.Popen(
                module_command("client.decode_worker", "--idle-s", repr(self.idle_s), "--nice", str(self.nice)),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(ONE_BLAS_THREAD))
        except OSError as e:
            log.warning("cannot start the decode worker process (%s); decoding in the agent process", e)
            self._fallback = InProcessDecoder()
            return None
        self.starts += 1
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass  # a pipe the child already closed
        try:
            proc.wait(timeout=5)  # it exits on end of input
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _call(self, op: str, *payloads: bytes) -> bytes:
        with self._lock:
            for attempt in (1, 2):
                proc = self._ensure()
                if proc is None:
                    return getattr(self._fallback, op)(*payloads)
                try:
                    _send(proc.stdin, _OPS[op], payloads)  # type: ignore[arg-type]
                    status, body = _receive(proc.stdout)  # type: ignore[arg-type]
                except (OSError, EOFError) as e:
                    # It left: idle timeout just as we wrote, killed from outside, or crashed on this input.
                    code = proc.poll()
                    self._stop()
                    if attempt == 2:
                        raise _OP_ERROR[op](
                            f"the decode worker process died twice on this input ({e}; exit {code}); "
                            "treating the bytes as damaged"
                        ) from e
                    log.info("decode worker gone (%s, exit %s); starting a new one", e, code)
                    continue
                if status == _OK:
                    return body
                raise _error(op, body)
        raise AssertionError("unreachable")


def _send(stream: BinaryIO, op: int, payloads: tuple[bytes, ...]) -> None:
    head = bytes([op]) + _U32.pack(len(payloads)) + b"".join(_U64.pack(len(p)) for p in payloads)
    stream.write(head)
    for p in payloads:
        stream.write(p)  # large writes go straight to the pipe, the GIL released for each
    stream.flush()


def _receive(stream: BinaryIO) -> tuple[int, bytes]:
    head = _read_exact(stream, 1 + _U64.size)
    n = _U64.unpack(head[1:])[0]
    return head[0], _read_exact(stream, n)


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n) if n else b""
    if len(data) != n:
        raise EOFError(f"pipe closed after {len(data)} of {n} bytes")
    return data


def _error(op: str, body: bytes) -> model_errors.ModelError:
    """The child's error as the same ``models.errors`` class; anything else as the op's error class."""
    try:
        info = json.loads(body)
        name, message = str(info["type"]), str(info["message"])
    except (ValueError, KeyError, TypeError):
        return _OP_ERROR[op](f"the decode worker sent an unreadable error: {body[:200]!r}")
    cls = getattr(model_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, model_errors.ModelError):
        return cls(message)
    return _OP_ERROR[op](f"{name}: {message}")


_shared: DecodeWorker | None = None
_shared_lock = threading.Lock()


def shared_worker(*, idle_s: float = 30.0, nice: int = 10) -> DecodeWorker:
    """The process's one decode worker (created on first use; later arguments are ignored)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DecodeWorker(idle_s=idle_s, nice=nice)
        return _shared


# -- child side ---------------------------------------------------------------

def main(idle_s: float = 30.0, nice: int = 10) -> int:
    """The child: answer requests from stdin until end of input or ``idle_s`` without one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the agent; we leave when it closes our pipe
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print from a library must not corrupt the replies
    inp = os.fdopen(os.dup(0), "rb")  # buffered: read(n) returns n bytes or stops at end of input
    if nice:
        try:
            os.nice(nice)
        except OSError:
            pass  # not allowed here: run at the agent's priority
    from models import codec  # ~0.5 s of imports, paid once per child

    ops: dict[int, Callable[..., bytes]] = {_OPS["patch"]: codec.patch, _OPS["unpack"]: codec.unpack}
    try:
        while True:
            ready, _, _ = select.select([inp], [], [], idle_s)
            if not ready:
                return 0  # idle: give the memory back; the agent starts a new child when it needs one
            head = inp.read(1 + _U32.size)
            if not head:
                return 0  # the agent closed the pipe or died
            if len(head) != 1 + _U32.size or head[0] not in ops:
                return 2
            lengths = [_U64.unpack(_read_exact(inp, _U64.size))[0] for _ in range(_U32.unpack(head[1:])[0])]
            args = [_read_exact(inp, n) for n in lengths]
            try:
                result, status = ops[head[0]](*args), _OK
            except Exception as e:  # sent back as data; the agent decides
                result, status = json.dumps({"type": type(e).__name__, "message": str(e)}).encode(), _ERR
            out.write(bytes([status]) + _U64.pack(len(result)))
            out.write(result)
            out.flush()
    except (BrokenPipeError, EOFError):
        return 0  # the agent went away mid-request


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="client.decode_worker", description="the car's decode worker (started by the agent)")
    p.add_argument("--idle-s", type=float, default=30.0, help="leave after this long without a request")
    p.add_argument("--nice", type=int, default=10, help="niceness to add (the camera keeps the CPU)")
    args = p.parse_args(argv)
    return main(args.idle_s, args.nice)


__all__ = ["DecodeWorker", "Decoder", "InProcessDecoder", "shared_worker"]

if __name__ == "__main__":
    sys.exit(_cli())
