"""Choose each tensor's encoding: bit widths, sparsity, rank, and grid reuse, under the accuracy gate.

For the ``deep`` codec every quantizable layer gets a menu of options (cell
width x sparsity, plus "stay on the base package's codebook" when a base is
given), each with its estimated bytes and its relative weight error
(noise-to-signal ratio, NSR).  Each layer's NSR is weighted by its measured
sensitivity: the output error on a few probe samples when only that layer is
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


@dataclass
class Option:
    """One way to encode one layer: its cost, its error, and how to build it."""

    label: str
    nbytes: float
    nsr: float
    build: Callable[[], Coded]


def quantizable(w: np.ndarray) -> bool:
    """Weights worth quantizing: matrices and kernels; biases and tiny tensors stay exact."""
    return w.ndim >= 2 and w.size >= QUANT_MIN_ELEMENTS


def _rms(w: np.ndarray) -> float:
    return float(np.sqrt(np.mean(w.astype(np.float64) ** 2))) or 1.0


def _nsr(w: np.ndarray, approx: np.ndarray) -> float:
    power = float(np.sum(w.astype(np.float64) ** 2)) or 1.0
    return float(np.sum((w.astype(np.float64) - approx) ** 2)) / power


def sensitivity(name: str, w: np.ndarray, base: Coded | None, probe: Probe) -> float:
    """How much the outputs move per unit of this layer's relative error (from the base if known)."""
    if base is not None and base.shape == w.shape and "sensitivity" in base.meta:
        return float(base.meta["sensitivity"])
    step = SENSITIVITY_STEP * _rms(w)
    approx = (np.rint(w / step) * step).astype(np.float32)
    return float(f"{probe.sensitivity(name, approx, _nsr(w, approx)):.4g}")


def deep_options(w: np.ndarray, base: Coded | None, sens: float, moments: np.ndarray | None = None) -> list[Option]:
    """The per-layer menu for ``deep``; with a compatible base, its codebook is on it too.

    Costs and errors are estimated with round-to-nearest; the chosen options
    are built with output-error compensation when ``moments`` are known.
    """
    options = []
    rms = _rms(w)
    upper = quantize.compensation(moments) if moments is not None else None
    for sparsity in DEEP_SPARSITY:
        threshold = quantize.prune_threshold(w, sparsity)
        for rel in DEEP_STEPS:
            cells, nsr, entries = quantize.estimate(w, rel * rms, threshold)
            cost = entropy.estimate_bytes(cells) + 4 * entries
            build = (lambda st=rel * rms, sp=sparsity: _with(tensors.encode_deep(w, st, sp, upper), sens))  # noqa: E731
            options.append(Option(f"step{rel:.3g}/s{sparsity}", cost, nsr * sens, functools.cache(build)))
    if base is not None and base.kind == "deep" and base.shape == w.shape:
        thr, grid, book = float(base.meta.get("threshold", 0.0)), bool(base.meta.get("grid")), base.params
        coded = tensors.deep_on_book(w, book, thr, grid, upper)
        codes = coded.symbols
        cost = entropy.estimate_bytes(codes - base.symbols) if not np.array_equal(codes, base.symbols) else 0.0
        # error estimated with round-to-nearest, like the fresh options it competes with
        approx = tensors.values(tensors.deep_on_book(w, book, thr, grid))
        options.append(Option("reuse", cost, _nsr(w, approx) * sens, lambda: _with(coded, sens)))
    return options


def _with(coded: Coded, sens: float) -> Coded:
    coded.meta["sensitivity"] = sens
    return coded


def pick(menus: dict[str, list[Option]], lam: float) -> dict[str, Option]:
    """Per layer, the option minimizing bytes + lam * NSR."""
    return {name: min(menu, key=lambda o: o.nbytes + lam * o.nsr) for name, menu in menus.items()}


def _fixed(weights: dict[str, np.ndarray]) -> dict[str, Coded]:
    return {name: tensors.encode_float(w) for name, w in weights.items() if not quantizable(w)}


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
    moments = probe.moments
    for n, w in weights.items():
        if quantizable(w):
            menus[n] = deep_options(w, base.get(n), sensitivity(n, w, base.get(n), probe), moments.get(n))
    fixed = _fixed(weights)
    if min_agreement is None:
        coded = _assemble(pick(menus, DEFAULT_LAMBDA), fixed, weights)
        return coded, _measure(probe, coded), {"lambda": DEFAULT_LAMBDA, "trials": 1}
    on_base = bool(base) and _base_pays(menus)
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
        return scan.coded, scan.fidelity, info
    low = _pinned(menus, scan.below) if on_base else pick(menus, scan.below)
    coded, fid, switched, trials = _refine(menus, low, pick(menus, scan.value), fixed, weights, scan, probe,
                                           min_agreement)
    return coded, fid, {**info, "trials": info["trials"] + trials, "refined_layers": switched}


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
    fresh = [min((o for o in menu if o.label != "reuse"), key=lambda o: o.nbytes + DEFAULT_LAMBDA * o.nsr)
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
    raise FidelityGateError(
        f"int8 reaches top-1 agreement {fid.top1_agreement:.4f} (expected {fid.expected_agreement:.4f}) "
        f"< {min_agreement:.4f} on the probe; "
        "use --codec deep (it keeps sensitive layers finer) or lossless"
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
