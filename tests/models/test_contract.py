"""Input contracts on real models: inference from the graph, refusal of misfits, and the real ImageNet
SqueezeNet's answers with its own preprocessing -- real ONNX Runtime sessions, no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import skimage.data

from models import codec, zoo
from models.codec.fidelity import Reference
from models.contract import InputContract, check_contract, infer_contract
from models.preprocess import postprocess, preprocess, to_input
from models.probes import natural_crops
from models.sessions import open_session
from models.smoke import input_shape
from protocol.errors import ContractError  # the base: malformed values (protocol) and misfits (models)
from tests.models.variants import variant

PRETRAINED = Path(__file__).resolve().parents[2] / "models" / "pretrained"
CAFFE = {"channel_order": "bgr", "scale": 255, "mean": [104, 117, 123]}


@pytest.fixture(scope="module")
def imagenet() -> onnx.ModelProto:
    return onnx.load(PRETRAINED / "squeezenet1.0-imagenet.onnx")


@pytest.fixture(scope="module")
def imagenet_contract(imagenet: onnx.ModelProto) -> InputContract:
    return infer_contract(imagenet, **CAFFE, labels=(PRETRAINED / "imagenet-labels.txt").read_text())


@pytest.fixture(scope="module")
def v1() -> onnx.ModelProto:
    return onnx.load(zoo.model_path("v1"))


def answer(model: onnx.ModelProto, contract: InputContract, images: np.ndarray | list) -> np.ndarray:
    """Probabilities of a real ONNX Runtime session on images put through the contract, one at a time
    (so a fixed-batch-1 model runs as well)."""
    sess = open_session(model.SerializeToString(), intra_threads=2)
    rows = [sess.run([contract.output_name], {contract.input_name: preprocess(im, contract)})[0]
            for im in (images if isinstance(images, list) else list(images))]
    return postprocess(np.concatenate(rows), contract)


# ------------------------------------------------------------------------------------------ the real model

def test_real_squeezenet_contract_reads_fixed_227_input_and_softmax_output(imagenet_contract: InputContract) -> None:
    c = imagenet_contract
    assert (c.input_name, c.layout, c.height, c.width) == ("data", "NCHW", 227, 227)
    assert (c.output_name, c.output_kind) == ("prob", "probabilities")
    assert (c.channel_order, c.scale, c.mean, c.std) == ("BGR", 255.0, (104.0, 117.0, 123.0), (1.0, 1.0, 1.0))
    assert len(c.labels) == 1000 and c.labels[285] == "Egyptian cat"


def test_real_squeezenet_says_egyptian_cat_088_on_chelsea_and_espresso_on_coffee(
        imagenet: onnx.ModelProto, imagenet_contract: InputContract) -> None:
    probs = answer(imagenet, imagenet_contract, [skimage.data.chelsea(), skimage.data.coffee()])
    cat, coffee = probs
    assert imagenet_contract.label(int(cat.argmax())) == "Egyptian cat"
    assert cat.max() == pytest.approx(0.880, abs=0.02)
    assert imagenet_contract.label(int(coffee.argmax())) == "espresso"
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-4)  # probabilities not softmaxed again


def test_real_squeezenet_takes_any_size_grey_and_rgba_images(imagenet: onnx.ModelProto,
                                                             imagenet_contract: InputContract) -> None:
    cat = skimage.data.chelsea()
    rgba = np.concatenate([cat, np.full(cat.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    grey = skimage.data.camera()
    assert preprocess(grey, imagenet_contract).shape == (1, 3, 227, 227)
    probs = answer(imagenet, imagenet_contract, [rgba, cat])
    assert np.array_equal(probs[0], probs[1])  # an opaque alpha channel changes nothing
    crop = infer_contract(imagenet, **CAFFE, resize="crop")
    cropped = answer(imagenet, crop, [cat])[0]
    assert imagenet_contract.label(int(cropped.argmax())) == "Egyptian cat"
    assert abs(float(cropped.max()) - float(probs[1].max())) > 0.05  # the centre crop is another input


# ------------------------------------------------------------------------------------------ the zoo

def test_zoo_contract_preprocess_equals_to_input_bit_for_bit() -> None:
    images, _ = zoo.probe_images()
    contract = zoo.contract("v1")
    assert np.array_equal(preprocess(images[:64], contract).view(np.uint32), to_input(images[:64]).view(np.uint32))


def test_zoo_v1_inferred_as_logits_with_its_metadata_labels(v1: onnx.ModelProto) -> None:
    c = infer_contract(v1, mean=0.5, std=0.25)
    assert (c.input_name, c.layout, c.height, c.output_name, c.output_kind) == ("input", "NCHW", 64, "logits", "logits")
    assert c.labels == tuple(zoo.manifest()["versions"][0]["classes"])
    assert c == zoo.contract("v1")


# ------------------------------------------------------------------------------------------ variants

def _same_answers(model: onnx.ModelProto, contract: InputContract, v1: onnx.ModelProto) -> None:
    images = list(natural_crops(6, size=(90, 120), seed=5))
    expected = answer(v1, zoo.contract("v1"), images)
    got = answer(model, contract, images)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_nhwc_input_is_detected_and_fed_channels_last(v1: onnx.ModelProto) -> None:
    m = variant(v1, nhwc=True)
    c = infer_contract(m, mean=0.5, std=0.25)
    assert (c.input_name, c.layout, c.height, c.width) == ("image", "NHWC", 64, 64)
    assert preprocess(skimage.data.chelsea(), c).shape == (1, 64, 64, 3)
    _same_answers(m, c, v1)


def test_bgr_0_255_input_with_normalisation_folded_in_gets_the_same_answers(v1: onnx.ModelProto) -> None:
    m = variant(v1, bgr255=True)
    c = infer_contract(m, channel_order="BGR", scale=255)
    _same_answers(m, c, v1)
    rgb = infer_contract(m, scale=255)
    images = list(natural_crops(6, size=64, seed=6))
    assert not np.allclose(answer(m, rgb, images), answer(m, c, images), atol=1e-3)  # the order matters


def test_dynamic_spatial_dims_need_input_size_and_the_error_names_the_flag(v1: onnx.ModelProto) -> None:
    m = variant(v1, dims=["N", 3, "H", "W"])
    with pytest.raises(ContractError, match="--input-size"):
        infer_contract(m)
    with pytest.raises(ContractError, match="--input-size"):
        input_shape(m)
    c = infer_contract(m, input_size=64, mean=0.5, std=0.25)
    assert (c.height, c.width) == (64, 64)
    assert input_shape(m, c) == [1, 3, 64, 64]
    _same_answers(m, c, v1)


def test_fixed_batch_1_model_packs_with_a_probe_run_one_image_at_a_time(v1: onnx.ModelProto) -> None:
    m = variant(v1, dims=[1, 3, 64, 64])
    c = infer_contract(m, mean=0.5, std=0.25)
    assert input_shape(m, c) == [1, 3, 64, 64]
    probe = preprocess(zoo.probe_images()[0][:40], c)
    result = codec.pack(m.SerializeToString(), "int8", probe=probe, min_agreement=0.9, contract=c)
    assert result.header["fidelity"]["probe_count"] == 40
    assert result.header["fidelity"]["top1_agreement"] >= 0.9


def test_softmax_output_is_probabilities_and_logits_get_softmax_once(v1: onnx.ModelProto) -> None:
    soft = variant(v1, softmax=True)
    c_soft = infer_contract(soft, mean=0.5, std=0.25)
    c_logits = infer_contract(v1, mean=0.5, std=0.25)
    assert (c_soft.output_name, c_soft.output_kind) == ("prob", "probabilities")
    assert c_logits.output_kind == "logits"
    images = list(natural_crops(4, size=64, seed=7))
    np.testing.assert_allclose(answer(soft, c_soft, images), answer(v1, c_logits, images), atol=1e-6)


@pytest.mark.parametrize("kind", ["int64", "string"])
def test_extra_label_output_is_ignored_and_string_labels_are_read_from_the_graph(v1: onnx.ModelProto,
                                                                                 kind: str) -> None:
    m = variant(v1, softmax=True, label_output=kind, keep_metadata=False)
    c = infer_contract(m, mean=0.5, std=0.25)
    assert (c.output_name, c.output_kind) == ("prob", "probabilities")
    assert c.labels == (tuple(zoo.manifest()["versions"][0]["classes"]) if kind == "string" else ())
    _same_answers(m, c, v1)


def test_zipmap_output_is_ignored_by_contract_and_gate_and_labels_come_from_it(v1: onnx.ModelProto) -> None:
    m = variant(v1, softmax=True, label_output="int64", zipmap=True, keep_metadata=False)
    c = infer_contract(m, mean=0.5, std=0.25)
    assert (c.output_name, c.output_kind) == ("prob", "probabilities")
    assert c.labels == tuple(zoo.manifest()["versions"][0]["classes"])
    _same_answers(m, c, v1)


@pytest.mark.parametrize("extra", [{"label_output": "int64", "zipmap": True}, {"label_output": "string"}])
def test_gate_compares_the_score_output_not_a_label_or_zipmap_output_listed_first(v1: onnx.ModelProto,
                                                                                  extra: dict) -> None:
    m = variant(v1, softmax=True, **extra)
    probe = to_input(zoo.probe_images()[0][:32])
    result = codec.pack(m.SerializeToString(), "int8", probe=probe)  # no contract: the gate finds the scores
    fid = result.header["fidelity"]
    assert fid["top1_agreement"] >= 0.9
    assert fid["max_abs_diff"] > 0  # int8 moves the scores; a label index would not have moved


def test_dynamic_spatial_model_packs_on_inputs_sized_by_the_contract(v1: onnx.ModelProto) -> None:
    m = variant(v1, dims=["N", 3, "H", "W"])
    c = infer_contract(m, input_size=64, mean=0.5, std=0.25)
    result = codec.pack(m.SerializeToString(), "int8", contract=c)
    assert result.header["fidelity"]["probe"] == "synthetic" and result.header["fidelity"]["max_abs_diff"] > 0
    with pytest.raises(ContractError, match="--input-size"):
        codec.pack(m.SerializeToString(), "int8")


def test_only_zipmap_scores_is_refused_with_a_message_naming_the_way_out(v1: onnx.ModelProto) -> None:
    m = variant(v1, softmax=True, label_output="int64", zipmap=True)
    del m.graph.output[-1]  # the converter's default: label + ZipMap, no float scores
    with pytest.raises(ContractError, match="ZipMap"):
        infer_contract(m)


# ------------------------------------------------------------------------------------------ refusals

def test_check_contract_refuses_wrong_input_size(imagenet: onnx.ModelProto) -> None:
    with pytest.raises(ContractError, match=r"224x224 .* fixed to 227; use --input-size 227"):
        infer_contract(imagenet, **CAFFE, input_size=224)


def test_check_contract_refuses_wrong_channel_count(v1: onnx.ModelProto) -> None:
    with pytest.raises(ContractError, match="has 64 channels in NHWC layout"):
        infer_contract(v1, layout="NHWC")
    grey = variant(v1, dims=["N", 1, 64, 64])
    with pytest.raises(ContractError, match="has 1 channels"):
        check_contract(grey, InputContract.from_dict({**zoo.contract("v1").to_dict(), "input_name": "image"}))


def test_check_contract_refuses_wrong_label_count(imagenet: onnx.ModelProto, v1: onnx.ModelProto) -> None:
    with pytest.raises(ContractError, match="3 labels given but output 'prob' has 1000 classes"):
        infer_contract(imagenet, **CAFFE, labels=["cat", "dog", "car"])
    with pytest.raises(ContractError, match="11 labels given but output 'logits' has 10 classes"):
        check_contract(v1, zoo.contract("v4"))


def test_check_contract_refuses_unknown_input_and_output_names(v1: onnx.ModelProto) -> None:
    c = zoo.contract("v1")
    with pytest.raises(ContractError, match="no input 'pixels'.*input"):
        check_contract(v1, InputContract.from_dict({**c.to_dict(), "input_name": "pixels"}))
    with pytest.raises(ContractError, match="no output 'scores'.*logits"):
        check_contract(v1, InputContract.from_dict({**c.to_dict(), "output_name": "scores"}))


def test_pack_refuses_a_contract_that_does_not_fit(v1: onnx.ModelProto) -> None:
    bad = InputContract.from_dict({**zoo.contract("v1").to_dict(), "height": 32})
    with pytest.raises(ContractError, match="fixed to 64"):
        codec.pack(v1.SerializeToString(), "int8", contract=bad)


# ------------------------------------------------------------------------------------------ the value itself

def test_contract_round_trips_through_canonical_json_with_sorted_keys() -> None:
    c = zoo.contract("v4")
    text = c.canonical()
    assert InputContract.from_json(text) == c
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert text == InputContract.from_dict(json.loads(text)).canonical()


@pytest.mark.parametrize(("change", "message"), [
    ({"layout": "CHW"}, "layout"),
    ({"height": 0}, "--input-size"),
    ({"scale": 100}, "scale"),
    ({"mean": [1, 2]}, "mean"),
    ({"std": [1, 0, 1]}, "positive"),
    ({"channel_order": "GBR"}, "channel_order"),
    ({"output_kind": "scores"}, "output_kind"),
    ({"labels": ["ok", ""]}, "label 1"),
    ({"colour": "red"}, "unknown contract field"),
    ({"resize": None}, "resize"),
])
def test_malformed_contract_is_refused_naming_the_field(change: dict, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        InputContract.from_dict({**zoo.contract("v1").to_dict(), **change})


def test_missing_contract_field_is_named() -> None:
    d = zoo.contract("v1").to_dict()
    del d["mean"]
    with pytest.raises(ContractError, match="missing field.*mean"):
        InputContract.from_dict(d)


# ------------------------------------------------------------------------------------------ the gate on photos

def test_natural_crops_are_deterministic_distinct_and_read_only_bundled_files() -> None:
    from models.probes import COLOUR_FILES, GREY_FILES, data_dir

    assert all((data_dir() / f).is_file() for f in {**COLOUR_FILES, **GREY_FILES}.values())
    a, b = natural_crops(40, seed=3, grey=True), natural_crops(40, seed=3, grey=True)
    assert a.dtype == np.uint8 and a.shape == (40, 227, 227, 3)
    assert np.array_equal(a, b)
    assert len({x.tobytes() for x in a}) == 40
    assert not np.array_equal(a, natural_crops(40, seed=4, grey=True))


def test_real_squeezenet_int8_package_keeps_its_gate_on_held_out_natural_photos(
        imagenet: onnx.ModelProto, imagenet_contract: InputContract) -> None:
    """The gate measured on the probe holds on photos it never saw.  The deep codec's search on this model
    (0.99, about 538 KB) takes minutes on a loaded 2-core machine: bench/pretrained.py measures it."""
    source = (PRETRAINED / "squeezenet1.0-imagenet.onnx").read_bytes()
    probe = preprocess(natural_crops(64, seed=1), imagenet_contract)
    result = codec.pack(source, "int8", probe=probe, min_agreement=0.7, contract=imagenet_contract)
    held_out = Reference(imagenet, source, preprocess(natural_crops(100, seed=2), imagenet_contract),
                         imagenet_contract)
    fid = held_out.compare(codec.unpack(result.package))
    assert result.header["fidelity"]["top1_agreement"] >= 0.7 and result.header["fidelity"]["probe_count"] == 64
    assert fid.top1_agreement >= 0.7  # held out: within a few points of the probe's figure
    assert len(result.package) < len(source) / 3


def test_deep_stores_layers_of_a_shared_weight_model_exactly_where_that_is_smaller(v1: onnx.ModelProto) -> None:
    """A model already compressed with shared weights (as the real ImageNet SqueezeNet is: 256 values a layer)
    keeps them exactly when the exact palette's payload is smaller than the lossy choice."""
    from onnx import numpy_helper

    from models.codec import onnxio

    shared = onnx.ModelProto()
    shared.CopyFrom(v1)
    rng = np.random.default_rng(0)
    for t in shared.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.ndim == 4 and w.size >= 4096:
            book = np.sort(rng.choice(w.ravel(), 12, replace=False)).astype(np.float32)
            snapped = book[np.abs(w[..., None] - book).argmin(axis=-1)]
            t.CopyFrom(numpy_helper.from_array(snapped.astype(np.float32), t.name))
    source = shared.SerializeToString()
    probe = to_input(zoo.probe_images()[0][:64])
    result = codec.pack(source, "deep", probe=probe, min_agreement=0.99)
    assert result.header["gate"].get("exact_layers", 0) > 0
    decoded = dict(onnxio.split(onnx.load_model_from_string(codec.unpack(result.package)))[1])
    original = dict(onnxio.split(shared)[1])
    exact = [n for n, w in decoded.items() if original[n].ndim == 4 and np.array_equal(w, original[n])]
    assert len(exact) == result.header["gate"]["exact_layers"]
