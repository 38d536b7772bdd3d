"""The car applies its line's input contract: any model, its own preprocessing, labels and score output.

Real parts only: the real ImageNet SqueezeNet 1.0 and classifier variants built around our SqueezeNet
(tests/models/variants.py), installed through validly signed offers (``OfflineOffers``: the registry's
signing role, artifacts in the car's download cache) and answered by real ONNX Runtime sessions.
Each answer is compared with the original model run on the same image with the same preprocessing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import skimage.data
from agent_factories import OfflineOffers, sign, zoo_model
from PIL import Image
from test_client_install import IMAGE, make_agent

from cli.main import main as ota
from client import Agent
from client.errors import BadImage
from client.manifest import MAX_SMOKE_VALUES
from models import zoo
from models.contract import InputContract, infer_contract
from models.preprocess import postprocess, preprocess
from models.probes import natural_crops
from models.roadsigns import render
from models.sessions import open_session
from tests.models.variants import variant

ROOT = Path(__file__).resolve().parents[2]
PRETRAINED = ROOT / "models" / "pretrained"
CAFFE = {"channel_order": "bgr", "scale": 255, "mean": [104, 117, 123]}


def reference(model: bytes, contract: InputContract, image: np.ndarray) -> np.ndarray:
    """The fp32 model's probabilities on one image put through ``contract`` (what the car must reproduce)."""
    sess = open_session(model, intra_threads=1)
    scores = sess.run([contract.output_name], {contract.input_name: preprocess(image, contract)})[0]
    return postprocess(scores, contract)[0]


def install(agent: Agent, offers: OfflineOffers, model: bytes, version: int, contract: InputContract,
            **overrides: Any) -> None:
    asyncio.run(agent.handle_offer(offers.offer(model, version, contract=contract, **overrides)))


def failures(agent: Agent) -> list[str]:
    return [r["reason"] for r in agent.journal.outbox if r["state"] == "failed"]


# ------------------------------------------------------------------------------ the real ImageNet SqueezeNet

@pytest.fixture(scope="module")
def imagenet() -> tuple[bytes, InputContract]:
    data = (PRETRAINED / "squeezenet1.0-imagenet.onnx").read_bytes()
    contract = infer_contract(onnx.load_from_string(data), **CAFFE,
                              labels=(PRETRAINED / "imagenet-labels.txt").read_text())
    return data, contract


@pytest.mark.slow
def test_real_imagenet_squeezenet_installed_by_signed_offer_says_egyptian_cat_as_fp32_does(
        tmp_path: Path, imagenet: tuple[bytes, InputContract], capsys: pytest.CaptureFixture[str]) -> None:
    model, contract = imagenet
    agent, offers = make_agent(tmp_path / "car")
    install(agent, offers, model, 1, contract)
    assert agent.running_version == 1 and failures(agent) == []
    assert agent.journal.active is not None and agent.journal.active.contract == contract  # kept with the slot
    cat = skimage.data.chelsea()  # 300x451 RGB: the car resizes it to the contract's 227x227
    fp32 = reference(model, contract, cat)
    p = agent.predict(cat)
    assert p.label == "Egyptian cat" == contract.label(int(fp32.argmax())) and p.index == 285
    assert abs(p.probability - float(fp32.max())) <= 0.02
    assert p.probability == pytest.approx(0.88, abs=0.02)  # a probability output is not softmaxed again
    grey = agent.predict(skimage.data.camera())  # HxW grey, 512x512: any size, one channel
    assert 0 < grey.probability <= 1 and grey.version == 1

    # ``ota classify`` in its own process, on a PNG file, after the agent has gone: the slot's contract
    png = tmp_path / "chelsea.png"
    Image.fromarray(cat).save(png)
    run = subprocess.run([sys.executable, "-m", "cli.main", "classify", str(png), "--agent-dir",
                          str(tmp_path / "car"), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert (answer["label"], answer["class_index"], answer["version"]) == ("Egyptian cat", 285, 1)
    assert abs(answer["probability"] - float(fp32.max())) <= 0.02
    assert ota(["classify", str(png), "--agent-dir", str(tmp_path / "car")]) == 0  # the text form, in-process
    assert capsys.readouterr().out.strip() == f"Egyptian cat, {p.probability * 100:.1f}%  (model v1)"


# ------------------------------------------------------------------------------ variants of our SqueezeNet

V1 = onnx.load_from_string(zoo_model(1))
MEAN_STD = {"mean": 0.5, "std": 0.25}
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (how the model was exported, what its publisher says about it)
    "nhwc": ({"nhwc": True}, MEAN_STD),
    "bgr-0-255": ({"bgr255": True}, {"channel_order": "BGR", "scale": 255}),
    "dynamic-batch": ({"dims": ["N", 3, 64, 64]}, MEAN_STD),
    "fixed-batch-1": ({"dims": [1, 3, 64, 64]}, MEAN_STD),
    "fixed-batch-2": ({"dims": [2, 3, 64, 64]}, MEAN_STD),
    "dynamic-spatial": ({"dims": ["N", 3, "H", "W"]}, {**MEAN_STD, "input_size": 64}),
    "softmax": ({"softmax": True}, MEAN_STD),
    "label-int64": ({"softmax": True, "label_output": "int64"}, MEAN_STD),
    "label-string": ({"softmax": True, "label_output": "string", "keep_metadata": False}, MEAN_STD),
    "zipmap": ({"softmax": True, "label_output": "int64", "zipmap": True, "keep_metadata": False}, MEAN_STD),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_classifier_variant_installed_with_its_contract_answers_as_the_original_model(tmp_path: Path,
                                                                                     name: str) -> None:
    exported, said = VARIANTS[name]
    model = variant(V1, **exported)
    contract = infer_contract(model, **said)
    assert contract.labels == zoo.contract("v1").labels  # from metadata, a label tensor or the ZipMap
    agent, offers = make_agent(tmp_path)
    install(agent, offers, model.SerializeToString(), 1, contract)
    assert agent.running_version == 1 and failures(agent) == []
    sign_photo = np.asarray(Image.fromarray(render(3, np.random.default_rng(1))).resize((97, 131)))
    for image in (sign_photo, natural_crops(1, size=(150, 200), seed=3)[0]):
        want = reference(zoo_model(1), zoo.contract("v1"), image)  # the original, with its own contract
        got = agent.predict(image)
        assert (got.index, got.label) == (int(want.argmax()), zoo.contract("v1").label(int(want.argmax())))
        assert got.probability == pytest.approx(float(want.max()), abs=1e-4)


def test_predict_refuses_what_is_not_one_uint8_image_and_counts_nothing(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1)))
    with pytest.raises(BadImage, match="uint8"):
        agent.predict(IMAGE.astype(np.float32))
    with pytest.raises(BadImage, match="one image"):
        agent.predict(np.stack([IMAGE, IMAGE]))
    assert agent.predict(IMAGE[..., 0]).version == 1  # grey HxW is an image


# ------------------------------------------------------------------------------ hostile contracts

def _serving_v1(agent: Agent) -> None:
    active = agent.journal.active
    assert agent.running_version == 1 and active is not None and active.contract == zoo.contract("v1")
    assert agent.predict(IMAGE).version == 1


def _hostile(offers: OfflineOffers, **changes: Any) -> dict[str, Any]:
    """A validly signed offer of v2 (its package in the car's cache) with ``changes`` to its signed body."""
    good = offers.offer(zoo_model(2), 2)["signed"]
    return sign({**good, **changes}, offers.key)


def test_absurd_contract_sizes_in_a_validly_signed_offer_are_refused_before_anything_runs(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1, labels=list(zoo.contract("v1").labels))))
    huge = {**zoo.contract().to_dict(), "height": 100_000, "width": 100_000}
    asyncio.run(agent.handle_offer(_hostile(offers, contract=huge)))
    # a size within MAX_SIDE, but golden inputs the car would have to allocate: refused by count and size
    shape = [1, 3, 4096, 4096]
    assert 3 * int(np.prod(shape)) > MAX_SMOKE_VALUES
    big = {**zoo.contract().to_dict(), "height": 4096, "width": 4096}
    smoke = {"seed": 1, "count": 3, "shape": shape, "input_name": "input", "expected": [[0.0] * 10] * 3, "atol": 1.0}
    asyncio.run(agent.handle_offer(_hostile(offers, contract=big, smoke=smoke)))
    assert [r["state"] for r in agent.journal.outbox][-1] == "installed"  # nothing started after v1
    assert agent.journal.pending is None
    _serving_v1(agent)


def _misfit(name: str) -> tuple[dict[str, Any], list[int]]:
    """A contract for the zoo's v1 that does not fit it, and the smoke shape a hostile registry signs with it."""
    base = zoo.contract("v1").to_dict()  # what v1 was installed with
    if name == "size":
        return {**base, "height": 32, "width": 32}, [1, 3, 32, 32]
    if name == "channels-last":
        return {**base, "layout": "NHWC"}, [1, 64, 64, 3]
    if name == "labels":
        return {**base, "labels": [*base["labels"], "roundabout"]}, [1, 3, 64, 64]
    return {**base, "output_name": "nowhere"}, [1, 3, 64, 64]


@pytest.mark.parametrize("name", ["size", "channels-last", "labels", "output"])
def test_contract_that_does_not_fit_the_model_fails_verification_and_the_old_model_keeps_serving(
        tmp_path: Path, name: str) -> None:
    agent, offers = make_agent(tmp_path)
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1, labels=list(zoo.contract("v1").labels))))
    contract, shape = _misfit(name)
    good = offers.offer(zoo_model(2), 2)["signed"]  # the genuine smoke values, with the hostile shape
    asyncio.run(agent.handle_offer(sign({**good, "contract": contract, "smoke": {**good["smoke"], "shape": shape}},
                                        offers.key)))
    reasons = failures(agent)
    assert len(reasons) == 1 and reasons[0].startswith("SmokeTestFailed")
    assert {"size": "(NCHW, 32x32)", "channels-last": "(NHWC, 64x64)", "labels": "11 labels",
            "output": "'nowhere'"}[name] in reasons[0]
    _serving_v1(agent)
    assert agent.journal.bad_models  # not tried again unless a rollback names it


def test_smoke_shape_that_disagrees_with_the_contract_is_refused_before_download(tmp_path: Path) -> None:
    agent, offers = make_agent(tmp_path)
    asyncio.run(agent.handle_offer(offers.offer(zoo_model(1), 1, labels=list(zoo.contract("v1").labels))))
    good = offers.offer(zoo_model(2), 2)["signed"]
    asyncio.run(agent.handle_offer(sign({**good, "smoke": {**good["smoke"], "shape": [1, 3, 32, 32]}}, offers.key)))
    assert failures(agent) == [] and agent.journal.pending is None  # refused as an offer: nothing began
    _serving_v1(agent)
