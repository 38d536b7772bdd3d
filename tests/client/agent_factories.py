"""Factories for agent tests: signing keys, signed offers, smoke expectations, tiny ONNX models.

The server computes smoke expectations with ONNX Runtime on the decoded
package; ``smoke_for`` does the same here so unit tests need no server.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from onnx import TensorProto, helper

from client.manifest import canonical_json
from models import zoo
from models.smoke import golden_inputs, input_shape
from protocol.contract import InputContract

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
LABELS10 = ["stop", "yield", "speed_30", "speed_50", "speed_80", "no_entry", "priority_road",
            "pedestrian_crossing", "turn_left", "turn_right"]


def zoo_model(n: int) -> bytes:
    return (ZOO / f"v{n}.onnx").read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_key() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(signed: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = base64.b64encode(key.sign(canonical_json(signed))).decode()
    return {"signed": signed, "signatures": [{"keyid": sha(raw), "sig": sig}]}


def smoke_for(model: bytes, *, seed: int = 7, count: int = 2, atol: float = 1e-3,
              contract: InputContract | None = None) -> dict[str, Any]:
    """The offer's smoke object as the registry computes it: the contract's score output on golden inputs of
    the model's real input shape (its batch, the contract's size); the road-sign zoo's contract by default."""
    c = contract or zoo.contract()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    shape = input_shape(onnx.load_from_string(model), c)
    expected = [session.run([c.output_name], {c.input_name: x})[0].reshape(-1).tolist()
                for x in golden_inputs(seed, count, shape)]
    return {"seed": seed, "count": count, "shape": shape, "input_name": c.input_name, "expected": expected,
            "atol": atol}


def contract_for(labels: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The road-sign zoo's input contract (models/zoo/manifest.json) with these class names."""
    return {**zoo.contract().to_dict(), "labels": list(labels)}


def offer_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "offer",
        "device_id": "car-1",
        "line": "road-signs",
        "rollout_id": 7,
        "manifest_version": 100,
        "target_version": 2,
        "rollback": False,
        "codec": "lossless",
        "model_sha256": "0" * 64,
        "contract": contract_for(LABELS10),
        "package": {"sha256": "1" * 64, "size": 10, "url": "/api/v1/artifacts/" + "1" * 64},
        "delta": None,
        "smoke": {"seed": 1, "count": 1, "shape": [1, 3, 64, 64], "input_name": "input",
                  "expected": [[0.0] * 10], "atol": 0.001},
        "expires": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    body.update(overrides)
    return body


def nan_on_dark_model() -> bytes:
    """10-class model that is finite on the smoke inputs (mean ~0) but NaN on a black image (mean -2).

    logits = sqrt(mean(x) + 1) * ones(10): the golden inputs pass the smoke test, a dark
    camera frame produces NaN, which the health window must count as a failed inference.
    """
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 10], np.linspace(0.1, 1.0, 10, dtype=np.float32).tolist())
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=0),  # (batch,)
        helper.make_node("Add", ["m", "one"], ["m1"]),
        helper.make_node("Sqrt", ["m1"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "ax1"], ["s2"]),  # (batch, 1)
        helper.make_node("Mul", ["s2", "w"], ["logits"]),
    ]
    ax1 = helper.make_tensor("ax1", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "nan_on_dark", [x], [y], initializer=[one, w, axes, ax1])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


class OfflineOffers:
    """Plays the registry's signing role for agent tests that need no network.

    Artifacts are placed straight into the agent's download cache (content
    addressed, as the downloader would leave them), so ``handle_offer`` runs the
    real install path: hash check, patch, decode, smoke test, commit, swap.
    """

    def __init__(self, downloads: Path, device_id: str = "car-1") -> None:
        from models import codec

        self.codec = codec
        self.key, self.pub = new_key()
        self.downloads = downloads
        self.device_id = device_id
        self.mv = 1000

    def package(self, model: bytes) -> bytes:
        return self.codec.pack(model, "lossless").package

    def place(self, data: bytes) -> dict[str, Any]:
        (self.downloads / sha(data)).write_bytes(data)
        return {"sha256": sha(data), "size": len(data), "url": f"/api/v1/artifacts/{sha(data)}"}

    def offer(self, model: bytes, version: int, *, base_package: bytes | None = None, delta: bytes | None = None,
              smoke_model: bytes | None = None, labels: list[str] = LABELS10, place_package: bool = True,
              contract: InputContract | None = None, **signed_overrides: Any) -> dict[str, Any]:
        """A signed offer of ``model`` as ``version``; ``contract`` (default: the zoo's with ``labels``) is
        signed into it and its smoke test computed with it, as the registry does."""
        self.mv += 1
        pkg = self.package(model)
        delta_obj = None
        if base_package is not None:
            patch = delta if delta is not None else self.codec.diff(base_package, pkg)
            delta_obj = {**self.place(patch), "base_package_sha256": sha(base_package)}
        package_obj = self.place(pkg) if place_package else {"sha256": sha(pkg), "size": len(pkg),
                                                              "url": f"/api/v1/artifacts/{sha(pkg)}"}
        decoded = self.codec.unpack(pkg)  # the codec may re-serialise: the car runs what the package decodes to
        signed = offer_body(
            device_id=self.device_id, manifest_version=self.mv, target_version=version, model_sha256=sha(decoded),
            contract=contract.to_dict() if contract is not None else contract_for(labels), package=package_obj,
            delta=delta_obj, smoke=smoke_for(smoke_model or decoded, contract=contract),
        )
        signed.update(signed_overrides)
        return sign(signed, self.key)

