"""Deltas between packages: byte-exact rebuild, small model-aware patches, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import codec, onnx_factory
from models.codec import container
from models.errors import BaseMismatch, DeltaError
from models.preprocess import to_input

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


@pytest.fixture(scope="module")
def head_only_pair() -> tuple[bytes, bytes]:
    """Shipped v1 and v2 (conv10-only retrain) as deep packages, v2 on v1's grid."""
    probe = to_input(np.load(ZOO / "probe.npz")["images"])[:128]
    v1 = codec.pack((ZOO / "v1.onnx").read_bytes(), "deep", probe=probe, min_agreement=0.98).package
    v2 = codec.pack((ZOO / "v2.onnx").read_bytes(), "deep", base=v1, probe=probe, min_agreement=0.98).package
    return v1, v2


def patch_ops(delta: bytes) -> dict:
    raw, _ = container.unframe(container.PATCH_MAGIC, delta, "patch")
    return json.loads(raw)


def test_head_only_retrain_patch_sends_only_the_classifier_and_rebuilds_byte_for_byte(head_only_pair) -> None:
    v1, v2 = head_only_pair
    delta = codec.diff(v1, v2)
    assert codec.patch(v1, delta) == v2
    meta = patch_ops(delta)
    assert meta["mode"] == "delta"
    assert meta["skeleton"] == ["same", 0]  # the version label lives in the header, the graph is shared
    names = [codec.read_header(v2)["tensors"][i]["name"] for i, _, _ in meta["ops"]]
    assert names == ["final_conv.weight", "final_conv.bias"]
    # generic tools need ~19 KB for this pair (bench/codec.py measures it)
    assert len(delta) < 6000
    assert codec.read_header(v2)["base"]["reused_grids"] >= 25  # every unchanged layer stays on its grid


def test_patch_refuses_a_wrong_base_and_names_both_hashes(head_only_pair) -> None:
    v1, v2 = head_only_pair
    delta = codec.diff(v1, v2)
    with pytest.raises(BaseMismatch, match="fetch the full package"):
        codec.patch(v2, delta)


@pytest.mark.parametrize("damage", ["truncate", "flip-body", "flip-header", "garbage"])
def test_corrupt_patch_raises_delta_error_and_never_returns_bytes(head_only_pair, damage: str) -> None:
    v1, v2 = head_only_pair
    delta = bytearray(codec.diff(v1, v2))
    if damage == "truncate":
        delta = delta[:-50]
    elif damage == "flip-body":
        delta[-30] ^= 0xFF
    elif damage == "flip-header":
        delta[20] ^= 0x01
    else:
        delta = bytearray(b"not a patch at all")
    with pytest.raises(DeltaError):
        codec.patch(v1, bytes(delta))


def test_lossless_fine_tune_delta_is_xor_of_bits_and_exact() -> None:
    old = onnx_factory.squeezenet("1_1", num_classes=6, image_size=32, seed=11)
    new = onnx_factory.fine_tune(old, scale=1e-4, seed=2)
    a, b = codec.pack(old, "lossless").package, codec.pack(new, "lossless").package
    delta = codec.diff(a, b)
    assert codec.unpack(codec.patch(a, delta)) == new
    assert {op for _, op, _ in patch_ops(delta)["ops"]} == {"codes"}
    assert len(delta) < 0.8 * len(b)


def test_new_class_sends_the_grown_layer_in_full_and_the_rest_as_code_differences() -> None:
    probe = onnx_factory.inputs(32, 16)
    old = onnx_factory.squeezenet("1_1", num_classes=6, image_size=32, seed=11)
    grown = onnx_factory.squeezenet("1_1", num_classes=7, image_size=32, seed=11)
    new = onnx_factory.fine_tune(grown, scale=0.002, seed=3)
    a = codec.pack(old, "deep", probe=probe).package
    b = codec.pack(new, "deep", base=a, probe=probe).package
    delta = codec.diff(a, b)
    assert codec.patch(a, delta) == b
    ops = {codec.read_header(b)["tensors"][i]["name"]: op for i, op, _ in patch_ops(delta)["ops"]}
    last_w, last_b = [t["name"] for t in codec.read_header(b)["tensors"]][-2:]
    assert ops[last_w] == "full" and ops[last_b] == "full"
    assert "codes" in ops.values()
    assert len(delta) < len(b) / 3


def test_unrelated_model_patch_is_never_larger_than_the_full_package() -> None:
    a = codec.pack(onnx_factory.squeezenet("1_1", 6, 32, seed=1), "int8").package
    b = codec.pack(onnx_factory.squeezenet("1_1", 6, 32, seed=2), "int8").package
    delta = codec.diff(a, b)
    assert len(delta) <= len(b)
    assert codec.patch(a, delta) == b


def test_identical_packages_make_a_patch_of_a_few_hundred_bytes(head_only_pair) -> None:
    v1, _ = head_only_pair
    delta = codec.diff(v1, v1)
    assert len(delta) < 400
    assert patch_ops(delta)["ops"] == []
    assert codec.patch(v1, delta) == v1
