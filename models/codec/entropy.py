"""Entropy coding of integer symbol streams (quantization codes, code deltas, float bits).

Every stream is coded with an order-0 model: the symbol histogram is stored
(as LEB128 varints) in front of the data, and the symbols are coded with
`constriction`'s ANS coder against that categorical model.  ANS comes within
a fraction of a percent of the empirical entropy, including for the very
skewed streams that deltas produce (95 % zeros costs ~0.3 bit/symbol, where a
Huffman or zstd literal coder cannot go below 1 bit).  Tiny streams, where the
table would cost more than it saves, are stored packed instead.  Streams
with a wide alphabet (fine grids, biases) are split JPEG-style into a
magnitude class per symbol (sign and bit length, a small alphabet coded as
above) plus the bits below the leading one, stored raw: the table then
holds a few dozen classes instead of thousands of values.  The encoder picks
whichever of the three is smallest.

The output is a pure function of the symbols (no zstd, no library-version
dependent match finder), so a car that rebuilds a package from a delta
re-encodes it to exactly the bytes the server produced.

Stream layout::

    u8 method | varint count | ...
    method 0 (constant):  zigzag varint value
    method 1 (packed):    zigzag varint minimum, u8 byte width, little-endian (symbol - minimum)
    method 2 (ANS):       zigzag varint minimum, varint alphabet size, varint counts..., u32 LE words
    method 3 (split):     varint length of the class stream, class stream (a stream as above), raw bits
                          (class 0: value 0; class 2k-1 / 2k: +/- a value of bit length k, whose k-1
                          low bits follow in the raw bits, MSB first)
"""

from __future__ import annotations

import constriction
import numpy as np

from models.errors import CorruptPackage

MAX_ALPHABET = 1 << 16
MAX_SYMBOLS = 1 << 28  # 1 GiB of float32: anything larger in a header is corruption, not a model
_CONSTANT, _PACKED, _ANS, _SPLIT = 0, 1, 2, 3
SPLIT_MIN_ALPHABET = 32  # below this the plain table is small and ANS codes the values at their entropy
SPLIT_MAX_SYMBOLS_PER_VALUE = 64  # with more symbols per table entry the table is cheap and split is not tried
SPLIT_DECODE_CELLS = 1 << 18  # int64 cells per block of the split decoder's work arrays (2 MB each)
MAX_BIT_LENGTH = 62  # classes above 2 * 52 are refused: magnitudes are below 2**52


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varints(values: np.ndarray) -> bytes:
    """LEB128 of many non-negative integers at once (symbol tables)."""
    v = np.ascontiguousarray(values, dtype=np.uint64).ravel()
    if v.size == 0:
        return b""
    length = np.ones(v.size, dtype=np.int64)
    for k in range(1, 10):
        length += v >= np.uint64(1 << (7 * k))
    width = int(length.max())
    groups = np.stack([(v >> np.uint64(7 * k)) & np.uint64(0x7F) for k in range(width)], axis=1).astype(np.uint8)
    index = np.arange(width)
    keep = index[None, :] < length[:, None]
    more = index[None, :] < (length - 1)[:, None]
    return (groups | (more.astype(np.uint8) << 7))[keep].tobytes()


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


class Reader:
    """Cursor over a byte string that raises CorruptPackage instead of IndexError."""

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise CorruptPackage(f"{self.what}: stream ends early at byte {self.pos}")
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise CorruptPackage(f"{self.what}: varint too long at byte {self.pos}")

    def varints(self, count: int) -> np.ndarray:
        """``count`` consecutive LEB128 integers, decoded with numpy."""
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        rest = np.frombuffer(self.data[self.pos :], dtype=np.uint8)
        ends = np.flatnonzero(rest < 0x80)[:count]
        if ends.size < count:
            raise CorruptPackage(f"{self.what}: table ends early at byte {self.pos}")
        used = int(ends[-1]) + 1
        starts = np.concatenate([[0], ends[:-1] + 1])
        if np.any(ends - starts > 8):
            raise CorruptPackage(f"{self.what}: varint too long in table at byte {self.pos}")
        owner = np.repeat(np.arange(count), ends - starts + 1)
        shift = (np.arange(used) - starts[owner]) * 7
        parts = (rest[:used].astype(np.int64) & 0x7F) << shift
        self.pos += used
        return np.add.reduceat(parts, starts)

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise CorruptPackage(f"{self.what}: needs {n} bytes at {self.pos}, only {len(self.data) - self.pos} left")
        self.pos += n
        return self.data[self.pos - n : self.pos]


def _model(counts: np.ndarray) -> constriction.stream.model.Categorical:
    probs = counts.astype(np.float64) / float(counts.sum())
    return constriction.stream.model.Categorical(probs, perfect=False)


def _width(span: int) -> int:
    for width in (1, 2, 4, 8):
        if span < (1 << (8 * width)):
            return width
    raise ValueError("symbol range too wide")


def encode(symbols: np.ndarray) -> bytes:
    """Code an integer array (any shape, flattened) as a self-describing stream."""
    flat = np.ascontiguousarray(symbols, dtype=np.int64).ravel()
    n = flat.size
    if n == 0:
        return bytes([_CONSTANT]) + varint(0) + varint(0)
    lo, hi = int(flat.min()), int(flat.max())
    if lo == hi:
        return bytes([_CONSTANT]) + varint(n) + varint(_zigzag(lo))
    shifted = flat - lo
    width = _width(hi - lo)
    packed = bytes([_PACKED]) + varint(n) + varint(_zigzag(lo)) + bytes([width])
    packed += shifted.astype(f"<u{width}").tobytes()
    best = packed
    if hi - lo < MAX_ALPHABET:
        counts = np.bincount(shifted, minlength=hi - lo + 1)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(shifted.astype(np.int32), _model(counts))
        words = coder.get_compressed().astype("<u4").tobytes()
        ans = bytes([_ANS]) + varint(n) + varint(_zigzag(lo)) + varint(hi - lo + 1) + varints(counts) + words
        best = ans if len(ans) < len(packed) else packed
    splittable = max(-lo, hi) < (1 << MAX_BIT_LENGTH) // 1024  # frexp gives exact bit lengths below 2**53
    if hi - lo + 1 >= SPLIT_MIN_ALPHABET and (hi - lo + 1) * SPLIT_MAX_SYMBOLS_PER_VALUE > n and splittable:
        split = _encode_split(flat)
        if len(split) < len(best):
            return split
    return best


def _classes(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class per symbol, bit length of its magnitude) for the split method."""
    mag = np.abs(flat)
    length = np.zeros(flat.size, dtype=np.int64)
    nz = mag > 0
    length[nz] = np.frexp(mag[nz].astype(np.float64))[1]  # exact bit length for |v| < 2**53
    classes = np.where(nz, 2 * length - (flat > 0), 0)
    return classes, length


def _encode_split(flat: np.ndarray) -> bytes:
    classes, length = _classes(flat)
    widths = np.maximum(length - 1, 0)
    mag = np.abs(flat)
    top = int(widths.max(initial=0))
    shifts = np.arange(top - 1, -1, -1)[None, :] - (top - widths)[:, None]  # MSB first, per symbol
    used = shifts >= 0
    bits = (mag[:, None] >> np.maximum(shifts, 0)) & 1
    raw = np.packbits(bits[used].astype(np.uint8)).tobytes()
    head = encode(classes)
    return bytes([_SPLIT]) + varint(flat.size) + varint(len(head)) + head + raw


def _decode_split(r: Reader, n: int, what: str) -> np.ndarray:
    classes = decode(r.take(r.varint()), what, max_symbols=n)
    if classes.size != n or (n and (classes.min() < 0 or classes.max() > 2 * MAX_BIT_LENGTH)):
        raise CorruptPackage(f"{what}: magnitude classes do not fit {n} symbols")
    length = (classes + 1) // 2
    widths = np.maximum(length - 1, 0)
    total = int(widths.sum())
    rest = r.take(len(r.data) - r.pos)
    if len(rest) != (total + 7) // 8:
        raise CorruptPackage(f"{what}: {len(rest)} bytes of low bits, expected {(total + 7) // 8}")
    bits = np.unpackbits(np.frombuffer(rest, dtype=np.uint8))[:total].astype(np.int64)
    mag = np.where(length > 0, np.int64(1) << np.maximum(length - 1, 0), 0)
    top = int(widths.max(initial=0))
    if top:
        # (symbols x top) work arrays, a block of rows at a time: one wide symbol must not make
        # every symbol cost 61 int64 cells (a few bytes of stream would claim gigabytes)
        starts = np.cumsum(widths) - widths
        j = np.arange(top)[None, :]
        step = max(1, SPLIT_DECODE_CELLS // top)
        for a in range(0, n, step):
            w, st = widths[a : a + step, None], starts[a : a + step, None]
            used = j < w
            index = np.minimum(st + j, total - 1)
            shift = np.where(used, w - 1 - j, 0)
            mag[a : a + step] |= np.sum(np.where(used, bits[index] << shift, 0), axis=1)
    return np.where(classes % 2 == 1, mag, -mag)


def decode(stream: bytes | memoryview, what: str = "symbol stream", *, max_symbols: int = MAX_SYMBOLS) -> np.ndarray:
    """Inverse of :func:`encode`: the flat int64 symbol array.

    ``max_symbols`` is what the caller's header allows: a stream's own count is
    never trusted for an allocation (a few bytes can claim 2^28 constant symbols).

    Raises:
        CorruptPackage: the stream is truncated or malformed, or claims more than ``max_symbols``.
    """
    r = Reader(stream, what)
    method = r.byte()
    n = r.varint()
    if n > min(max_symbols, MAX_SYMBOLS):
        raise CorruptPackage(f"{what}: claims {n} symbols, more than the {min(max_symbols, MAX_SYMBOLS)} "
                             "its header allows")
    if method == _CONSTANT:
        return np.full(n, _unzigzag(r.varint()), dtype=np.int64)
    if method == _SPLIT:
        return _decode_split(r, n, what)
    lo = _unzigzag(r.varint())
    if method == _PACKED:
        width = r.byte()
        if width not in (1, 2, 4, 8):
            raise CorruptPackage(f"{what}: bad packed width {width}")
        raw = r.take(n * width)
        return np.frombuffer(raw, dtype=f"<u{width}").astype(np.int64) + lo
    if method != _ANS:
        raise CorruptPackage(f"{what}: unknown coding method {method}")
    size = r.varint()
    if not 1 <= size <= MAX_ALPHABET:
        raise CorruptPackage(f"{what}: alphabet size {size} out of range")
    counts = r.varints(size)
    if counts.sum() != n:
        raise CorruptPackage(f"{what}: symbol table sums to {counts.sum()}, expected {n}")
    rest = r.take(len(r.data) - r.pos)
    if len(rest) % 4:
        raise CorruptPackage(f"{what}: ANS payload is not whole 32-bit words")
    words = np.frombuffer(rest, dtype="<u4").astype(np.uint32)
    try:
        out = constriction.stream.stack.AnsCoder(words).decode(_model(counts), n)
    except Exception as e:  # constriction raises ValueError/AssertionError on garbage
        raise CorruptPackage(f"{what}: ANS data does not decode: {e}") from e
    return out.astype(np.int64) + lo


def estimate_bytes(symbols: np.ndarray) -> float:
    """Order-0 entropy of the stream plus a rough table cost, without coding it."""
    flat = np.asarray(symbols).ravel()
    if flat.size == 0:
        return 2.0
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo < (1 << 20) and flat.dtype.kind in "iu":
        counts = np.bincount((flat - lo).astype(np.int64))
        counts = counts[counts > 0]
    else:
        _, counts = np.unique(flat, return_counts=True)
    p = counts / flat.size
    bits = float(-(counts * np.log2(p)).sum())
    return bits / 8 + 2 * len(counts) + 8


def encode_u32_planes(bits: np.ndarray) -> bytes:
    """Code uint32 words (float32 bit patterns or their XOR) as four byte planes.

    Sign and exponent land in the top plane, which is far from uniform; the
    mantissa planes are close to random and cost nearly 8 bits each.
    """
    words = np.ascontiguousarray(bits, dtype="<u4").ravel()
    planes = words.view(np.uint8).reshape(-1, 4)
    out = bytearray()
    for k in (3, 2, 1, 0):
        stream = encode(planes[:, k])
        out += varint(len(stream)) + stream
    return bytes(out)


def decode_u32_planes(stream: bytes | memoryview, n: int, what: str = "float planes") -> np.ndarray:
    """Inverse of :func:`encode_u32_planes`: ``n`` uint32 words."""
    r = Reader(stream, what)
    if n > MAX_SYMBOLS:
        raise CorruptPackage(f"{what}: claims {n} floats, more than any model this codec accepts")
    planes = np.empty((n, 4), dtype=np.uint8)
    for k in (3, 2, 1, 0):
        length = r.varint()
        plane = decode(r.take(length), what, max_symbols=n)
        if plane.size != n:
            raise CorruptPackage(f"{what}: plane {k} holds {plane.size} bytes, expected {n}")
        planes[:, k] = plane
    return planes.reshape(-1).view("<u4").astype(np.uint32)
