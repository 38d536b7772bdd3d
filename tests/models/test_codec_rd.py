"""Rate-distortion rounding against the base: smaller fine-tune deltas, same gate, same format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import codec
from models.codec import allocate, quantize
from models.preprocess import to_input
from tests.models.format2_fixtures import versions

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
DATA = Path(__file__).resolve().parent / "data"


def _layer(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 64 x 144 layer, its fine-tuned successor (+2% of its RMS) and correlated input second moments."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.1, (64, 16, 3, 3)).astype(np.float32)
    x = rng.normal(0, 1, (2000, 144)) @ (np.eye(144) + 0.3 * rng.normal(0, 1, (144, 144)) / 12)
    moments = x.T @ x / len(x)
    w2 = (w + rng.normal(0, 0.002, w.shape)).astype(np.float32)
    return w, w2, moments


def _output_error(w: np.ndarray, codes: np.ndarray, step: float, moments: np.ndarray) -> float:
    e = w.reshape(64, -1).astype(np.float64) - codes.reshape(64, -1) * step
    return float(np.einsum("ij,jk,ik->", e, moments, e))


def test_rd_rounding_keeps_base_codes_for_a_bounded_output_error() -> None:
    w, w2, moments = _layer()
    comp = quantize.compensation(moments)
    assert comp is not None
    book = np.array([np.float32(0.02)], dtype=np.float32)
    base = quantize.compensated_codes(w, book, 0.0, True, comp)
    plain = quantize.compensated_codes(w2, book, 0.0, True, comp)
    # penalty 0 is exactly the plain compensated rounding
    assert np.array_equal(quantize.compensated_codes(w2, book, 0.0, True, comp, quantize.Prior(base, 0.0)), plain)
    rd = quantize.compensated_codes(w2, book, 0.0, True, comp, quantize.Prior(base, 1.0))
    changed_plain, changed_rd = np.mean(plain != base), np.mean(rd != base)
    assert changed_rd < 0.5 * changed_plain  # most re-rounded codes go back to the base's
    step = float(book[0])
    # the kept codes cost output error, but a bounded amount: well under the grid's own rounding noise x 4
    assert _output_error(w2, rd, step, moments) < 4 * _output_error(w2, plain, step, moments)
    # and the codes stay on the grid the base uses (what the `codes` delta op needs)
    assert entropy_bytes(rd - base) < entropy_bytes(plain - base)


def entropy_bytes(d: np.ndarray) -> float:
    from models.codec import entropy
    return entropy.estimate_bytes(d)


def test_rd_rounding_on_a_masked_layout_keeps_masked_codes_zero() -> None:
    w, w2, moments = _layer(1)
    comp = quantize.compensation(moments)
    rows = np.zeros(64, np.int64)
    rows[:5] = 1
    cols = quantize.channel_levels(np.arange(16) % 7 == 0)
    step = np.float32(0.02)
    base = quantize.scaled_codes(w, step, rows, cols, comp)
    rd = quantize.scaled_codes(w2, step, rows, cols, comp, quantize.Prior(base, 2.0))
    assert quantize.masked_codes_are(w.shape, rows, cols, rd, 0)
    assert np.mean(rd != base) < np.mean(quantize.scaled_codes(w2, step, rows, cols, comp) != base)


def test_packages_and_patches_made_before_rd_rounding_still_decode_and_apply() -> None:
    """Cars hold packages made by the previous encoder: the decoder reads them unchanged."""
    pa, pb = (DATA / "format2_a.pkg").read_bytes(), (DATA / "format2_b.pkg").read_bytes()
    old_patch = (DATA / "format2_ab.patch").read_bytes()
    assert codec.patch(pa, old_patch) == pb
    a, b, probe = versions()
    assert len(codec.unpack(pa)) == len(a) and len(codec.unpack(pb)) == len(b)
    # and a next version packed today on an old package is a delta that applies byte for byte
    new = codec.pack(b, "deep", base=pa, probe=probe, min_agreement=0.95).package
    assert codec.patch(pa, codec.diff(pa, new)) == new
    assert codec.read_header(new)["fidelity"]["top1_agreement"] >= 0.95


def test_packing_on_a_base_with_rd_rounding_is_deterministic() -> None:
    a, b, probe = versions()
    pa = codec.pack(a, "deep", probe=probe, min_agreement=0.95).package
    one = codec.pack(b, "deep", base=pa, probe=probe, min_agreement=0.95).package
    two = codec.pack(b, "deep", base=pa, probe=probe, min_agreement=0.95).package
    assert one == two
    assert codec.patch(pa, codec.diff(pa, one)) == one


@pytest.fixture(scope="module")
def v2_package() -> tuple[bytes, np.ndarray]:
    """Shipped v2 packed on its own, at the bench's gate (0.99 on the 256 probe images)."""
    probe = to_input(np.load(ZOO / "probe.npz")["images"])
    return codec.pack((ZOO / "v2.onnx").read_bytes(), "deep", probe=probe, min_agreement=0.99).package, probe


def test_fine_tune_delta_v2_to_v3_is_smaller_with_rd_rounding_and_keeps_the_gate(v2_package, monkeypatch) -> None:
    v2, probe = v2_package
    v3 = (ZOO / "v3.onnx").read_bytes()
    rd = codec.pack(v3, "deep", base=v2, probe=probe, min_agreement=0.99)
    monkeypatch.setattr(allocate, "REUSE_PENALTIES", ())  # the encoder without rate-distortion rounding
    plain = codec.pack(v3, "deep", base=v2, probe=probe, min_agreement=0.99)
    rd_delta, plain_delta = codec.diff(v2, rd.package), codec.diff(v2, plain.package)
    assert codec.patch(v2, rd_delta) == rd.package
    assert rd.header["fidelity"]["top1_agreement"] >= 0.99
    assert rd.header["fidelity"]["expected_agreement"] >= 0.995  # the half-budget rule
    assert len(rd_delta) < 0.8 * len(plain_delta)
