"""Weight quantizers: pruning + shared-weight codebooks (with masked dead channels), per-channel int8, low-rank SVD.

Pure numpy, no I/O.  Each quantizer returns integer codes plus the small
float32 parameter vector (codebook or scales) that turns them back into
weights.  Dequantization is an exact, element-wise float32 operation (a table
lookup, a product, or an integer matrix product converted once), so every
machine decodes the same bits: the car checks a SHA-256 of the result.
Error-compensating rounding (:func:`compensation`, GPTQ with act order) runs
on the server only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Compensation:
    """What error-compensating rounding needs for one layer.

    ``order`` rounds the columns of largest input energy first (GPTQ's "act
    order"): their errors are then spread over many columns still free to
    absorb them; ``upper`` is the upper Cholesky factor of the damped inverse
    input second moments, with rows and columns in that order.
    """

    upper: np.ndarray
    order: np.ndarray


def compensation(moments: np.ndarray) -> Compensation | None:
    """The layer's :class:`Compensation` from its input second moments (None if singular)."""
    damp = 0.01 * float(np.mean(np.diag(moments))) or 1e-8
    order = np.argsort(-np.diag(moments), kind="stable")
    h = moments[np.ix_(order, order)]
    try:
        return Compensation(np.linalg.cholesky(np.linalg.inv(h + damp * np.eye(h.shape[0]))).T, order)
    except np.linalg.LinAlgError:
        return None


@dataclass(frozen=True)
class Prior:
    """Codes a version packed on a base should keep: rate-distortion rounding against the base.

    Packing version n+1 on version n's grid, every code that differs from the
    base's costs a car bytes (the ``codes`` delta op entropy-codes ``new - old``),
    while a code left at the base's value costs almost nothing.  Plain
    compensated rounding ignores that: each column's rounding error moves all
    the columns after it, so a small fine-tune re-rounds codes all through a
    layer and the differences look like noise.  With a prior, a weight keeps
    its base code whenever that raises its column's output error by at most
    ``penalty`` times the squared step of its column (times the column's share
    of output error: a column whose input is strong weighs more), and the
    error it keeps is compensated like any rounding error.  ``penalty`` 0 is
    plain compensated rounding.
    """

    codes: np.ndarray  # the base's codes, in the layer's own (flat) order
    penalty: float


def _column_weights(comp: Compensation | None, ncols: int) -> np.ndarray:
    """Output-error weight of each original column's rounding error, normalized to mean 1.

    In the OBQ/GPTQ update a column rounded at position k with error e adds
    e^2 / upper[k, k]^2 to the layer's output error.
    """
    if comp is None:
        return np.ones(ncols)
    g = np.empty(ncols)
    g[comp.order] = 1.0 / np.maximum(np.diag(comp.upper) ** 2, 1e-300)
    return g / (float(np.mean(g)) or 1.0)


def _toward_prior(col: np.ndarray, c: np.ndarray, q: np.ndarray, pc: np.ndarray, pq: np.ndarray,
                  allowance: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the prior code (value ``pq``) wherever its squared error exceeds the chosen one's by <= ``allowance``."""
    keep = (col - pq) ** 2 - (col - q) ** 2 <= allowance
    return np.where(keep, pc, c), np.where(keep, pq, q)


def _compensated(w: np.ndarray, comp: Compensation,
                 rounding: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]],
                 prior: Callable[[int, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                 ) -> np.ndarray:
    """Round column by column in ``comp.order``, pushing each column's output error onto the ones not rounded yet.

    ``rounding(j, column)`` returns (codes, values) of original column ``j``;
    ``prior(j, column, codes, values)``, when given, may move them back toward
    the base's codes (:class:`Prior`) before the error is pushed on.
    """
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    upper, order = comp.upper, comp.order
    if upper.shape != (rows.shape[1], rows.shape[1]):
        raise ValueError(f"compensation {upper.shape} does not fit weights {w.shape}")
    rows = rows[:, order].copy()
    codes = np.empty(rows.shape, dtype=np.int64)
    for k in range(rows.shape[1]):
        col = rows[:, k]
        c, q = rounding(int(order[k]), col)
        if prior is not None:
            c, q = prior(int(order[k]), col, c, q)
        codes[:, order[k]] = c
        err = (col - q) / upper[k, k]
        rows[:, k + 1 :] -= np.outer(err, upper[k, k + 1 :])
    return codes.ravel()


def compensated_codes(w: np.ndarray, book: np.ndarray, threshold: float, grid: bool,
                      comp: Compensation | None, prior: Prior | None = None) -> np.ndarray:
    """Codes on a codebook/grid chosen so the layer's outputs, not its weights, stay close.

    Rounds one input column at a time and spreads its output error over the
    columns not yet rounded, weighted by the inverse of the input second
    moments (the OBQ/GPTQ update, Frantar et al. 2022; ``comp`` comes from
    :func:`compensation`; without it, each weight rounds on its own).  Pruned
    weights stay 0.  Same codebook, same bits, often several times less output
    error than rounding to nearest.  With ``prior`` (a base package's codes on
    this same codebook) a code stays at the base's where that costs little
    output error (:class:`Prior`), so the delta to the base stays small.
    """
    matrix = w.reshape(w.shape[0], -1)
    pruned = np.abs(matrix) <= threshold
    step = float(np.float32(book[0])) if grid else 0.0
    table = book.astype(np.float64)
    mids = (table[1:] + table[:-1]) / 2
    zero = int(np.searchsorted(book, 0.0))

    def rounding(j: int, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if grid:
            c = np.clip(np.rint(col / step), -GRID_MAX_CODE, GRID_MAX_CODE).astype(np.int64)
            c[pruned[:, j]] = 0
            return c, c * step
        c = np.searchsorted(mids, col).astype(np.int64)
        c[pruned[:, j]] = zero
        return c, table[c]

    toward = None
    if prior is not None and prior.penalty > 0:
        pcodes = prior.codes.reshape(matrix.shape)
        pvalues = pcodes * step if grid else table[pcodes]
        # the squared spacing of the codes around each base value (uniform on a grid)
        spacing = step**2 if grid else float(np.median(np.diff(table))) ** 2 if table.size > 1 else 0.0
        allowance = prior.penalty * spacing / _column_weights(comp, matrix.shape[1])

        def toward(j: int, col: np.ndarray, c: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return _toward_prior(col, c, q, pcodes[:, j], pvalues[:, j], float(allowance[j]))

    if comp is None:
        out = np.empty(matrix.shape, dtype=np.int64)
        for j in range(matrix.shape[1]):
            col = matrix[:, j].astype(np.float64)
            c, q = rounding(j, col)
            out[:, j] = toward(j, col, c, q)[0] if toward is not None else c
        return out.ravel()
    return _compensated(w, comp, rounding, toward)


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


# Scaled grid: one step per input channel, in half-octaves of the layer's step.
# Level index j means 2 ** ((j + LEVEL_MIN) / 2) times the step; MASKED means the
# channel is unused on the probe (its weights are an exact 0.0 and cost nothing).
LEVEL_MIN, LEVEL_MAX = -8, 16
MASKED = LEVEL_MAX - LEVEL_MIN + 1
_SQRT2 = np.float32(np.sqrt(2.0))  # sqrt is correctly rounded in IEEE arithmetic: the same bits everywhere


def level_steps(step: np.float32) -> np.ndarray:
    """Float32 step of every level index (MASKED -> 0.0), computed with exact float32 operations only."""
    out = np.zeros(MASKED + 1, dtype=np.float32)
    for j in range(MASKED):
        half = j + LEVEL_MIN
        base = np.float32(step) * _SQRT2 if half % 2 else np.float32(step)
        out[j] = np.ldexp(base, half // 2)
    return out


def channel_levels(dead: np.ndarray) -> np.ndarray:
    """Level index per input channel: MASKED where the input is exactly zero on the whole probe, else the layer step.

    An input channel that is zero on every probe sample (a dead ReLU)
    multiplies nothing there, so its weights are 0.0 and cost no bits.  Live
    channels keep the layer's step: steps proportional to 1/sqrt(input energy)
    (reverse water-filling) looked 5-15 % smaller with round-to-nearest, but
    compensated rounding already moves the error onto low-energy inputs and the
    measured output errors were no better than with one step, so the format's
    per-channel levels are not used for live channels yet.
    """
    return np.where(np.asarray(dead, dtype=bool), MASKED, -LEVEL_MIN).astype(np.int64)


def scaled_layout(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(output channels, input channels, taps per input channel) of a scaled-grid tensor."""
    cout, cin = int(shape[0]), int(shape[1])
    return cout, cin, int(np.prod(shape[2:], dtype=np.int64))


def scaled_mask(shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Flat boolean mask of the codes that are forced to 0 (masked row or masked input channel)."""
    cout, cin, taps = scaled_layout(shape)
    mask = (rows.astype(bool)[:, None] | (cols == MASKED)[None, :])
    return np.broadcast_to(mask[:, :, None], (cout, cin, taps)).ravel()


def scaled_codes(w: np.ndarray, step: np.float32, rows: np.ndarray, cols: np.ndarray,
                 comp: Compensation | None = None, prior: Prior | None = None) -> np.ndarray:
    """Codes of ``w`` on a scaled grid (per-input-channel steps, masked rows/channels at 0).

    With ``comp`` (:func:`compensation`) each column's output error is pushed
    onto the columns not rounded yet, as in :func:`compensated_codes`, and
    with ``prior`` (the base's codes on this grid) codes stay at the base's
    where that costs little output error (:class:`Prior`).
    """
    cout, cin, taps = scaled_layout(w.shape)
    col_steps = np.repeat(level_steps(step)[cols].astype(np.float64), taps)
    if comp is None:
        flat = w.reshape(cout, -1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(col_steps > 0, np.rint(flat / np.where(col_steps > 0, col_steps, 1.0)), 0.0)
        codes = np.clip(c, -GRID_MAX_CODE, GRID_MAX_CODE).astype(np.int64)
    else:
        def rounding(j: int, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            s = col_steps[j]
            if s == 0:
                return np.zeros(col.size, dtype=np.int64), np.zeros(col.size)
            c = np.clip(np.rint(col / s), -GRID_MAX_CODE, GRID_MAX_CODE).astype(np.int64)
            return c, c * s

        toward = None
        if prior is not None and prior.penalty > 0:
            pcodes = prior.codes.reshape(cout, -1)
            allowance = prior.penalty * col_steps**2 / _column_weights(comp, col_steps.size)

            def toward(j: int, col: np.ndarray, c: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                if col_steps[j] == 0:
                    return c, q
                return _toward_prior(col, c, q, pcodes[:, j], pcodes[:, j] * col_steps[j], float(allowance[j]))

        codes = _compensated(w, comp, rounding, toward).reshape(cout, -1)
    codes[rows.astype(bool)] = 0
    return codes.ravel()


def live_codes(shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The codes outside masked rows and channels, in order (what the entropy-coded stream holds)."""
    cout, cin, taps = scaled_layout(shape)
    return codes.reshape(cout, cin, taps)[rows == 0][:, cols != MASKED].ravel()


def fill_codes(shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, live: np.ndarray, zero: int,
               out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`live_codes`: masked positions get ``zero`` (written into ``out`` when given)."""
    cout, cin, taps = scaled_layout(shape)
    codes = (np.empty(cout * cin * taps, dtype=np.int64) if out is None else out).reshape(cout, cin, taps)
    keep_rows, keep_cols = np.flatnonzero(rows == 0), np.flatnonzero(cols != MASKED)
    if keep_rows.size == cout and keep_cols.size == cin:
        codes[...] = live.reshape(cout, cin, taps)
    else:
        codes.fill(zero)
        codes[np.ix_(keep_rows, keep_cols)] = live.reshape(keep_rows.size, keep_cols.size, taps)
    return codes.reshape(-1)


def masked_codes_are(shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, codes: np.ndarray, zero: int) -> bool:
    """Whether every masked position holds ``zero``."""
    cout, cin, taps = scaled_layout(shape)
    c = codes.reshape(cout, cin, taps)
    return bool(np.all(c[rows != 0] == zero) and np.all(c[:, cols == MASKED] == zero))


def scaled_values(shape: tuple[int, ...], step: np.float32, rows: np.ndarray, cols: np.ndarray,
                  codes: np.ndarray) -> np.ndarray:
    """Scaled-grid dequantization: one exact float32 product per weight (code * its channel's step)."""
    cout, cin, taps = scaled_layout(shape)
    steps = level_steps(step)[cols]
    return (codes.reshape(cout, cin, taps).astype(np.float32) * steps[None, :, None]).ravel()
