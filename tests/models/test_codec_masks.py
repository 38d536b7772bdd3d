"""Format 2: dead channels masked to exact zeros, the split entropy method, metadata in the header."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models import codec, onnx_factory
from models.codec import entropy, quantize, tensors
from models.errors import CorruptPackage

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def with_dead_channel(onnx_bytes: bytes, conv: int, channel: int, bias: float = -1.0) -> tuple[bytes, list[str]]:
    """The model with output ``channel`` of its ``conv``-th Conv dead (ReLU input always < 0), and the
    weight names of that Conv and of the Convs after it (its consumers come first)."""
    model = onnx.load_model_from_string(onnx_bytes)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    inits = {t.name: t for t in model.graph.initializer}
    w_t, b_t = inits[convs[conv].input[1]], inits[convs[conv].input[2]]
    w, b = numpy_helper.to_array(w_t).copy(), numpy_helper.to_array(b_t).copy()
    w[channel] = -np.abs(w[channel]) - 1.0  # its inputs come out of a ReLU: >= 0, so the sum stays < 0
    b[channel] = bias
    w_t.CopyFrom(numpy_helper.from_array(w, w_t.name))
    b_t.CopyFrom(numpy_helper.from_array(b, b_t.name))
    return model.SerializeToString(), [c.input[1] for c in convs[conv:]]


def decoded_weights(package: bytes) -> dict[str, np.ndarray]:
    model = onnx.load_model_from_string(codec.unpack(package))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_a_dead_relu_channel_costs_nothing_and_decodes_to_exact_zeros_on_both_sides() -> None:
    base = onnx_factory.squeezenet("1_1", num_classes=6, image_size=32, seed=5)
    model, (squeeze, expand1, expand3, *_) = with_dead_channel(base, conv=1, channel=3)
    result = codec.pack(model, "deep", probe=onnx_factory.inputs(32, 16), min_agreement=0.9)
    entries = {t["name"]: t for t in result.header["tensors"]}
    assert entries[squeeze].get("scaled") and entries[expand1].get("scaled") and entries[expand3].get("scaled")
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load_model_from_string(model).graph.initializer}
    decoded = decoded_weights(result.package)
    assert np.any(original[squeeze][3]) and not np.any(decoded[squeeze][3])  # the row producing the channel
    assert np.any(original[expand1][:, 3]) and not np.any(decoded[expand1][:, 3])  # the columns reading it
    assert not np.any(decoded[expand3][:, 3])
    assert np.any(decoded[squeeze][2]) and np.any(decoded[expand3][:, 2])  # live channels are untouched
    assert result.header["fidelity"]["top1_agreement"] >= 0.9


def test_a_dead_channel_with_a_positive_bias_keeps_its_row_but_its_readers_are_masked() -> None:
    # Zeroing the row would make the channel output ReLU(bias) > 0: only its readers may drop it.
    base = onnx_factory.squeezenet("1_1", num_classes=6, image_size=32, seed=5)
    model, (squeeze, expand1, *_) = with_dead_channel(base, conv=1, channel=3, bias=0.01)
    decoded = decoded_weights(codec.pack(model, "deep", probe=onnx_factory.inputs(32, 16)).package)
    assert np.any(decoded[squeeze][3]) and not np.any(decoded[expand1][:, 3])


def test_a_masked_weight_with_a_nonzero_code_is_refused_as_corrupt() -> None:
    w = np.random.default_rng(0).normal(0, 0.1, size=(8, 4, 3, 3)).astype(np.float32)
    rows, cols = np.array([0, 1, 0, 0, 0, 0, 0, 0]), quantize.channel_levels(np.array([False, True, False, False]))
    coded = tensors.encode_scaled(w, 0.01, rows, cols)
    again = tensors.from_payload(tensors.to_payload(coded), tensors.entry("w", coded, 0))
    assert np.array_equal(tensors.values(again), tensors.values(coded))
    assert not np.any(tensors.values(coded)[1]) and not np.any(tensors.values(coded)[:, 1])
    assert coded.meta.get("grid") and not coded.meta.get("compensated")
    coded.symbols[8 + 4 + 1 * 36 + 5] = 3  # a code inside the masked row
    with pytest.raises(CorruptPackage, match="masked weights"):
        tensors.check(coded, "w")


def test_a_coarse_masked_layer_keeps_a_codebook_and_its_masked_weights_hold_the_code_of_zero() -> None:
    w = np.random.default_rng(0).normal(0, 0.1, size=(8, 4, 3, 3)).astype(np.float32)
    rows, cols = np.array([0, 0, 1, 0, 0, 0, 0, 0]), quantize.channel_levels(np.array([False, False, False, True]))
    coded = tensors.encode_scaled(w, 0.08, rows, cols)
    assert not coded.meta.get("grid") and 0.0 in coded.params and coded.params.size <= quantize.GRID_MIN_CELLS + 1
    values = tensors.values(coded)
    assert not np.any(values[2]) and not np.any(values[:, 3]) and np.any(values[0])
    again = tensors.from_payload(tensors.to_payload(coded), tensors.entry("w", coded, 0))
    assert np.array_equal(tensors.values(again), values)


@pytest.mark.parametrize("spread", [300.0, 5000.0])
def test_wide_alphabets_are_split_into_magnitude_classes_and_low_bits(spread: float) -> None:
    values = np.rint(np.random.default_rng(1).normal(0, spread, size=200)).astype(np.int64)
    values[:3] = [0, 1 << 40, -(1 << 40)]
    stream = entropy.encode(values)
    assert stream[0] == 3  # split
    assert len(stream) < 3 * len(values)  # the outliers make the packed width 8 bytes
    assert np.array_equal(entropy.decode(stream), values)
    with pytest.raises(CorruptPackage, match="low bits"):
        entropy.decode(stream[:-1])


def test_metadata_travels_in_the_header_and_the_lossless_round_trip_stays_byte_exact() -> None:
    v1 = (ZOO / "v1.onnx").read_bytes()
    result = codec.pack(v1, "lossless")
    assert codec.unpack(result.package) == v1
    assert ["version", "v1"] in result.header["metadata"]


def test_a_format_1_package_is_refused_with_the_format_in_the_message() -> None:
    with pytest.raises(CorruptPackage, match="format-1 package"):
        codec.read_header(b"OTAPKG1\n\x00\x00\x00\x02{}")


def test_a_format_1_base_is_packed_afresh_and_gets_a_full_patch() -> None:
    # A registry upgraded to format 2 still holds format-1 packages of earlier versions.
    old = b"OTAPKG1\n\x00\x00\x00\x02{}" + b"\x00" * 64
    model = onnx_factory.squeezenet("1_1", num_classes=6, image_size=32, seed=5)
    new = codec.pack(model, "int8", base=old).package
    assert codec.read_header(new)["base"] is None
    delta = codec.diff(old, new)
    assert codec.patch(old, delta) == new
