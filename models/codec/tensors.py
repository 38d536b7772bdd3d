"""One encoded tensor: its kind, codes, parameters, and their byte form.

A tensor is stored as ``kind`` + integer ``symbols`` + a float32 ``params``
vector, and nothing else; the payload bytes are a pure function of those two
arrays (see ``entropy.py``).  That is what lets a delta carry only the change
of symbols and the car rebuild the exact payload.

Kinds:

- ``float``: exact float32, symbols are the uint32 bit patterns (byte planes);
- ``deep``:  symbols index a sorted per-layer codebook (params) holding 0.0;
- ``int8``:  symbols in [-127, 127], params are per-output-channel scales;
- ``svd``:   symbols are two int8 factors, params their row/column scales.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.codec import entropy, quantize
from models.errors import CorruptPackage

KINDS = ("float", "deep", "int8", "svd")


@dataclass
class Coded:
    """A tensor in the coded domain; ``meta`` is what the header shows."""

    kind: str
    shape: tuple[int, ...]
    params: np.ndarray
    symbols: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def encode_float(w: np.ndarray) -> Coded:
    """Lossless: the float32 bit patterns themselves."""
    bits = np.ascontiguousarray(w, dtype=np.float32).ravel().view(np.uint32).astype(np.int64)
    return Coded("float", tuple(w.shape), np.zeros(0, np.float32), bits, {})


def encode_deep(w: np.ndarray, step: float, sparsity: float, upper: np.ndarray | None = None) -> Coded:
    """Pruned, shared-weight codes on a fresh per-layer codebook."""
    book, threshold, grid = quantize.codebook(w, step, sparsity)
    return deep_on_book(w, book, threshold, grid, upper)


def deep_on_book(w: np.ndarray, book: np.ndarray, threshold: float, grid: bool = False,
                 upper: np.ndarray | None = None) -> Coded:
    """Codes of ``w`` on an existing codebook or grid (fresh, or reused from the base package).

    With the layer's input compensation factor (``quantize.compensation``) the
    rounding compensates its output error; without, it rounds to nearest.
    """
    if upper is not None:
        codes = quantize.compensated_codes(w, book, threshold, grid, upper)
    elif grid:
        codes = quantize.grid_codes(w, float(book[0]), threshold)
    else:
        codes = quantize.assign(w, book, threshold)
    if grid:
        levels, zero = int(codes.max() - codes.min()) + 1, 0
    else:
        levels, zero = book.size, int(np.searchsorted(book, 0.0))
    meta: dict[str, Any] = {
        "bits": max(1, int(np.ceil(np.log2(levels)))),
        "threshold": threshold,
        "sparsity": round(float(np.mean(codes == zero)), 4),
    }
    if grid:
        meta["grid"] = True
    if upper is not None:
        meta["compensated"] = True
    return Coded("deep", tuple(w.shape), book.astype(np.float32), codes, meta)


def encode_int8(w: np.ndarray, scales: np.ndarray | None = None) -> Coded:
    """Per-output-channel int8 (on ``scales`` when reusing the base's grid)."""
    scales = quantize.channel_scales(w) if scales is None else scales
    codes = quantize.int8_codes(w, scales)
    return Coded("int8", tuple(w.shape), scales, codes, {"bits": 8})


def encode_svd(w: np.ndarray, rank: int) -> Coded:
    """Rank-``rank`` factorization of a 1x1 convolution / matrix, factors in int8."""
    matrix = w.reshape(w.shape[0], -1)
    codes, sa, sb = quantize.svd_factor(matrix, rank)
    return Coded("svd", tuple(w.shape), np.concatenate([sa, sb]), codes, {"bits": 8, "rank": rank})


def values(coded: Coded) -> np.ndarray:
    """Decode to a float32 array of the tensor's shape (bit-exact on every machine)."""
    if coded.kind == "float":
        flat = coded.symbols.astype(np.uint32).view(np.float32)
    elif coded.kind == "deep" and coded.meta.get("grid"):
        flat = quantize.grid_values(coded.symbols, coded.params[0])
    elif coded.kind == "deep":
        flat = quantize.lookup(coded.params, coded.symbols)
    elif coded.kind == "int8":
        flat = quantize.int8_values(coded.symbols, coded.params)
    elif coded.kind == "svd":
        out = coded.shape[0]
        flat = quantize.svd_values(coded.symbols, coded.params[:out], coded.params[out:])
    else:
        raise CorruptPackage(f"unknown tensor kind {coded.kind!r}")
    return flat.reshape(coded.shape)


def symbol_stream(coded: Coded) -> bytes:
    """Entropy-coded symbols (byte planes for float bit patterns)."""
    if coded.kind == "float":
        return entropy.encode_u32_planes(coded.symbols.astype(np.uint32))
    return entropy.encode(coded.symbols)


def to_payload(coded: Coded) -> bytes:
    """Payload = varint(#params) + float32 params + entropy-coded symbols."""
    return entropy.varint(coded.params.size) + coded.params.astype("<f4").tobytes() + symbol_stream(coded)


def from_payload(payload: bytes | memoryview, entry: dict[str, Any]) -> Coded:
    """Parse a payload described by its header ``entry``.

    Raises:
        CorruptPackage: the payload does not match its entry.
    """
    name = entry.get("name", "?")
    kind, shape = entry["kind"], tuple(int(d) for d in entry["shape"])
    r = entropy.Reader(payload, f"tensor {name}")
    nparams = r.varint()
    params = np.frombuffer(r.take(4 * nparams), dtype="<f4").astype(np.float32)
    rest = r.take(len(r.data) - r.pos)
    n = int(np.prod(shape, dtype=np.int64))
    if kind == "float":
        symbols = entropy.decode_u32_planes(rest, n, f"tensor {name}").astype(np.int64)
    else:
        symbols = entropy.decode(rest, f"tensor {name}")
    coded = Coded(kind, shape, params, symbols, {k: v for k, v in entry.items() if k not in ENTRY_KEYS})
    check(coded, name)
    return coded


ENTRY_KEYS = {"name", "kind", "shape", "bytes"}


def check(coded: Coded, name: str) -> None:
    """Reject codes that would index out of their tables (corrupt or hostile input)."""
    s = coded.symbols
    expected = coded.size
    if coded.kind == "svd":
        out, inp = coded.shape[0], coded.size // max(coded.shape[0], 1)
        rank = int(coded.meta.get("rank", -1))
        expected = rank * (out + inp)
        if coded.params.size != out + inp:
            raise CorruptPackage(f"tensor {name}: svd scales hold {coded.params.size} values, expected {out + inp}")
    if s.size != expected:
        raise CorruptPackage(f"tensor {name}: {s.size} codes, expected {expected}")
    if coded.kind == "deep" and coded.meta.get("grid"):
        if coded.params.size != 1 or (s.size and np.abs(s).max() > quantize.GRID_MAX_CODE):
            raise CorruptPackage(f"tensor {name}: grid step or codes out of range")
    elif coded.kind == "deep" and s.size and (s.min() < 0 or s.max() >= coded.params.size):
        raise CorruptPackage(f"tensor {name}: codes outside its {coded.params.size}-entry codebook")
    if coded.kind in ("int8", "svd") and s.size and (s.min() < -127 or s.max() > 127):
        raise CorruptPackage(f"tensor {name}: int8 codes out of range")
    if coded.kind == "int8" and coded.params.size != coded.shape[0]:
        raise CorruptPackage(f"tensor {name}: {coded.params.size} scales for {coded.shape[0]} channels")
    if coded.kind == "float" and (s.size and (s.min() < 0 or s.max() >= 1 << 32)):
        raise CorruptPackage(f"tensor {name}: float bit patterns out of range")


def entry(name: str, coded: Coded, nbytes: int) -> dict[str, Any]:
    """The header's description of one tensor."""
    return {"name": name, "kind": coded.kind, "shape": list(coded.shape), "bytes": nbytes, **coded.meta}
