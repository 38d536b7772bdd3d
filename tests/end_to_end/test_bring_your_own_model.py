"""Issue 17 end to end: a real ImageNet SqueezeNet we did not train, from `ota publish` to the car's answer.

Every part is real: `ota publish` and `ota rollout create` (the operator's CLI) against a uvicorn
registry, a car agent polling it over HTTP, and `ota classify` run as its own process on the car's
state directory.  Version 2 is the same network exported without its final Softmax (logits) and
published with no flags: it inherits the line's preprocessing and labels, and the car must then
apply a softmax itself.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from cli.main import main as ota
from client import Agent, AgentConfig
from models.contract import infer_contract
from models.preprocess import preprocess
from models.probes import natural_crops, photo
from server.inprocess import LiveServer
from tests.support.live_server import run_live_server

ROOT = Path(__file__).resolve().parents[2]
PRETRAINED = ROOT / "models" / "pretrained"
EGYPTIAN_CAT = 285


def _without_final_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same network exported with logits: the graph's last Softmax removed, its input the output."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    last = m.graph.node[-1]
    assert last.op_type == "Softmax", last.op_type
    logits = last.input[0]
    del m.graph.node[-1]
    out = m.graph.output[0]
    out.name = logits
    return m


def _fp32_probability(model: onnx.ModelProto, image: np.ndarray, **overrides: object) -> np.ndarray:
    contract = infer_contract(model, **overrides)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    scores = sess.run([contract.output_name], {contract.input_name: preprocess(image, contract)})[0][0]
    return np.asarray(scores, np.float64)


def _cli(server: LiveServer, token_file: Path, *args: str) -> int:
    return ota([*args, "--server", server.url, "--token-file", str(token_file)])


def _car_polls(server: LiveServer, state: Path, polls: int) -> Agent:
    cfg = AgentConfig(server_url=server.url, device_id="car-imagenet", state_dir=state, line="imagenet",
                      enroll_token=server.enrollment_token, root_public_key=server.root_public_key)
    agent = Agent(cfg)

    async def go() -> None:
        try:
            await agent.start()
            await agent.ensure_enrolled()
            for _ in range(polls):
                await agent.poll_once()
        finally:
            await agent.aclose()

    asyncio.run(go())
    return agent


def _classify(state: Path, image: Path) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "cli.main", "classify", str(image), "--agent-dir", str(state),
                           "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_real_imagenet_squeezenet_published_rolled_out_and_classified_by_the_car(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = onnx.load(PRETRAINED / "squeezenet1.0-imagenet.onnx")
    logits_model = tmp_path / "squeezenet-logits.onnx"
    onnx.save(_without_final_softmax(source), logits_model)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(16):  # any sizes: the registry applies the contract
        Image.fromarray(natural_crops(1, size=(180 + 7 * i, 240), seed=i)[0]).save(photos / f"{i:02d}.png")
    spec = tmp_path / "imagenet.json"
    spec.write_text(json.dumps({"channel_order": "BGR", "scale": 255, "mean": [104, 117, 123]}))
    cat_png = tmp_path / "chelsea.png"
    cat = photo("chelsea")
    Image.fromarray(cat).save(cat_png)

    with run_live_server(tmp_path / "srv") as server:
        token = tmp_path / "admin-token"
        token.write_text(server.admin_token)
        assert _cli(server, token, "publish", str(PRETRAINED / "squeezenet1.0-imagenet.onnx"), "--line", "imagenet",
                    "--spec", str(spec), "--labels", str(PRETRAINED / "imagenet-labels.txt"),
                    "--probe", str(photos), "--codecs", "lossless") == 0
        assert _cli(server, token, "publish", str(logits_model), "--line", "imagenet", "--codecs", "lossless") == 0
        capsys.readouterr()
        v2 = server.admin().get("/api/v1/lines/imagenet/versions/2").json()
        assert v2["contract"]["channel_order"] == "BGR" and v2["contract"]["mean"] == [104.0, 117.0, 123.0]
        assert v2["contract"]["output_kind"] == "logits" and len(v2["contract"]["labels"]) == 1000
        assert "output_kind" in v2["contract_changed"]
        assert _cli(server, token, "rollout", "create", "--line", "imagenet", "--version", "2",
                    "--stage", "100") == 0

        state = tmp_path / "car"
        agent = _car_polls(server, state, polls=2)
        assert agent.running_version == 2

    answer = _classify(state, cat_png)  # the registry is gone: the car answers on its own
    fp32 = _fp32_probability(source, cat, channel_order="BGR", scale=255, mean=[104, 117, 123])
    assert int(np.argmax(fp32)) == EGYPTIAN_CAT
    assert answer["label"] == "Egyptian cat" and answer["version"] == 2
    assert abs(float(answer["probability"]) - fp32[EGYPTIAN_CAT]) <= 0.02
