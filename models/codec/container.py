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

A package comes from the network, so its header is checked before anything
is allocated from it (:func:`check_budget`): tensor count, ranks and
dimensions must be sane, and the float32 tensors it declares must fit in a
cap (``MAX_DECODED_BYTES`` by default, a keyword of every decoding
function); every zstd frame is refused when its declared content size is
over its limit, before it is inflated.  Decoding then allocates a small
constant multiple of what the header declares (int64 symbols, float32
values), never what a payload's own counts claim.
"""

from __future__ import annotations

import json
import math
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
#: Default cap on the float32 tensors one package may declare (SqueezeNet: 5 MB); callers may pass another.
MAX_DECODED_BYTES = 256 << 20
MAX_TENSORS = 100_000
MAX_RANK = 8
MAX_DIM = 1 << 31


def compress(data: bytes) -> bytes:
    """zstd frame of a package section (server side only; the car decompresses)."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)


def decompress(data: bytes | memoryview, what: str, *, limit: int = MAX_SECTION,
               dict_data: zstandard.ZstdCompressionDict | None = None) -> bytes:
    """Inverse of :func:`compress`, refusing a frame that declares (or inflates to) more than ``limit`` bytes.

    Raises:
        CorruptPackage: the section is not a zstd frame, or is larger than ``limit`` once inflated.
    """
    raw = bytes(data)
    try:
        declared = zstandard.frame_content_size(raw)
        if declared > limit:
            raise CorruptPackage(f"{what} declares {declared} bytes once decompressed, more than the "
                                 f"{limit} allowed; refused before inflating it")
        return zstandard.ZstdDecompressor(dict_data=dict_data).decompress(raw, max_output_size=limit)
    except zstandard.ZstdError as e:
        raise CorruptPackage(f"{what} does not decompress (or exceeds {limit} bytes): {e}") from e


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


def _dims(shape: Any, name: str, what: str) -> list[int]:
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise CorruptPackage(f"{what} tensor {name}: shape {str(shape)[:60]} is not a list of at most {MAX_RANK} dims")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise CorruptPackage(f"{what} tensor {name}: shape {str(shape)[:60]} has a dimension that is not a "
                             "non-negative integer")
    if any(d > MAX_DIM for d in shape):
        raise CorruptPackage(f"{what} tensor {name}: shape {str(shape)[:60]} has a dimension over {MAX_DIM}, "
                             "more than any model has")
    return shape


def check_budget(header: dict[str, Any], what: str, max_decoded_bytes: int = MAX_DECODED_BYTES) -> int:
    """Check a header's tensor table before anything is allocated from it; return the declared float32 bytes.

    Python integers, so a 10^12-element claim is a number to compare, not an allocation.

    Raises:
        CorruptPackage: the table is not a list of at most ``MAX_TENSORS`` entries with sane shapes and
            byte counts, the declared tensors total more than ``max_decoded_bytes``, or the declared
            ``model_bytes`` does.
    """
    entries = header.get("tensors")
    if not isinstance(entries, list) or len(entries) > MAX_TENSORS:
        raise CorruptPackage(f"{what} header's tensor table is not a list of at most {MAX_TENSORS} entries")
    total, biggest = 0, ("", 0)
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or type(e.get("bytes")) is not int \
                or e["bytes"] < 0:
            raise CorruptPackage(f"{what} header has a malformed tensor entry {str(e)[:80]!r}")
        n = 4 * math.prod(_dims(e.get("shape"), e["name"], what))
        total += n
        biggest = max(biggest, (e["name"], n), key=lambda x: x[1])
        if total > max_decoded_bytes:
            raise CorruptPackage(f"{what} declares at least {total} bytes of decoded weights (tensor "
                                 f"{biggest[0]!r}: {biggest[1]} bytes), more than the cap of {max_decoded_bytes}; "
                                 "refused before decoding (raise the cap if such a model is expected)")
    model_bytes = header.get("model_bytes", 0)
    if type(model_bytes) is not int or not 0 <= model_bytes <= max_decoded_bytes + MAX_SECTION:
        raise CorruptPackage(f"{what} declares a decoded model of {str(model_bytes)[:30]} bytes, outside "
                             f"[0, {max_decoded_bytes + MAX_SECTION}]")
    return total


def parse_package(data: bytes, *, max_decoded_bytes: int = MAX_DECODED_BYTES) -> Parsed:
    """Split a package, checking that the header's lengths account for every byte and that what it
    declares fits in ``max_decoded_bytes`` (:func:`check_budget`) before decompressing anything.

    Raises:
        CorruptPackage: malformed, truncated or over-budget package.
    """
    raw, body = unframe(PKG_MAGIC, data, "package")
    header = parse_header(raw, "package")
    check_budget(header, "package", max_decoded_bytes)
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
