"""Weight quantizers: pruning + shared-weight codebooks, per-channel int8, low-rank SVD.

Pure numpy, no I/O.  Each quantizer returns integer codes plus the small
float32 parameter vector (codebook or scales) that turns them back into
weights.  Dequantization is an exact, element-wise float32 operation (a table
lookup, a product, or an integer matrix product converted once), so every
machine decodes the same bits: the car checks a SHA-256 of the result.
"""

from __future__ import annotations

import numpy as np

# Past this many occupied cells a table of cell means costs more than it saves
# (at fine steps a cell's mean is its centre), so the layer is stored on the bare
# uniform grid: one float32 step, value = code * step.
GRID_MIN_CELLS = 32
GRID_MAX_CODE = 1 << 23  # codes stay exact in float32


def codebook(w: np.ndarray, step: float, sparsity: float) -> tuple[np.ndarray, float, bool]:
    """Deep Compression's pruning + shared weights for one layer, entropy-constrained.

    Magnitude-prunes the ``sparsity`` fraction of smallest weights (they become
    an exact 0.0), splits the rest into cells of width ``step`` and shares one
    value per cell: the mean of its weights (the k-means update with the cells
    fixed on a uniform grid).  With the codes entropy-coded afterwards, uniform
    cells spend bits where they reduce error most (entropy-constrained scalar
    quantization), which beats a fixed-size k-means codebook at equal size.
    Returns the sorted codebook (always holding 0.0), the pruning threshold,
    and whether the layer uses the bare grid instead (then the "codebook" is
    ``[step]``; see ``GRID_MIN_CELLS``).
    """
    flat = w.ravel().astype(np.float64)
    threshold = prune_threshold(w, sparsity)
    cells, counts, sums = _cells(flat, step, threshold)
    occupied = counts > 0
    if int(occupied.sum()) > GRID_MIN_CELLS:
        return np.array([step], dtype=np.float32), threshold, True
    lo = int(cells.min())
    index = np.arange(counts.size)[occupied] + lo
    book = sums[occupied] / counts[occupied]
    book[index == 0] = 0.0
    book = np.unique(np.concatenate([book.astype(np.float32), np.zeros(1, np.float32)]))
    return book, threshold, False


def _cells(flat: np.ndarray, step: float, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cells = np.rint(flat / step).astype(np.int64)
    cells[np.abs(flat) <= threshold] = 0
    shifted = cells - cells.min()
    counts = np.bincount(shifted)
    sums = np.bincount(shifted, weights=flat, minlength=counts.size)
    return cells, counts, sums


def prune_threshold(w: np.ndarray, sparsity: float) -> float:
    """Magnitude below which the ``sparsity`` fraction of weights is pruned."""
    return float(np.quantile(np.abs(w.ravel().astype(np.float64)), sparsity)) if sparsity > 0 else 0.0


def estimate(w: np.ndarray, step: float, threshold: float) -> tuple[np.ndarray, float, int]:
    """Cheap preview of :func:`codebook` for the allocator: (cell codes, noise-to-signal ratio, table entries)."""
    flat = w.ravel().astype(np.float64)
    cells, counts, sums = _cells(flat, step, threshold)
    occupied = int((counts > 0).sum())
    if occupied > GRID_MIN_CELLS:
        values, entries = cells * float(np.float32(step)), 1
    else:
        means = sums / np.maximum(counts, 1)
        zero = -int(cells.min())
        if 0 <= zero < means.size:
            means[zero] = 0.0
        values, entries = means[cells - cells.min()], occupied
    err = flat - values
    return cells, float(np.sum(err**2) / max(float(np.sum(flat**2)), 1e-30)), entries


def grid_codes(w: np.ndarray, step: float, threshold: float) -> np.ndarray:
    """Codes on the bare uniform grid: round(w / step), 0 for pruned weights."""
    flat = w.ravel().astype(np.float64)
    codes = np.clip(np.rint(flat / float(step)), -GRID_MAX_CODE, GRID_MAX_CODE).astype(np.int64)
    codes[np.abs(flat) <= threshold] = 0
    return codes


def compensation(moments: np.ndarray) -> np.ndarray | None:
    """Upper Cholesky factor of the damped inverse input second moments (None if singular)."""
    damp = 0.01 * float(np.mean(np.diag(moments))) or 1e-8
    try:
        return np.linalg.cholesky(np.linalg.inv(moments + damp * np.eye(moments.shape[0]))).T
    except np.linalg.LinAlgError:
        return None


def compensated_codes(w: np.ndarray, book: np.ndarray, threshold: float, grid: bool,
                      upper: np.ndarray) -> np.ndarray:
    """Codes on a codebook/grid chosen so the layer's outputs, not its weights, stay close.

    Rounds one input column at a time and spreads its output error over the
    columns not yet rounded, weighted by the inverse of the input second
    moments (the OBQ/GPTQ update, Frantar et al. 2022; ``upper`` comes from
    :func:`compensation`).  Pruned weights stay 0.  Same codebook, same bits,
    often several times less output error than rounding to nearest.
    """
    rows = w.reshape(w.shape[0], -1).astype(np.float64).copy()
    if upper.shape != (rows.shape[1], rows.shape[1]):
        raise ValueError(f"compensation {upper.shape} does not fit weights {w.shape}")
    pruned = np.abs(rows) <= threshold
    codes = np.empty(rows.shape, dtype=np.int64)
    step = float(np.float32(book[0])) if grid else 0.0
    table = book.astype(np.float64)
    mids = (table[1:] + table[:-1]) / 2
    zero = int(np.searchsorted(book, 0.0))
    for j in range(rows.shape[1]):
        col = rows[:, j]
        if grid:
            c = np.clip(np.rint(col / step), -GRID_MAX_CODE, GRID_MAX_CODE).astype(np.int64)
            c[pruned[:, j]] = 0
            q = c * step
        else:
            c = np.searchsorted(mids, col).astype(np.int64)
            c[pruned[:, j]] = zero
            q = table[c]
        codes[:, j] = c
        err = (col - q) / upper[j, j]
        rows[:, j + 1 :] -= np.outer(err, upper[j, j + 1 :])
    return codes.ravel()


def grid_values(codes: np.ndarray, step: np.float32) -> np.ndarray:
    """Grid dequantization: one exact float32 product per weight."""
    return codes.astype(np.float32) * np.float32(step)


def assign(w: np.ndarray, book: np.ndarray, threshold: float) -> np.ndarray:
    """Codes of ``w`` on a sorted codebook: nearest entry, 0.0 for |w| <= threshold."""
    flat = w.ravel().astype(np.float32)
    mids = (book[1:].astype(np.float64) + book[:-1]) / 2
    codes = np.searchsorted(mids, flat).astype(np.int64)
    zero = int(np.searchsorted(book, 0.0))
    codes[np.abs(flat) <= threshold] = zero
    return codes


def lookup(book: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Shared-weight dequantization: a float32 table lookup."""
    return book.astype(np.float32)[codes]


def channel_scales(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 scale per output channel (axis 0): max |w| maps to 127."""
    peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float32)
    return np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)


def int8_codes(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Per-channel linear quantization to [-127, 127] on the given scales."""
    rows = w.reshape(w.shape[0], -1).astype(np.float32)
    return np.clip(np.rint(rows / scales[:, None]), -127, 127).astype(np.int64).ravel()


def int8_values(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of :func:`int8_codes` (flat float32, row-major by channel)."""
    rows = codes.reshape(scales.size, -1).astype(np.float32)
    return (rows * scales[:, None]).ravel()


def svd_rank(matrix: np.ndarray, energy: float) -> int:
    """Smallest rank keeping ``energy`` of the squared singular values."""
    s = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    kept = np.cumsum(s**2) / max(float((s**2).sum()), 1e-30)
    return int(np.searchsorted(kept, energy) + 1)


def svd_factor(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W (out, in) ~ diag(sa) Aq Bq diag(sb) with int8 Aq (out, rank), Bq (rank, in).

    Returns ``(codes, sa, sb)`` with ``codes`` = Aq then Bq, flattened.
    """
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    a = (u[:, :rank] * root).astype(np.float32)
    b = (root[:, None] * vt[:rank]).astype(np.float32)
    sa = channel_scales(a)
    sb = channel_scales(b.T.copy())
    aq = int8_codes(a, sa)
    bq = int8_codes(b.T.copy(), sb).reshape(b.shape[1], rank).T
    return np.concatenate([aq, bq.ravel()]), sa, sb


def svd_values(codes: np.ndarray, sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Exact reconstruction: an integer matrix product, then one float32 scale per element."""
    out, inp = sa.size, sb.size
    rank = codes.size // (out + inp)
    aq = codes[: out * rank].reshape(out, rank)
    bq = codes[out * rank :].reshape(rank, inp)
    product = (aq @ bq).astype(np.float32)  # |sum| < 2**24: exact in float32
    return (product * (sa[:, None] * sb[None, :])).ravel()
