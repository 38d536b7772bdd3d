"""Byte layout of packages and patches.

Package (format 2)::

    b"OTAPKG2\\n" | u32 BE header length | header (canonical JSON) | zstd(skeleton) | payload 1 | payload 2 | ...

The header lists the tensors in payload order with each payload's length,
so offsets are implied (a tensor that grows does not change every entry
after it, which keeps header deltas small).  The skeleton is the ONNX graph
with its float32 weights and its metadata properties removed (those travel in
the header), zstd-compressed: 15 KB raw, 1.5 KB compressed for SqueezeNet.
The car only ever *decompresses* it: a patch carries a changed skeleton as
the new package's stored bytes (an unchanged one, the common case now that
the version's metadata is in the header, costs nothing), so the rebuilt
package does not depend on the car's zstd version.  The header stays raw so
that a patch can ship it as a zstd patch against the old header (a few
hundred bytes; the car decompresses that too).

Patch (format 2)::

    b"OTAPAT2\\n" | u32 BE header length | header (canonical JSON) | sections

Canonical JSON is ``sort_keys``, compact separators, ASCII: the same header
always gives the same bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import zstandard

from models.errors import CorruptPackage

PKG_MAGIC = b"OTAPKG2\n"
PATCH_MAGIC = b"OTAPAT2\n"
FORMAT = 2
ZSTD_LEVEL = 19
MAX_SECTION = 1 << 28  # a header or graph larger than this is corruption, not a model


def compress(data: bytes) -> bytes:
    """zstd frame of a package section (server side only; the car decompresses)."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)


def decompress(data: bytes | memoryview, what: str) -> bytes:
    """Inverse of :func:`compress`.

    Raises:
        CorruptPackage: the section is not a zstd frame.
    """
    try:
        return zstandard.ZstdDecompressor().decompress(bytes(data), max_output_size=MAX_SECTION)
    except zstandard.ZstdError as e:
        raise CorruptPackage(f"{what} does not decompress: {e}") from e


def older_package(data: bytes) -> bool:
    """Whether ``data`` starts like a package of an earlier format (which this build does not read)."""
    return data[:6] == PKG_MAGIC[:6] and data[7:8] == b"\n" and data[6:7].isdigit() and data[6:7] < PKG_MAGIC[6:7]


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
        other = data[6:7].decode("ascii", "replace") if data[:6] == magic[:6] and data[7:8] == b"\n" else ""
        hint = f" (a format-{other} {what}? this build reads format {FORMAT})" if other else ""
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
    """A package split into its parts (views into the original bytes); ``skeleton_section`` is as stored."""

    header: dict[str, Any]
    header_bytes: bytes
    skeleton: bytes
    payloads: list[memoryview]
    skeleton_section: bytes = b""


def build_package(header_bytes: bytes, skeleton: bytes, payloads: list[bytes]) -> bytes:
    """A package from its header, raw skeleton and payloads (the header's ``skeleton_bytes``
    must be ``len(compress(skeleton))``)."""
    return build_from_sections(header_bytes, compress(skeleton), payloads)


def build_from_sections(header_bytes: bytes, skeleton_section: bytes, payloads: list[bytes]) -> bytes:
    """Concatenate a package's stored parts in their fixed order (what a patch rebuilds)."""
    return frame(PKG_MAGIC, header_bytes, [skeleton_section, *payloads])


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
    skeleton_section = bytes(parts[0])
    return Parsed(header, raw, decompress(skeleton_section, "package graph"), parts[1:], skeleton_section)
