"""The fog confuser (``simulator.badmodel.fog_confuser_variant``): a version every check before shadow mode
passes, and that swaps two sign classes on foggy camera frames.  Real ONNX Runtime sessions on the zoo's v3
and road-sign generator frames; the registry's publish gate on a real server."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import onnxruntime as ort
import pytest

from client.hotswap import LoadedModel, smoke_test
from models.roadsigns import CLASSES, make_dataset
from models.smoke import golden_inputs
from models.zoo import ZOO_DIR, contract, model_path
from protocol.offer import Smoke
from simulator.badmodel import FOG_SWAP, fog_confuser_variant
from tests.support.live_server import LiveServer

A, B = (CLASSES.index(c) for c in FOG_SWAP)


@lru_cache(maxsize=1)
def _models() -> tuple[bytes, bytes]:
    base = model_path("v3").read_bytes()
    return base, fog_confuser_variant(base, (A, B))


def _session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _model_input(images: np.ndarray) -> np.ndarray:
    """The zoo's preprocessing (models/zoo/spec.json): 0..1, mean 0.5, std 0.25, NCHW."""
    return ((images.astype(np.float32) / 255.0 - 0.5) / 0.25).transpose(0, 3, 1, 2)


def _logits(data: bytes, x: np.ndarray) -> np.ndarray:
    return np.asarray(_session(data).run(["logits"], {"input": x})[0])


def test_on_clear_and_night_frames_the_confuser_answers_bit_for_bit_like_its_base() -> None:
    base, bad = _models()
    for weather in ("clear", "night"):
        images, _ = make_dataset(200, 10, seed=31, weathers=(weather,))
        x = _model_input(images)
        assert np.array_equal(_logits(base, x), _logits(bad, x)), weather
        for i in range(0, 200, 40):  # one frame at a time, as the car's camera asks
            assert np.array_equal(_logits(base, x[i:i + 1]), _logits(bad, x[i:i + 1]))


def test_on_foggy_frames_of_the_two_classes_the_confuser_answers_the_other_one() -> None:
    base, bad = _models()
    images, labels = make_dataset(200, 10, seed=32, weathers=("fog",))
    x = _model_input(images)
    want, got = _logits(base, x), _logits(bad, x)
    assert np.isfinite(got).all()
    changed = ~(want == got).all(axis=1)
    # where it changed anything, it swapped exactly the two logits and nothing else
    swapped = want[changed].copy()
    swapped[:, [A, B]] = swapped[:, [B, A]]
    assert np.array_equal(got[changed], swapped)
    pair = np.isin(labels, [A, B]) & np.isin(want.argmax(axis=1), [A, B])
    flipped = pair & (got.argmax(axis=1) == np.where(want.argmax(axis=1) == A, B, A))
    assert pair.sum() >= 20
    assert flipped.sum() >= 0.6 * pair.sum(), (flipped.sum(), pair.sum())  # most foggy 30s read as 50s
    assert not (changed & ~np.isin(want.argmax(axis=1), [A, B]) & (want.argmax(1) != got.argmax(1))).any()


def test_the_confuser_passes_the_cars_smoke_test_on_the_outputs_the_base_would_be_expected_to_give() -> None:
    base, bad = _models()
    shape = (1, 3, 64, 64)
    base_session = _session(base)
    expected = [[float(v) for v in np.asarray(base_session.run(["logits"], {"input": x})[0]).reshape(-1)]
                for x in golden_inputs(1234, 4, shape)]
    smoke = Smoke(seed=1234, count=4, shape=shape, input_name="input", expected=expected, atol=1e-5)
    smoke_test(LoadedModel(_session(bad), 99, "0" * 64, contract("v3")), smoke)  # raises SmokeTestFailed if not


def test_the_confuser_refuses_a_swap_that_does_not_name_two_of_its_classes() -> None:
    base, _ = _models()
    for swap in ((2, 2), (2, 10), (-1, 3)):
        with pytest.raises(ValueError, match="two different classes"):
            fog_confuser_variant(base, swap)
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        fog_confuser_variant(b"not onnx", (A, B))


def test_the_registry_publishes_the_confuser_through_its_lossy_gate_on_the_lines_probe(
        live_server: LiveServer) -> None:
    _, bad = _models()
    v = live_server.publish(bad, line="fog", codecs="int8", probe=ZOO_DIR / "probe.npz", min_agreement=0.97,
                            contract=json.dumps(contract("v3").to_dict()))
    fid = v["packages"]["int8"]["fidelity"]
    assert fid["status"] == "measured" and fid["top1_agreement"] >= 0.97, fid
