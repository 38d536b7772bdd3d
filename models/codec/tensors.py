"""One encoded tensor: its kind, codes, parameters, and their byte form.

A tensor is stored as ``kind`` + integer ``symbols`` + a float32 ``params``
vector, and nothing else; the payload bytes are a pure function of those two
arrays (see ``entropy.py``).  That is what lets a delta carry only the change
of symbols and the car rebuild the exact payload.

Kinds:

- ``float``: exact float32, symbols are the uint32 bit patterns (byte planes);
- ``deep``:  symbols index a sorted per-layer codebook (params) holding 0.0;
  with ``grid`` they are multiples of one step (params ``[step]``); with
  ``scaled`` the symbols are one flag per output channel (1 = masked), one
  step level per input channel (``quantize.level_steps``), then the codes,
  value = code * step of its input channel (masked weights are 0.0 and are
  left out of the entropy-coded stream);
- ``int8``:  symbols in [-127, 127], params are per-output-channel scales;
- ``svd``:   symbols are two int8 factors, params their row/column scales.
"""

from __future__ import annotations

import math
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


def encode_deep(w: np.ndarray, step: float, sparsity: float, upper: quantize.Compensation | None = None) -> Coded:
    """Pruned, shared-weight codes on a fresh per-layer codebook."""
    book, threshold, grid = quantize.codebook(w, step, sparsity)
    return deep_on_book(w, book, threshold, grid, upper)


def deep_on_book(w: np.ndarray, book: np.ndarray, threshold: float, grid: bool = False,
                 upper: quantize.Compensation | None = None, prior: quantize.Prior | None = None) -> Coded:
    """Codes of ``w`` on an existing codebook or grid (fresh, or reused from the base package).

    With the layer's input compensation factor (``quantize.compensation``) the
    rounding compensates its output error; without, it rounds to nearest.
    With ``prior`` (the base package's codes on this book) codes lean toward
    the base's, trading a little output error for a smaller delta.
    """
    if upper is not None or (prior is not None and prior.penalty > 0):
        codes = quantize.compensated_codes(w, book, threshold, grid, upper, prior)
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


def encode_scaled(w: np.ndarray, step: float, rows: np.ndarray, cols: np.ndarray,
                  upper: quantize.Compensation | None = None) -> Coded:
    """Masked-layout codes: masked rows and input channels are 0.0 and cost nothing.

    The live weights get a fresh codebook of cell means or, past
    ``quantize.GRID_MIN_CELLS`` cells, the grid with per-input-channel steps
    (``cols`` levels).
    """
    mask = quantize.scaled_mask(tuple(w.shape), rows, cols)
    book, _, grid = quantize.codebook(w.ravel()[~mask], step, 0.0)
    if grid or np.any((cols != -quantize.LEVEL_MIN) & (cols != quantize.MASKED)):
        return _masked(w, np.array([np.float32(step)], dtype=np.float32), True, rows, cols, upper)
    return _masked(w, book, False, rows, cols, upper)


def masked_on_book(w: np.ndarray, base: Coded, upper: quantize.Compensation | None = None,
                   penalty: float = 0.0) -> Coded:
    """Codes of ``w`` on a masked-layout base tensor's codebook/grid and masks (a reused grid).

    ``penalty`` > 0 leans the codes toward the base's (``quantize.Prior``).
    """
    rows, cols, base_codes = scaled_parts(base)
    prior = quantize.Prior(base_codes, penalty) if penalty > 0 else None
    return _masked(w, base.params, bool(base.meta.get("grid")), rows, cols, upper, prior)


def _masked(w: np.ndarray, book: np.ndarray, grid: bool, rows: np.ndarray, cols: np.ndarray,
            upper: quantize.Compensation | None, prior: quantize.Prior | None = None) -> Coded:
    mask = quantize.scaled_mask(tuple(w.shape), rows, cols)
    if grid:
        codes = quantize.scaled_codes(w, book[0], rows, cols, upper, prior)
        zero = 0
    else:
        codes = deep_on_book(w, book, 0.0, False, upper, prior).symbols
        zero = int(np.searchsorted(book, 0.0))
        codes[mask] = zero
    live = codes[~mask]
    span = int(live.max() - live.min()) + 1 if grid and live.size else book.size
    meta: dict[str, Any] = {
        "bits": max(1, int(np.ceil(np.log2(max(span, 1))))),
        "threshold": 0.0,
        "sparsity": round(float(np.mean(codes == zero)), 4),
        "scaled": True,
        "masked": [int(rows.sum()), int(np.sum(cols == quantize.MASKED))],
    }
    if grid:
        meta["grid"] = True
    if upper is not None:
        meta["compensated"] = True
    symbols = np.concatenate([rows.astype(np.int64), cols.astype(np.int64), codes])
    return Coded("deep", tuple(w.shape), book.astype(np.float32), symbols, meta)


def _masked_zero(coded_params: np.ndarray, grid: bool) -> int:
    """The code of 0.0: 0 on a grid, the index of the codebook's 0.0 entry otherwise."""
    return 0 if grid else int(np.searchsorted(coded_params, 0.0))


def scaled_parts(coded: Coded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row flags, input-channel levels, codes) of a scaled-grid tensor."""
    cout, cin, _ = quantize.scaled_layout(coded.shape)
    s = coded.symbols
    return s[:cout], s[cout : cout + cin], s[cout + cin :]


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
    elif coded.kind == "deep" and coded.meta.get("scaled") and coded.meta.get("grid"):
        rows, cols, codes = scaled_parts(coded)
        flat = quantize.scaled_values(coded.shape, coded.params[0], rows, cols, codes)
    elif coded.kind == "deep" and coded.meta.get("scaled"):
        flat = quantize.lookup(coded.params, scaled_parts(coded)[2])
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
    if coded.kind == "deep" and coded.meta.get("scaled"):
        rows, cols, codes = scaled_parts(coded)
        levels = entropy.encode(np.concatenate([rows, cols]))
        live = quantize.live_codes(coded.shape, rows, cols, codes)
        return entropy.varint(len(levels)) + levels + entropy.encode(live)
    return entropy.encode(coded.symbols)


def _scaled_symbols(rest: memoryview, shape: tuple[int, ...], name: str, zero: int) -> np.ndarray:
    """Inverse of the scaled branch of :func:`symbol_stream`: the full symbol array."""
    r = entropy.Reader(rest, f"tensor {name}")
    cout, cin, taps = quantize.scaled_layout(shape)
    levels = entropy.decode(r.take(r.varint()), f"tensor {name} levels", max_symbols=cout + cin)
    if levels.size != cout + cin:
        raise CorruptPackage(f"tensor {name}: {levels.size} channel levels, expected {cout + cin}")
    rows, cols = levels[:cout], levels[cout:]
    if rows.size and (rows.min() < 0 or rows.max() > 1) or cols.size and (cols.min() < 0 or cols.max() > quantize.MASKED):
        raise CorruptPackage(f"tensor {name}: channel levels out of range")
    live = entropy.decode(r.take(len(r.data) - r.pos), f"tensor {name}", max_symbols=cout * cin * taps)
    expected = int(np.sum(rows == 0)) * int(np.sum(cols != quantize.MASKED)) * taps
    if live.size != expected:
        raise CorruptPackage(f"tensor {name}: {live.size} codes, expected {expected}")
    symbols = np.empty(cout + cin + cout * cin * taps, dtype=np.int64)
    symbols[: cout + cin] = levels
    quantize.fill_codes(shape, rows, cols, live, zero, out=symbols[cout + cin :])
    return symbols


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
    n = math.prod(shape)  # the header's shape was checked against the package's budget (container.check_budget)
    if kind == "float":
        symbols = entropy.decode_u32_planes(rest, n, f"tensor {name}").astype(np.int64)
    elif kind == "deep" and entry.get("scaled"):
        if len(shape) < 2:
            raise CorruptPackage(f"tensor {name}: a scaled grid needs at least 2 dimensions, got {list(shape)}")
        symbols = _scaled_symbols(rest, shape, name, _masked_zero(params, bool(entry.get("grid"))))
    else:  # int8 and deep hold n codes, svd rank * (rows + cols) <= 2n
        symbols = entropy.decode(rest, f"tensor {name}", max_symbols=2 * n)
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
    if coded.kind == "deep" and coded.meta.get("scaled"):
        _check_scaled(coded, name)
        return
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


def _check_scaled(coded: Coded, name: str) -> None:
    if len(coded.shape) < 2:
        raise CorruptPackage(f"tensor {name}: a scaled grid needs at least 2 dimensions, got {list(coded.shape)}")
    cout, cin, _ = quantize.scaled_layout(coded.shape)
    if coded.symbols.size != cout + cin + coded.size or coded.params.size < 1 or (
            coded.meta.get("grid") and coded.params.size != 1):
        raise CorruptPackage(f"tensor {name}: masked layout holds {coded.symbols.size} symbols and "
                             f"{coded.params.size} params, expected {cout + cin + coded.size}")
    rows, cols, codes = scaled_parts(coded)
    if (rows.size and (rows.min() < 0 or rows.max() > 1)) or (cols.size and (cols.min() < 0 or cols.max() > quantize.MASKED)):
        raise CorruptPackage(f"tensor {name}: channel levels out of range")
    grid = bool(coded.meta.get("grid"))
    if grid and codes.size and max(int(codes.max()), -int(codes.min())) > quantize.GRID_MAX_CODE:
        raise CorruptPackage(f"tensor {name}: grid codes out of range")
    if not grid and (np.any((cols != -quantize.LEVEL_MIN) & (cols != quantize.MASKED))
                     or (codes.size and (codes.min() < 0 or codes.max() >= coded.params.size))):
        raise CorruptPackage(f"tensor {name}: codes or channel levels outside its {coded.params.size}-entry codebook")
    zero = _masked_zero(coded.params, grid)
    if not quantize.masked_codes_are(coded.shape, rows, cols, codes, zero):
        raise CorruptPackage(f"tensor {name}: masked weights must have the code of 0.0")


HEADER_META = ("grid", "scaled", "rank", "sensitivity")


def entry(name: str, coded: Coded, nbytes: int) -> dict[str, Any]:
    """The header's description of one tensor: what decoding and reuse need, nothing informational.

    (Bits and sparsity are recomputed by :func:`describe`; every byte of the
    header is paid by every package and, as a zstd patch, by every delta.)
    """
    meta = {k: coded.meta[k] for k in HEADER_META if k in coded.meta}
    if coded.meta.get("threshold"):
        meta["threshold"] = coded.meta["threshold"]
    return {"name": name, "kind": coded.kind, "shape": list(coded.shape), "bytes": nbytes, **meta}


def describe(coded: Coded) -> dict[str, Any]:
    """Bits per code and fraction of exact zeros, for ``inspect``."""
    if coded.kind == "float":
        bits = 32
    elif coded.kind in ("int8", "svd"):
        bits = 8
    else:
        codes = scaled_parts(coded)[2] if coded.meta.get("scaled") else coded.symbols
        levels = int(codes.max() - codes.min()) + 1 if coded.meta.get("grid") and codes.size else coded.params.size
        bits = max(1, int(np.ceil(np.log2(max(levels, 1)))))
    return {"bits": bits, "sparsity": round(float(np.mean(values(coded) == 0)), 4) if coded.size else 0.0}
