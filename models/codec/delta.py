"""Deltas between two packages of one model line, in the coded domain.

For every tensor of the new package the encoder picks the smallest of:

- ``same``:  the payload is byte-identical to the old one (0 bytes);
- ``codes``: same kind and code count as the old tensor: the difference of
  codes (``new - old`` for quantized codes, ``new XOR old`` for float32 bit
  patterns), entropy-coded, plus the parameters only if they changed.  A
  version packed with ``--base`` sits on the old codebook, so most
  differences are 0 and cost a fraction of a bit each;
- ``full``:  the new payload as is (for instance a layer that grew a class).

The new header travels as a zstd patch against the old one and, when it
changed, the new skeleton as the new package stores it (zstd-compressed by
the server): the car only decompresses, so its zstd version does not
matter.  The car decodes the old codes, adds the difference, and
re-encodes the payload, which ``entropy.py`` does deterministically; the
SHA-256 of the rebuilt package is then checked against the patch header.
When a plain compressed copy of the new package is smaller, the patch is
that instead (mode ``full``), so a delta never costs more than the package.

Patch header: ``{format, mode, base_sha256, target_sha256, header_bytes,
skeleton: ["same" | "stored", n], ops: [[index, op, n], ...]}`` (ops
lists only the tensors that are not ``same``), then the sections in order:
header, skeleton, and one per listed op.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zstandard

from models.codec import container, entropy, tensors
from models.codec.api import sha256
from models.codec.tensors import Coded
from models.errors import BaseMismatch, CorruptPackage, DeltaError

ZSTD_LEVEL = 19


def _zpatch(old: bytes, new: bytes) -> bytes:
    d = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if old else None
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=d, write_content_size=True).compress(new)


def _zapply(old: bytes, data: bytes | memoryview, what: str, limit: int) -> bytes:
    """Inflate a patch section (against ``old`` as a raw dictionary), refusing more than ``limit`` bytes."""
    d = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT) if old else None
    try:
        return container.decompress(data, f"patch {what} section", limit=limit, dict_data=d)
    except CorruptPackage as e:
        raise DeltaError(str(e)) from e


def _code_delta(old: Coded, new: Coded) -> bytes:
    if np.array_equal(old.params, new.params):
        head = b"\x00"
    else:
        head = b"\x01" + entropy.varint(new.params.size) + new.params.astype("<f4").tobytes()
    if new.kind == "float":
        return head + entropy.encode_u32_planes((old.symbols ^ new.symbols).astype(np.uint32))
    return head + entropy.encode(new.symbols - old.symbols)


def _apply_code_delta(old: Coded, section: memoryview, entry: dict[str, Any]) -> Coded:
    name = entry.get("name", "?")
    r = entropy.Reader(section, f"patch section for {name}")
    if r.byte():
        params = np.frombuffer(r.take(4 * r.varint()), dtype="<f4").astype(np.float32)
    else:
        params = old.params
    rest = r.take(len(r.data) - r.pos)
    try:
        if entry["kind"] == "float":
            symbols = old.symbols ^ entropy.decode_u32_planes(rest, old.symbols.size, f"patch for {name}").astype(np.int64)
        else:
            d = entropy.decode(rest, f"patch for {name}", max_symbols=old.symbols.size)
            if d.size != old.symbols.size:
                raise DeltaError(f"patch for {name} holds {d.size} code differences, the base has {old.symbols.size}")
            symbols = old.symbols + d
    except CorruptPackage as e:
        raise DeltaError(str(e)) from e
    meta = {k: v for k, v in entry.items() if k not in tensors.ENTRY_KEYS}
    coded = Coded(entry["kind"], tuple(entry["shape"]), params, symbols, meta)
    try:
        tensors.check(coded, name)
    except CorruptPackage as e:
        raise DeltaError(str(e)) from e
    return coded


def _tensor_ops(old: container.Parsed, new: container.Parsed) -> tuple[list[list[Any]], list[bytes]]:
    old_index = {e["name"]: i for i, e in enumerate(old.header["tensors"])}
    ops, sections = [], []
    for entry, payload in zip(new.header["tensors"], new.payloads, strict=True):
        i = old_index.get(entry["name"])
        if i is not None and bytes(old.payloads[i]) == bytes(payload):
            ops.append(["same", 0])
            sections.append(b"")
            continue
        best = bytes(payload)
        op = "full"
        old_entry = old.header["tensors"][i] if i is not None else None
        if i is not None and old_entry and old_entry["kind"] == entry["kind"] and old_entry["shape"] == entry["shape"]:
            o = tensors.from_payload(old.payloads[i], old_entry)
            n = tensors.from_payload(payload, entry)
            if o.symbols.size == n.symbols.size:
                candidate = _code_delta(o, n)
                if len(candidate) < len(best):
                    best, op = candidate, "codes"
        ops.append([op, len(best)])
        sections.append(best)
    return ops, sections


def diff(old_package: bytes, new_package: bytes) -> bytes:
    """Encode ``new_package`` as a patch against ``old_package`` (pure; deterministic).

    An ``old_package`` of an earlier format gets a full-mode patch.

    Raises:
        CorruptPackage: either input is not a package.
    """
    new = container.parse_package(new_package)
    head = {
        "format": container.FORMAT,
        "base_sha256": sha256(old_package),
        "target_sha256": sha256(new_package),
    }
    full = container.frame(container.PATCH_MAGIC, container.canonical({**head, "mode": "full"}),
                           _zpatch(b"", new_package))
    if container.older_package(old_package):
        return full  # a car on an older format's package gets the whole new one
    old = container.parse_package(old_package)
    header_section = _zpatch(old.header_bytes, new.header_bytes)
    skeleton_section = b"" if old.skeleton_section == new.skeleton_section else new.skeleton_section
    ops, sections = _tensor_ops(old, new)
    changed = [[i, op, n] for i, (op, n) in enumerate(ops) if op != "same"]
    meta = {**head, "mode": "delta", "header_bytes": len(header_section),
            "skeleton": ["same" if not skeleton_section else "stored", len(skeleton_section)], "ops": changed}
    delta = container.frame(container.PATCH_MAGIC, container.canonical(meta),
                            [header_section, skeleton_section, *sections])
    return delta if len(delta) < len(full) else full


def _rebuild(old: container.Parsed, meta: dict[str, Any], body: memoryview, max_decoded_bytes: int) -> bytes:
    pos = 0

    def take(n: int, what: str) -> memoryview:
        nonlocal pos
        if n < 0 or pos + n > len(body):
            raise DeltaError(f"patch is truncated in its {what} section")
        pos += n
        return body[pos - n : pos]

    header_bytes = _zapply(old.header_bytes, take(int(meta["header_bytes"]), "header"), "header", container.MAX_SECTION)
    header = container.parse_header(header_bytes, "patched package")
    container.check_budget(header, "patched package", max_decoded_bytes)
    sk_op, sk_n = meta["skeleton"]
    if sk_op not in ("same", "stored"):
        raise DeltaError(f"patch has unknown graph operation {sk_op!r}")
    skeleton_section = old.skeleton_section if sk_op == "same" else bytes(take(int(sk_n), "skeleton"))
    old_index = {e["name"]: i for i, e in enumerate(old.header["tensors"])}
    ops = [("same", 0)] * len(header["tensors"])
    for i, op, n in meta["ops"]:
        if not 0 <= int(i) < len(ops):
            raise DeltaError(f"patch names tensor #{i} but its target has {len(ops)}")
        ops[int(i)] = (op, n)
    payloads = []
    for (op, n), entry in zip(ops, header["tensors"], strict=True):
        section = take(int(n), entry["name"])
        if op == "full":
            payloads.append(bytes(section))
            continue
        i = old_index.get(entry["name"])
        if i is None:
            raise DeltaError(f"patch refers to tensor {entry['name']!r} that the base package lacks")
        if op == "same":
            payloads.append(bytes(old.payloads[i]))
        elif op == "codes":
            old_coded = tensors.from_payload(old.payloads[i], old.header["tensors"][i])
            payloads.append(tensors.to_payload(_apply_code_delta(old_coded, section, entry)))
        else:
            raise DeltaError(f"patch has unknown operation {op!r}")
    if pos != len(body):
        raise DeltaError(f"patch has {len(body) - pos} bytes beyond its last section")
    return container.build_from_sections(header_bytes, skeleton_section, payloads)


def patch(old_package: bytes, patch_bytes: bytes, *,
          max_decoded_bytes: int = container.MAX_DECODED_BYTES) -> bytes:
    """Apply a patch; the result's SHA-256 is checked against the patch header.

    The patched header's tensor table must fit ``max_decoded_bytes`` before
    any tensor is rebuilt, and a full-mode patch may not inflate past that
    plus ``container.MAX_SECTION`` (a package is never much larger than its
    decoded weights plus its graph).

    Raises:
        BaseMismatch: ``old_package`` is not the base the patch was made for.
        DeltaError: the patch is corrupt, over budget, or does not reproduce its target.
    """
    try:
        raw, body = container.unframe(container.PATCH_MAGIC, patch_bytes, "patch")
        meta = container.parse_header(raw, "patch")
    except CorruptPackage as e:
        raise DeltaError(str(e)) from e
    if sha256(old_package) != meta.get("base_sha256"):
        raise BaseMismatch(
            f"patch was made for base package {str(meta.get('base_sha256'))[:12]}..., "
            f"not {sha256(old_package)[:12]}...; fetch the full package"
        )
    try:
        if meta.get("mode") == "full":
            new = _zapply(b"", body, "full package", max_decoded_bytes + container.MAX_SECTION)
        else:
            new = _rebuild(container.parse_package(old_package, max_decoded_bytes=max_decoded_bytes), meta, body,
                           max_decoded_bytes)
    except (KeyError, TypeError, ValueError) as e:
        raise DeltaError(f"patch header is malformed: {e}") from e
    except CorruptPackage as e:
        raise DeltaError(f"patch does not apply: {e}") from e
    if sha256(new) != meta.get("target_sha256"):
        raise DeltaError("patched package does not match the patch's target_sha256; the patch is damaged")
    return new
