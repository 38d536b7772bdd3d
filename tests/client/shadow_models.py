"""ONNX models for comparison tests, built with onnx.helper on top of the real zoo models.

``swapped_classes`` answers like the model it wraps except that two classes trade places (a Gather with
a permutation on the score output): it passes any smoke test computed on itself, and disagrees with the
original exactly on frames of those two classes.  ``slow`` answers like the model it wraps after a chain
of matrix products that depends on the input (ONNX Runtime cannot fold it away): a candidate too slow
for the camera's frame rate.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _output(model: onnx.ModelProto, renamed: str) -> str:
    """Rename the graph's score output to ``renamed`` (every use too); returns the original name."""
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [renamed if o == out else o for o in node.output]
        node.input[:] = [renamed if i == out else i for i in node.input]
    return out


def swapped_classes(model_bytes: bytes, a: int, b: int, classes: int = 10) -> bytes:
    """``model_bytes`` with classes ``a`` and ``b`` swapped in its score output."""
    m = onnx.load_from_string(model_bytes)
    out = _output(m, "scores_unswapped")
    perm = list(range(classes))
    perm[a], perm[b] = perm[b], perm[a]
    m.graph.initializer.append(numpy_helper.from_array(np.array(perm, dtype=np.int64), "class_perm"))
    m.graph.node.append(helper.make_node("Gather", ["scores_unswapped", "class_perm"], [out], axis=1))
    onnx.checker.check_model(m)
    return m.SerializeToString()


def slow(model_bytes: bytes, matmuls: int = 300) -> bytes:
    """``model_bytes`` plus ``matmuls`` 64x64 matrix products on its input, added to the scores times zero."""
    m = onnx.load_from_string(model_bytes)
    out = _output(m, "scores_fast")
    inp = m.graph.input[0].name
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(64, 64)))  # orthogonal: values stay bounded
    m.graph.initializer.extend([
        numpy_helper.from_array(q.astype(np.float32), "slow_w"),
        numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "slow_shape"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "slow_zero"),
    ])
    nodes = [helper.make_node("Reshape", [inp, "slow_shape"], ["slow_0"])]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_{i + 1}"]))
    nodes += [helper.make_node("ReduceMean", [f"slow_{matmuls}"], ["slow_mean"], keepdims=0),
              helper.make_node("Mul", ["slow_mean", "slow_zero"], ["slow_nothing"]),
              helper.make_node("Add", ["scores_fast", "slow_nothing"], [out])]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    return m.SerializeToString()


def flattened(model_bytes: bytes, factor: float = 50.0) -> bytes:
    """``model_bytes`` with its logits divided by ``factor``: the same top-1 everywhere, a collapsed confidence."""
    m = onnx.load_from_string(model_bytes)
    out = _output(m, "scores_sharp")
    m.graph.initializer.append(numpy_helper.from_array(np.array(factor, dtype=np.float32), "flatten_by"))
    m.graph.node.append(helper.make_node("Div", ["scores_sharp", "flatten_by"], [out]))
    onnx.checker.check_model(m)
    return m.SerializeToString()


__all__ = ["TensorProto", "flattened", "slow", "swapped_classes"]
