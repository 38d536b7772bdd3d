"""Choose each tensor's encoding: bit widths, sparsity, rank, and grid reuse, under the accuracy gate.

For the ``deep`` codec every quantizable layer gets a menu of options (cell
width x sparsity, the same widths with the layer's dead channels masked to
exact zeros when it has any, plus "stay on the base package's codebook" when
a base is given), each with its estimated bytes and its relative weight
error (noise-to-signal ratio, NSR; where the input statistics are known each
weight's error counts by the energy of the input it multiplies).  Each
layer's NSR is weighted by its measured sensitivity: the output error on a few probe samples when only that layer is
perturbed (layers differ by three orders of magnitude in SqueezeNet: early
squeeze layers are fragile, the large late 3x3 expands are not).  For a
Lagrange multiplier ``lam`` each layer independently takes the option
minimizing ``bytes + lam * sensitivity * NSR``.  The bytes of a reuse
option are those of its *delta* against the base codes, because that is what
cars pay; a layer that did not change costs nothing and is always reused.

The gate then walks a ladder of ``lam`` values upward (see ``_scan``),
decoding and measuring each candidate model on the probe, and keeps the
smallest encoding whose top-1 agreement, measured and expected (see
``fidelity.Reference.expected_agreement``), reaches ``min_agreement``.  ``int8`` has no knob (it is
checked once); ``svd`` walks a ladder of kept singular-value energy instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models.codec import entropy, quantize, tensors
from models.codec.fidelity import Fidelity
from models.codec.tensors import Coded
from models.errors import FidelityGateError

QUANT_MIN_ELEMENTS = 256
DEEP_STEPS = tuple(2 ** (-k / 2) for k in range(1, 21))  # cell width, in units of the layer's RMS
DEEP_SPARSITY = (0.0, 0.5)
LAMBDAS = tuple(10 ** (k / 8) for k in range(24, 81))  # 1e3 .. 1e10
DEFAULT_LAMBDA = 1e7
BIAS_STEP = 1 / 256  # bias grid step, in units of the bias vector's RMS: an error ~60 dB below it
SENSITIVITY_STEP = 0.1  # probe perturbation: cells of 0.1 RMS, NSR ~ 1e-3
SVD_ENERGY = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9999)
DEFAULT_SVD_ENERGY = 0.995
SVD_MAX_RANK = 1000  # keeps the integer factor product exact in float32


class Probe(Protocol):
    """The measurements the allocator needs (``fidelity.Gate``)."""

    def measure(self, weights: dict[str, np.ndarray]) -> Fidelity: ...

    def sensitivity(self, name: str, approx: np.ndarray, nsr: float) -> float: ...

    @property
    def moments(self) -> dict[str, np.ndarray]: ...

    @property
    def dead_rows(self) -> dict[str, np.ndarray]: ...

    @property
    def biases(self) -> set[str]: ...

    @property
    def dead_inputs(self) -> dict[str, np.ndarray]: ...


@dataclass
class Option:
    """One way to encode one layer: its cost, its error, and how to build it."""

    label: str
    nbytes: float
    nsr: float
    build: Callable[[], Coded]


PALETTE_MAX = 256  # distinct values up to which a layer is offered its exact palette (8-bit codes at most)


def quantizable(w: np.ndarray) -> bool:
    """Weights worth quantizing: matrices and kernels; biases and tiny tensors stay exact."""
    return w.ndim >= 2 and w.size >= QUANT_MIN_ELEMENTS


def _rms(w: np.ndarray) -> float:
    return float(np.sqrt(np.mean(w.astype(np.float64) ** 2))) or 1.0


def _nsr(w: np.ndarray, approx: np.ndarray, weigh: np.ndarray | None = None) -> float:
    """Relative squared error; with ``weigh`` (see :func:`weighting`) each weight counts by what it moves at the output."""
    w64 = w.astype(np.float64).reshape(w.shape[0], -1)
    err = (w64 - np.asarray(approx, dtype=np.float64).reshape(w64.shape)) ** 2
    if weigh is None:
        return float(err.sum()) / (float(np.sum(w64**2)) or 1.0)
    return float(np.sum(err * weigh)) / (float(np.sum(w64**2 * weigh)) or 1.0)


def weighting(w: np.ndarray, moments: np.ndarray | None, dead: np.ndarray | None) -> np.ndarray | None:
    """Per-weight output weight of an error: the input energy of its column, 0 on dead output channels.

    A layer's output error is sum_o e_o^T H e_o; its diagonal part weighs each
    weight's error by the energy of the input it multiplies.  Masked layouts
    zero the weights of unused inputs and outputs, so errors must be counted
    this way for the options of one layer to compete fairly.
    """
    if moments is None:
        return None
    cols = np.diag(moments).astype(np.float64)
    if cols.size != w[0].size:
        return None
    rows = np.ones(w.shape[0]) if dead is None else (~dead).astype(np.float64)
    return rows[:, None] * cols[None, :]


def sensitivity(name: str, w: np.ndarray, base: Coded | None, probe: Probe, weigh: np.ndarray | None = None) -> float:
    """How much the outputs move per unit of this layer's relative error (from the base if known)."""
    if base is not None and base.shape == w.shape and "sensitivity" in base.meta:
        return float(base.meta["sensitivity"])
    step = SENSITIVITY_STEP * _rms(w)
    approx = (np.rint(w / step) * step).astype(np.float32)
    return float(f"{probe.sensitivity(name, approx, max(_nsr(w, approx, weigh), 1e-30)):.4g}")


def deep_options(w: np.ndarray, base: Coded | None, sens: float, moments: np.ndarray | None = None,
                 dead: np.ndarray | None = None, dead_inputs: np.ndarray | None = None) -> list[Option]:
    """The per-layer menu for ``deep``; with a compatible base, its codebook is on it too.

    Costs and errors are estimated with round-to-nearest; the chosen options
    are built with output-error compensation when ``moments`` are known.  With
    ``moments`` the menu also holds masked grids: ``dead`` output channels and
    ``dead_inputs`` (input channels zero on the whole probe) are exact zeros.
    """
    options = []
    rms = _rms(w)
    upper = quantize.compensation(moments) if moments is not None else None
    weigh = weighting(w, moments, dead)
    for sparsity in DEEP_SPARSITY:
        threshold = quantize.prune_threshold(w, sparsity)
        for rel in DEEP_STEPS:
            cells, nsr, entries = quantize.estimate(w, rel * rms, threshold)
            if weigh is not None:
                nsr = _nsr(w, _estimate_values(w, cells, rel * rms, entries), weigh)
            cost = entropy.estimate_bytes(cells) + 4 * entries
            build = (lambda st=rel * rms, sp=sparsity: _with(tensors.encode_deep(w, st, sp, upper), sens))  # noqa: E731
            options.append(Option(f"step{rel:.3g}/s{sparsity}", cost, nsr * sens, functools.cache(build)))
    if weigh is not None and moments is not None:
        options += _scaled_options(w, dead, dead_inputs, weigh, sens, upper)
    palette = _palette_option(w, sens)
    if palette is not None:
        options.append(palette)
    if base is not None and base.kind == "deep" and base.shape == w.shape:
        options += _reuse_options(w, base, sens, upper, weigh)
    return options


def _on_base(w: np.ndarray, base: Coded) -> Callable[[quantize.Compensation | None, float], Coded]:
    """Codes of ``w`` on the base's codebook/grid (and masks), leaning toward its codes by a penalty."""
    scaled = bool(base.meta.get("scaled"))
    thr, grid, book = float(base.meta.get("threshold", 0.0)), bool(base.meta.get("grid")), base.params

    def on_book(comp: quantize.Compensation | None, penalty: float = 0.0) -> Coded:
        if scaled:
            return tensors.masked_on_book(w, base, comp, penalty)
        prior = quantize.Prior(base.symbols, penalty) if penalty > 0 else None
        return tensors.deep_on_book(w, book, thr, grid, comp, prior)

    return on_book


def _reuse_options(w: np.ndarray, base: Coded, sens: float, upper: quantize.Compensation | None,
                   weigh: np.ndarray | None) -> list[Option]:
    """Stay on the base's codebook/grid, with plain compensated rounding.

    Costed at the entropy of the code differences against the base (what a car
    pays); its error is estimated with round-to-nearest, like the fresh options
    it competes with.
    """
    on_book = _on_base(w, base)
    nsr = _nsr(w, tensors.values(on_book(None, 0.0)), weigh) * sens
    plain = on_book(upper, 0.0)
    return [Option("reuse", _delta_bytes(plain, base), nsr, lambda: _with(plain, sens))]


def rd_options(w: np.ndarray, base: Coded, reuse: Option, moments: np.ndarray | None,
               dead: np.ndarray | None) -> list[Option]:
    """Rate-distortion rounding against the base: ``reuse~p`` keeps a code at the base's value where that
    raises the layer's output error by at most ``p`` squared steps (``quantize.Prior``).

    Fewer changed codes for a little more error.  A ``reuse~p`` option's error
    is the plain ``reuse`` estimate times the ratio of its real output error
    (through the input moments) to plain compensated rounding's, so the menu
    still compares like with like.  Offered only for a successor of the base
    (see ``choose_deep``), and only for a layer whose codes changed.
    """
    plain = reuse.build()
    if moments is None or np.array_equal(plain.symbols, base.symbols):
        return []
    upper = quantize.compensation(moments)
    if upper is None:
        return []
    sens = float(plain.meta.get("sensitivity", 1.0))
    on_book = _on_base(w, base)
    plain_err = _output_error(w, tensors.values(plain), moments, dead)
    options = []
    for penalty in REUSE_PENALTIES:
        coded = on_book(upper, penalty)
        ratio = _output_error(w, tensors.values(coded), moments, dead) / max(plain_err, 1e-300)
        options.append(Option(f"reuse~{penalty:g}", _delta_bytes(coded, base), reuse.nsr * ratio,
                              functools.partial(_with, coded, sens)))
    return options


SUCCESSOR_CHANGE = 1.0  # |w - base|^2 / |w|^2 up to which a layer counts as a successor of the base's (unrelated: ~2)


def _change(w: np.ndarray, base: Coded) -> float:
    """Relative squared change of a layer from the base's decoded weights (about 2 for an unrelated layer)."""
    old = tensors.values(base).astype(np.float64)
    return float(np.sum((w - old) ** 2)) / (float(np.sum(w.astype(np.float64) ** 2)) or 1.0)


# Rate-distortion rounding against the base: how many squared steps of output error a kept base code may cost
REUSE_PENALTIES = (0.5, 1.0, 2.0, 4.0, 8.0)


def _delta_bytes(coded: Coded, base: Coded) -> float:
    """Estimated bytes of the ``codes`` delta op from ``base`` (0 when nothing changed)."""
    if np.array_equal(coded.symbols, base.symbols):
        return 0.0
    return entropy.estimate_bytes(coded.symbols - base.symbols)


def _output_error(w: np.ndarray, approx: np.ndarray, moments: np.ndarray, dead: np.ndarray | None) -> float:
    """sum over live output channels of e H e^T: the layer's output error on the probe's input statistics."""
    e = w.astype(np.float64).reshape(w.shape[0], -1) - np.asarray(approx, dtype=np.float64).reshape(w.shape[0], -1)
    if dead is not None and dead.size == e.shape[0]:
        e = e[~dead.astype(bool)]
    if e.shape[1] != moments.shape[0]:
        return float(np.sum(e**2))
    return float(np.einsum("ij,jk,ik->", e, moments.astype(np.float64), e))


def _palette_option(w: np.ndarray, sens: float) -> Option | None:
    """The layer's own values as its codebook, when it has at most ``PALETTE_MAX`` of them: exact, zero error.

    A model that was already compressed with shared weights (the Deep Compression release of the real
    ImageNet SqueezeNet holds 256 distinct values per layer) is stored exactly for the entropy of its
    codes, far below its float bits; any coarser option must beat that price to be picked.
    """
    book = np.unique(w.astype(np.float32))
    if book.size > PALETTE_MAX:
        return None
    coded = tensors.deep_on_book(w, book, 0.0)
    if not np.array_equal(tensors.values(coded), w):
        return None  # every value must come back as it was, or this is not the exact option it claims to be
    cost = entropy.estimate_bytes(coded.symbols) + 4 * book.size
    return Option("palette", cost, 0.0, lambda: _with(coded, sens))


def _estimate_values(w: np.ndarray, cells: np.ndarray, step: float, entries: int) -> np.ndarray:
    """Round-to-nearest values of :func:`quantize.estimate`'s cells (cell means for a codebook, as it assumes)."""
    if entries == 1:
        return cells * float(np.float32(step))
    flat = w.ravel().astype(np.float64)
    shifted = cells - cells.min()
    means = np.bincount(shifted, weights=flat) / np.maximum(np.bincount(shifted), 1)
    values = means[shifted]
    values[cells == 0] = 0.0
    return values


def _scaled_options(w: np.ndarray, dead: np.ndarray | None, dead_inputs: np.ndarray | None, weigh: np.ndarray,
                    sens: float, upper: quantize.Compensation | None) -> list[Option]:
    """Masked grids at every step of the menu: dead input and output channels are 0.0 and cost nothing.

    Same error as the plain grid at the same step (the masked weights move no
    output on the probe), fewer bytes; offered only when the layer has a mask.
    """
    cout, cin, _ = quantize.scaled_layout(w.shape)
    no_inputs = dead_inputs if dead_inputs is not None and dead_inputs.size == cin else np.zeros(cin, bool)
    cols = quantize.channel_levels(no_inputs)
    rows = dead.astype(np.int64) if dead is not None and dead.size == cout else np.zeros(cout, np.int64)
    if not rows.any() and np.all(cols == -quantize.LEVEL_MIN):
        return []  # the plain grid already is this option
    mask = quantize.scaled_mask(tuple(w.shape), rows, cols)
    side = entropy.estimate_bytes(np.concatenate([rows, cols]))
    options = []
    rms = _rms(w)
    live = w.ravel()[~mask]
    for rel in DEEP_STEPS:
        step = float(np.float32(rel * rms))
        cells, _, entries = quantize.estimate(live, step, 0.0)
        approx = np.zeros(w.size)
        approx[~mask] = _estimate_values(live, cells, step, entries)
        cost = entropy.estimate_bytes(cells) + 4 * entries + side
        build = (lambda st=step: _with(tensors.encode_scaled(w, st, rows, cols, upper), sens))  # noqa: E731
        options.append(Option(f"scaled{rel:.3g}", cost, _nsr(w, approx, weigh) * sens, functools.cache(build)))
    return options


def _with(coded: Coded, sens: float) -> Coded:
    coded.meta["sensitivity"] = sens
    return coded


def pick(menus: dict[str, list[Option]], lam: float) -> dict[str, Option]:
    """Per layer, the option minimizing bytes + lam * NSR."""
    return {name: min(menu, key=lambda o: o.nbytes + lam * o.nsr) for name, menu in menus.items()}


def _fixed(weights: dict[str, np.ndarray], biases: set[str] | None = None,
           base: dict[str, Coded] | None = None) -> dict[str, Coded]:
    """Tensors outside the allocation: exact float32, except ``biases`` on a fine grid.

    A bias error adds a constant to one output channel; at 1/256 of the
    biases' RMS it is far below the weights' quantization noise, and it takes
    the biases from 33 bits each (exact float32) to about 10.  On a ``base``
    whose bias grid is within a factor of 2 of that step, the base's step is
    kept: a fine-tune moves biases by a few steps at most, so the delta holds
    small code differences instead of a whole re-gridded vector.
    """
    out = {}
    for name, w in weights.items():
        if quantizable(w):
            continue
        if biases and name in biases and w.ndim == 1 and np.any(w):
            step = np.float32(BIAS_STEP * _rms(w))
            old = (base or {}).get(name)
            if (old is not None and old.kind == "deep" and old.meta.get("grid") and old.shape == w.shape
                    and old.params.size == 1 and 0.5 * step <= old.params[0] <= 2 * step):
                step = np.float32(old.params[0])
            out[name] = tensors.deep_on_book(w, np.array([step], dtype=np.float32), 0.0, grid=True)
        else:
            out[name] = tensors.encode_float(w)
    return out


def _measure(probe: Probe, coded: dict[str, Coded]) -> Fidelity:
    return probe.measure({n: tensors.values(c) for n, c in coded.items()})


Choice = tuple[dict[str, Coded], Fidelity, dict[str, Any]]


@dataclass
class Scan:
    """Outcome of a ladder scan: the first passing rung and the rung just below it (failed)."""

    value: float
    coded: dict[str, Coded]
    fidelity: Fidelity
    trials: int
    below: float | None


def _scan(ladder: tuple[float, ...], build: Callable[[float], dict[str, Coded]], probe: Probe,
          min_agreement: float, stride: int = 1, lowest_first: bool = False) -> Scan:
    """Smallest ladder value whose candidate passes the gate.

    Bisects over every ``stride``-th rung (the gate's expected-agreement half
    grows smoothly along the ladder), then walks up the rungs it skipped
    below the first coarse pass: measured agreement on a probe with near-ties
    is not monotone, and the smallest passing candidate is the one wanted.
    """
    trials = 0
    results: dict[int, tuple[dict[str, Coded], Fidelity]] = {}

    def attempt(i: int) -> bool:
        nonlocal trials
        if i not in results:
            trials += 1
            coded = build(ladder[i])
            results[i] = (coded, _measure(probe, coded))
        return results[i][1].passes(min_agreement)

    coarse = list(range(0, len(ladder), stride))
    if coarse[-1] != len(ladder) - 1:
        coarse.append(len(ladder) - 1)
    if lowest_first and attempt(0):
        return Scan(ladder[0], *results[0], trials, None)
    lo, hi, first = 0, len(coarse) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if attempt(coarse[mid]):
            first, hi = mid, mid - 1
        else:
            lo = mid + 1
    if first is None:
        fid = results[coarse[-1]][1]
        raise FidelityGateError(
            f"no encoding reaches top-1 agreement {min_agreement:.4f} on the probe with half its disagreement "
            f"budget to spare (finest setting: measured {fid.top1_agreement:.4f}, expected "
            f"{fid.expected_agreement:.4f}); lower --min-agreement or use --codec lossless"
        )
    start = coarse[first - 1] + 1 if first > 0 else 0
    for j in range(start, coarse[first] + 1):
        if attempt(j):
            return Scan(ladder[j], *results[j], trials, ladder[j - 1] if j > 0 else None)
    raise AssertionError("unreachable: the coarse rung passed")


def choose_deep(weights: dict[str, np.ndarray], base: dict[str, Coded], probe: Probe,
                min_agreement: float | None) -> Choice:
    """Deep Compression with per-layer cell width/sparsity (and grid reuse) chosen under the gate."""
    menus = {}
    moments, dead, dead_inputs = probe.moments, probe.dead_rows, probe.dead_inputs
    for n, w in weights.items():
        if quantizable(w):
            weigh = weighting(w, moments.get(n), dead.get(n))
            sens = sensitivity(n, w, base.get(n), probe, weigh)
            menus[n] = deep_options(w, base.get(n), sens, moments.get(n), dead.get(n), dead_inputs.get(n))
    for n, menu in menus.items():
        reuse = next((o for o in menu if o.label == "reuse"), None)
        # only where the layer is a successor of the base's: rounding a layer retrained from scratch toward the
        # base's codes would keep another model's codes, a small delta but a bigger package for new cars
        if reuse is not None and _change(weights[n], base[n]) <= SUCCESSOR_CHANGE:
            menu += rd_options(weights[n], base[n], reuse, moments.get(n), dead.get(n))
    on_base = bool(base) and _base_pays(menus)
    fixed = _fixed(weights, probe.biases, base if on_base else None)
    if min_agreement is None:
        coded = _assemble(pick(menus, DEFAULT_LAMBDA), fixed, weights)
        return coded, _measure(probe, coded), {"lambda": DEFAULT_LAMBDA, "trials": 1}
    if on_base:
        # first try: unchanged layers keep the base's grids, only changed layers are chosen anew
        try:
            kept = _scan(LAMBDAS, lambda lam: _assemble(_pinned(menus, lam), fixed, weights), probe, min_agreement,
                         stride=4, lowest_first=True)
            return kept.coded, kept.fidelity, {"lambda": float(f"{kept.value:.6g}"), "trials": kept.trials,
                                               "kept_base_grids": True}
        except FidelityGateError:
            pass
    scan = _scan(LAMBDAS, lambda lam: _assemble(pick(menus, lam), fixed, weights), probe, min_agreement, stride=4)
    info: dict[str, Any] = {"lambda": float(f"{scan.value:.6g}"), "trials": scan.trials}
    if scan.below is None:
        return _exact_where_smaller(menus, scan.coded, scan.fidelity, probe, min_agreement, info)
    low = _pinned(menus, scan.below) if on_base else pick(menus, scan.below)
    coded, fid, switched, trials = _refine(menus, low, pick(menus, scan.value), fixed, weights, scan, probe,
                                           min_agreement)
    return _exact_where_smaller(menus, coded, fid, probe, min_agreement,
                                {**info, "trials": info["trials"] + trials, "refined_layers": switched})


def _exact_where_smaller(menus: dict[str, list[Option]], coded: dict[str, Coded], fid: Fidelity, probe: Probe,
                         min_agreement: float, info: dict[str, Any]) -> Choice:
    """Swap in a layer's exact palette wherever its real payload is smaller than the chosen encoding's.

    The menu's costs are round-to-nearest estimates; compensated rounding spreads codes over more
    levels, so a fine grid can end up larger than the exact palette it was preferred to.  The swap
    only removes error, but agreement is re-measured and the swap kept only if the gate still holds.
    """
    swapped = dict(coded)
    names = []
    for name, menu in menus.items():
        palette = next((o for o in menu if o.label == "palette"), None)
        if palette is not None and coded[name].kind == "deep":
            exact = palette.build()
            if len(tensors.to_payload(exact)) < len(tensors.to_payload(coded[name])):
                swapped[name] = exact
                names.append(name)
    if not names:
        return coded, fid, info
    measured = _measure(probe, swapped)
    if not measured.passes(min_agreement):
        return coded, fid, info
    return swapped, measured, {**info, "exact_layers": len(names)}


def _pinned(menus: dict[str, list[Option]], lam: float) -> dict[str, Option]:
    """Unchanged layers stay on the base's grid (zero bytes); only the changed ones follow ``lam``."""
    out = {}
    for n, menu in menus.items():
        reuse = next((o for o in menu if o.label == "reuse"), None)
        out[n] = reuse if reuse is not None and reuse.nbytes == 0 else min(menu, key=lambda o: o.nbytes + lam * o.nsr)
    return out


def _base_pays(menus: dict[str, list[Option]]) -> bool:
    """Staying on the base's grids must clearly pay (under half of packing afresh).

    A model retrained from scratch is cheaper sent afresh than as code
    differences on grids fitted to another model.
    """
    fresh = [min((o for o in menu if not o.label.startswith("reuse")), key=lambda o: o.nbytes + DEFAULT_LAMBDA * o.nsr)
             for menu in menus.values()]
    kept = _pinned(menus, DEFAULT_LAMBDA)
    return sum(o.nbytes for o in kept.values()) < 0.5 * sum(o.nbytes for o in fresh)


def _assemble(choice: dict[str, Option], fixed: dict[str, Coded], weights: dict[str, np.ndarray]) -> dict[str, Coded]:
    chosen = {n: o.build() for n, o in choice.items()}
    return {n: chosen[n] if n in chosen else fixed[n] for n in weights}


def _refine(menus: dict[str, list[Option]], low: dict[str, Option], high: dict[str, Option],
            fixed: dict[str, Coded], weights: dict[str, np.ndarray], scan: Scan,
            probe: Probe, min_agreement: float) -> tuple[dict[str, Coded], Fidelity, int, int]:
    """From a failing choice toward the passing one, switch only as many layers as the gate needs.

    Lagrangian allocation equalizes the layers' marginal trade-offs, so one
    rung up the ladder changes many layers at once; when the base package's
    grids fail the gate by a sample or two, that re-sends whole layers.
    Layers are switched one at a time instead, cheapest bytes per unit of
    error removed first, bisecting on how many it takes.
    """
    changed = [n for n in menus if low[n] is not high[n]]
    changed.sort(key=lambda n: (high[n].nbytes - low[n].nbytes) / max(low[n].nsr - high[n].nsr, 1e-30))

    def candidate(k: int) -> dict[str, Coded]:
        return _assemble({n: high[n] if n in changed[:k] else low[n] for n in menus}, fixed, weights)

    best = (scan.coded, scan.fidelity, len(changed))
    lo, hi, trials = 1, len(changed) - 1, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        coded = candidate(mid)
        fid = _measure(probe, coded)
        trials += 1
        if fid.passes(min_agreement):
            best, hi = (coded, fid, mid), mid - 1
        else:
            lo = mid + 1
    return best[0], best[1], best[2], trials


def choose_int8(weights: dict[str, np.ndarray], base: dict[str, Coded], probe: Probe,
                min_agreement: float | None) -> Choice:
    """Per-channel int8, on the base's scales wherever they cover the new weights."""

    def build(reuse: bool) -> dict[str, Coded]:
        out = _fixed(weights)
        for name, w in weights.items():
            if name in out:
                continue
            b = base.get(name) if reuse else None
            fits = b is not None and b.kind == "int8" and b.shape == w.shape and bool(
                np.all(np.abs(w.reshape(w.shape[0], -1)).max(axis=1) <= b.params * np.float32(127.5)))
            out[name] = tensors.encode_int8(w, b.params if fits and b is not None else None)
        return {n: out[n] for n in weights}

    fid = Fidelity(0.0, float("inf"))
    for reuse in ((True, False) if base else (False,)):
        coded = build(reuse)
        fid = _measure(probe, coded)
        if min_agreement is None or fid.passes(min_agreement):
            return coded, fid, {"reused_grid": reuse}
    assert min_agreement is not None  # without a gate the first build was returned
    raise FidelityGateError(
        f"int8 reaches top-1 agreement {fid.top1_agreement:.4f} on the probe (expected "
        f"{fid.expected_agreement:.4f} under its output noise); the gate {min_agreement:.4f} needs at least that "
        f"measured and {1.0 - (1.0 - min_agreement) / 2:.4f} expected (a pass must not be a lucky draw on near "
        "ties); use --codec deep (it keeps sensitive layers finer) or lossless"
    )


def _svd_one(w: np.ndarray, energy: float) -> Coded:
    matrix = w.reshape(w.shape[0], -1)
    is_pointwise = w.ndim == 2 or (w.ndim == 4 and w.shape[2] == w.shape[3] == 1)
    if is_pointwise:
        rank = quantize.svd_rank(matrix, energy)
        if rank <= SVD_MAX_RANK and rank * sum(matrix.shape) < matrix.size:
            return tensors.encode_svd(w, rank)
    return tensors.encode_int8(w)


def choose_svd(weights: dict[str, np.ndarray], base: dict[str, Coded], probe: Probe,
               min_agreement: float | None) -> Choice:
    """Low-rank 1x1 convolutions (int8 factors); other kernels int8."""
    fixed = _fixed(weights)

    def build(energy: float) -> dict[str, Coded]:
        return {n: fixed[n] if n in fixed else _svd_one(w, energy) for n, w in weights.items()}

    if min_agreement is None:
        coded = build(DEFAULT_SVD_ENERGY)
        return coded, _measure(probe, coded), {"energy": DEFAULT_SVD_ENERGY}
    scan = _scan(SVD_ENERGY, build, probe, min_agreement)
    return scan.coded, scan.fidelity, {"energy": scan.value, "trials": scan.trials}


CHOOSERS: dict[str, Callable[[dict[str, np.ndarray], dict[str, Coded], Probe, float | None], Choice]] = {
    "deep": choose_deep,
    "int8": choose_int8,
    "svd": choose_svd,
}
