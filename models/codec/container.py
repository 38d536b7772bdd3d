"""Byte layout of packages and patches.

Package (format 1)::

    b"OTAPKG1\\n" | u32 BE header length | header (canonical JSON) | skeleton | payload 1 | payload 2 | ...

The header lists the tensors in payload order with each payload's length,
so offsets are implied (a tensor that grows does not change every entry
after it, which keeps header deltas small).  The skeleton is the ONNX graph
with its float32 weights removed, stored raw: it is a few kilobytes, and
keeping it raw lets a delta ship it as a zstd patch against the old one.

Patch (format 1)::

    b"OTAPAT1\\n" | u32 BE header length | header (canonical JSON) | sections

Canonical JSON is ``sort_keys``, compact separators, ASCII: the same header
always gives the same bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from models.errors import CorruptPackage

PKG_MAGIC = b"OTAPKG1\n"
PATCH_MAGIC = b"OTAPAT1\n"
FORMAT = 1


def canonical(obj: dict[str, Any]) -> bytes:
    """The one JSON encoding used inside packages and patches."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def frame(magic: bytes, header_bytes: bytes, body: bytes | list[bytes]) -> bytes:
    """magic + length-prefixed header + body."""
    parts = body if isinstance(body, list) else [body]
    return b"".join([magic, struct.pack(">I", len(header_bytes)), header_bytes, *parts])


def unframe(magic: bytes, data: bytes, what: str) -> tuple[bytes, memoryview]:
    """(header bytes, body) of a framed blob.

    Raises:
        CorruptPackage: wrong magic or truncated header.
    """
    if not data.startswith(magic):
        hint = " (an older format-0 package?)" if data[:7] == magic[:6] + b"0" else ""
        raise CorruptPackage(f"not an OTA {what}: the first {len(magic)} bytes are not {magic!r}{hint}")
    start = len(magic) + 4
    if len(data) < start:
        raise CorruptPackage(f"{what} is truncated inside its header length ({len(data)} bytes)")
    (n,) = struct.unpack(">I", data[len(magic) : start])
    if start + n > len(data):
        raise CorruptPackage(f"{what} header claims {n} bytes but only {len(data) - start} remain (truncated?)")
    return bytes(data[start : start + n]), memoryview(data)[start + n :]


def parse_header(raw: bytes, what: str) -> dict[str, Any]:
    """JSON header -> dict, with a clear error."""
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise CorruptPackage(f"{what} header is not JSON: {e}") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptPackage(f"{what} header has format {header.get('format') if isinstance(header, dict) else '?'}, "
                             f"this build reads format {FORMAT}")
    return header


@dataclass
class Parsed:
    """A package split into its parts (views into the original bytes)."""

    header: dict[str, Any]
    header_bytes: bytes
    skeleton: bytes
    payloads: list[memoryview]


def build_package(header_bytes: bytes, skeleton: bytes, payloads: list[bytes]) -> bytes:
    """Concatenate a package's parts in their fixed order."""
    return frame(PKG_MAGIC, header_bytes, [skeleton, *payloads])


def parse_package(data: bytes) -> Parsed:
    """Split a package, checking that the header's lengths account for every byte.

    Raises:
        CorruptPackage: malformed or truncated package.
    """
    raw, body = unframe(PKG_MAGIC, data, "package")
    header = parse_header(raw, "package")
    try:
        sizes = [int(header["skeleton_bytes"])] + [int(t["bytes"]) for t in header["tensors"]]
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptPackage(f"package header lacks section sizes: {e}") from e
    if sum(sizes) != len(body) or min(sizes) < 0:
        raise CorruptPackage(f"package body is {len(body)} bytes but its header accounts for {sum(sizes)} (truncated?)")
    parts, pos = [], 0
    for n in sizes:
        parts.append(body[pos : pos + n])
        pos += n
    return Parsed(header, raw, bytes(parts[0]), parts[1:])
