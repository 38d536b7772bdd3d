"""Build SqueezeNet ONNX models with onnx.helper and numpy (no PyTorch).

Used by tests and benchmarks to try the codec on architectures and shapes
other than the shipped zoo: SqueezeNet v1.0 and v1.1, any class count and
input size, dynamic or fixed batch.  Weights are random (He-initialised,
seeded), and ``fine_tune`` derives a "next version" by perturbing them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (squeeze, expand) per fire module, and where the 3x3/2 max-pools go.
_FIRES: dict[str, list[tuple[int, int] | str]] = {
    "1_0": [(16, 64), (16, 64), (32, 128), "pool", (32, 128), (48, 192), (48, 192), (64, 256), "pool", (64, 256)],
    "1_1": [(16, 64), (16, 64), "pool", (32, 128), (32, 128), "pool", (48, 192), (48, 192), (64, 256), (64, 256)],
}
_STEM = {"1_0": (96, 7), "1_1": (64, 3)}


class _Graph:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, std: float | None = None) -> str:
        w_name, b_name, out = self.name("w"), self.name("b"), self.name("conv")
        std = std if std is not None else float(np.sqrt(2.0 / (cin * k * k)))
        w = self.rng.normal(0.0, std, size=(cout, cin, k, k)).astype(np.float32)
        b = self.rng.normal(0.0, 0.01, size=cout).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, w_name), numpy_helper.from_array(b, b_name)]
        self.nodes.append(helper.make_node("Conv", [x, w_name, b_name], [out], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4))
        return out

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def pool(self, x: str) -> str:
        return self.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)


def squeezenet(version: str = "1_1", num_classes: int = 10, image_size: int = 64, batch: int | None = None,
               seed: int = 0) -> bytes:
    """Serialized SqueezeNet ``version`` ("1_0" or "1_1"): input ``input`` NCHW, output ``logits``."""
    if version not in _FIRES:
        raise ValueError(f"unknown SqueezeNet version {version!r}; use '1_0' or '1_1'")
    g = _Graph(np.random.default_rng(seed))
    stem, k = _STEM[version]
    x = g.pool(g.relu(g.conv("input", 3, stem, k, stride=2)))
    ch = stem
    for fire in _FIRES[version]:
        if isinstance(fire, str):
            x = g.pool(x)
            continue
        sq, ex = fire
        s = g.relu(g.conv(x, ch, sq, 1))
        x = g.op("Concat", [g.relu(g.conv(s, sq, ex, 1)), g.relu(g.conv(s, sq, ex, 3, pad=1))], axis=1)
        ch = 2 * ex
    x = g.relu(g.conv(x, ch, num_classes, 1, std=0.05))
    x = g.op("GlobalAveragePool", [x])
    g.nodes.append(helper.make_node("Flatten", [x], ["logits"], axis=1))
    dim = batch if batch else "batch"
    graph = helper.make_graph(
        g.nodes, f"squeezenet{version}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [dim, 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dim, num_classes])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnx_factory")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def fine_tune(onnx_bytes: bytes, scale: float = 0.01, only: str | None = None, seed: int = 1) -> bytes:
    """A "next version": every float weight (or only those whose name contains ``only``) nudged
    by Gaussian noise of ``scale`` times the tensor's RMS."""
    model = onnx.load_model_from_string(onnx_bytes)
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        if only is not None and only not in t.name:
            continue
        w = numpy_helper.to_array(t)
        rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2))) or 1.0
        t.CopyFrom(numpy_helper.from_array((w + rng.normal(0, scale * rms, w.shape)).astype(np.float32), t.name))
    return model.SerializeToString()


def inputs(image_size: int, count: int, seed: int = 0) -> np.ndarray:
    """Random float32 model inputs (N, 3, H, W), a probe set for factory models."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, size=(count, 3, image_size, image_size)).astype(np.float32)
