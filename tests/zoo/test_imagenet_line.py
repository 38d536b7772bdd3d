"""The road-sign version transfer-learned from the real ImageNet SqueezeNet: the committed artifact, loaded
with ONNX Runtime (no torch), classifies rendered signs through the ImageNet model's own contract."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models import imagenet_line
from models.contract import InputContract
from models.preprocess import postprocess, preprocess
from models.roadsigns import CLASSES, IMAGE_SIZE, make_dataset, render
from models.sessions import open_session

MIXED = (("clear", "fog", "night"), (0.4, 0.3, 0.3))  # the trainers' weather mix (models.training.train needs torch)
# seed 300: none of the trainer's (train 6, held out 100/101) nor the zoo's (1..5, 200)
SIGNS_SEED = 300


@pytest.fixture(scope="module")
def roadsigns() -> onnx.ModelProto:
    return onnx.load(imagenet_line.roadsigns_path())


@pytest.fixture(scope="module")
def signs() -> tuple[np.ndarray, np.ndarray]:
    """Four signs of each class at 227x227, clear, fog and night mixed."""
    return make_dataset(4 * len(CLASSES), len(CLASSES), SIGNS_SEED, *MIXED, size=227)


def accuracy(model: onnx.ModelProto, contract: InputContract, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of a real ONNX Runtime session, one image at a time (the model's batch is fixed to 1)."""
    session = open_session(model.SerializeToString(), intra_threads=2)
    scores = np.concatenate([session.run([contract.output_name], {contract.input_name: preprocess(im, contract)})[0]
                             for im in images])
    return float((postprocess(scores, contract).argmax(1) == labels).mean())


def with_random_head(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """The same network with conv10 drawn afresh (as the trainer starts it): ImageNet features, untrained head."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    for tensor in out.graph.initializer:
        if tensor.name.startswith("conv10."):
            shape = tuple(tensor.dims)
            value = rng.normal(0.0, 0.01, shape) if tensor.name.endswith("weight") else np.full(shape, 0.5)
            tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))
    return out


def test_roadsign_version_keeps_the_imagenet_contract_except_labels() -> None:
    imagenet, roadsigns = imagenet_line.imagenet_contract(), imagenet_line.roadsigns_contract()
    assert {**roadsigns.to_dict(), "labels": None} == {**imagenet.to_dict(), "labels": None}
    assert (roadsigns.input_name, roadsigns.input_shape(), roadsigns.output_name, roadsigns.output_kind) == \
        ("data", (1, 3, 227, 227), "prob", "probabilities")
    assert roadsigns.labels == CLASSES == imagenet_line.roadsigns_labels()
    assert len(imagenet.labels) == 1000


def test_roadsign_version_classifies_rendered_signs_where_a_random_head_cannot(
        roadsigns: onnx.ModelProto, signs: tuple[np.ndarray, np.ndarray]) -> None:
    contract = imagenet_line.roadsigns_contract()
    trained = accuracy(roadsigns, contract, *signs)
    untrained = accuracy(with_random_head(roadsigns, seed=1), contract, *signs)
    assert trained >= 0.85, f"transfer-learned version: {trained:.3f} on {len(signs[1])} rendered signs"
    assert untrained <= 0.35, f"ImageNet features with a random head: {untrained:.3f}"


def test_roadsign_version_takes_small_signs_through_the_contract_resize(roadsigns: onnx.ModelProto) -> None:
    """A 64x64 sign (the zoo's size) is stretched to 227 by the contract, as `ota classify` would."""
    images, labels = make_dataset(2 * len(CLASSES), len(CLASSES), SIGNS_SEED, ("clear",))
    assert images.shape[1:3] == (IMAGE_SIZE, IMAGE_SIZE)
    assert accuracy(roadsigns, imagenet_line.roadsigns_contract(), images, labels) >= 0.7


def test_only_the_classifier_differs_from_the_imagenet_model(roadsigns: onnx.ModelProto) -> None:
    """Head-only transfer: every other tensor keeps the ImageNet model's exact bytes, so a delta carries conv10."""
    source = {t.name: t.SerializeToString() for t in onnx.load(imagenet_line.imagenet_path()).graph.initializer}
    changed = sorted(t.name for t in roadsigns.graph.initializer if source.get(t.name) != t.SerializeToString())
    assert changed == ["conv10.bias", "conv10.weight"]
    assert [o.name for o in roadsigns.graph.output] == ["prob"]
    assert roadsigns.graph.node[-1].op_type == "Softmax"


def test_manifest_records_the_artifact_and_its_source() -> None:
    m = imagenet_line.roadsigns_manifest()
    assert hashlib.sha256(imagenet_line.roadsigns_path().read_bytes()).hexdigest() == m["sha256"]
    assert hashlib.sha256(imagenet_line.imagenet_path().read_bytes()).hexdigest() == m["source"]["sha256"]
    meta = {p.key: p.value for p in onnx.load(imagenet_line.roadsigns_path()).metadata_props}
    assert meta["version"] == m["version"] and meta["labels"].count('"') // 2 == len(CLASSES)
    assert min(m["heldout_accuracy"].values()) >= 0.9


def test_rendering_at_64_still_reproduces_the_shipped_probe_set() -> None:
    """The size parameter left the zoo's images untouched (the shipped probe set regenerates bit for bit)."""
    with np.load(imagenet_line.PRETRAINED_DIR.parent / "zoo" / "probe.npz") as data:
        shipped = data["images"][:32], data["labels"][:32]
    images, labels = make_dataset(256, len(CLASSES), 200, *MIXED)
    assert np.array_equal(images[:32], shipped[0]) and np.array_equal(labels[:32], shipped[1])


def test_render_refuses_a_size_out_of_range() -> None:
    with pytest.raises(ValueError, match="from 8 to"):
        render(0, np.random.default_rng(0), size=4)
    assert render(0, np.random.default_rng(0), size=227).shape == (227, 227, 3)
