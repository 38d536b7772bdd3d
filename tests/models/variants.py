"""Classifier variants built with onnx.helper around a real SqueezeNet, the way other toolchains export.

Each wraps the zoo's trained v1 (64x64 RGB, mean 0.5 / std 0.25, logits) so that, given the right
contract, it computes exactly what v1 computes: a test can then check that the contract inferred
for the variant feeds it the same numbers as v1's own contract feeds v1.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INNER = "inner_input"


def _renamed(base: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``base`` whose data input is an internal tensor ``INNER`` (so nodes can be put in front)."""
    m = onnx.ModelProto()
    m.CopyFrom(base)
    old = m.graph.input[0].name
    for node in m.graph.node:
        node.input[:] = [INNER if x == old else x for x in node.input]
    del m.graph.input[0]
    return m


def _const(m: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    m.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def variant(base: onnx.ModelProto, *, nhwc: bool = False, bgr255: bool = False, dims: list | None = None,
            softmax: bool = False, label_output: str | None = None, zipmap: bool = False,
            keep_metadata: bool = True) -> onnx.ModelProto:
    """``base`` re-exported: NHWC input (Transpose in front), BGR 0..255 input (the normalisation folded
    into ops), other input dims (dynamic batch/spatial, fixed batch), a Softmax at the end, an extra
    int64 or string label output (ArgMax + a label tensor), an ONNX-ML ZipMap output.

    Label/ZipMap outputs are listed *before* the score output, as converters often do.
    """
    labels = [p.value for p in base.metadata_props if p.key == "labels"]
    names = [str(s) for s in __import__("json").loads(labels[0])] if labels else []
    m = _renamed(base)
    pre: list[onnx.NodeProto] = []
    x = "image"
    if nhwc:
        pre.append(helper.make_node("Transpose", [x], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    if bgr255:
        pre += [
            helper.make_node("Gather", [x, _const(m, "bgr_to_rgb", np.array([2, 1, 0], np.int64))], ["x_rgb"], axis=1),
            helper.make_node("Div", ["x_rgb", _const(m, "k255", np.array(255.0, np.float32))], ["x01"]),
            helper.make_node("Sub", ["x01", _const(m, "k_mean", np.array(0.5, np.float32))], ["x_c"]),
            helper.make_node("Div", ["x_c", _const(m, "k_std", np.array(0.25, np.float32))], ["x_n"]),
        ]
        x = "x_n"
    pre.append(helper.make_node("Identity", [x], [INNER]))
    nodes = pre + list(m.graph.node)
    score = m.graph.output[0]
    outputs = []
    if softmax:
        nodes.append(helper.make_node("Softmax", [score.name], ["prob"], axis=1))
        score = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [d.dim_param or d.dim_value for d in
                                                                          score.type.tensor_type.shape.dim])
    if label_output:
        nodes.append(helper.make_node("ArgMax", [score.name], ["label_index"], axis=1, keepdims=0))
        if label_output == "int64":
            outputs.append(helper.make_tensor_value_info("label_index", TensorProto.INT64, ["N"]))
        else:
            table = numpy_helper.from_array(np.array(names, dtype=object), "label_table")
            m.graph.initializer.append(table)
            nodes.append(helper.make_node("Gather", ["label_table", "label_index"], ["label"], axis=0))
            outputs.append(helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]))
    if zipmap:
        nodes.append(helper.make_node("ZipMap", [score.name], ["probabilities_map"], domain="ai.onnx.ml",
                                      classlabels_strings=names))
        seq_map = helper.make_sequence_type_proto(helper.make_map_type_proto(
            TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
        outputs.append(helper.make_value_info("probabilities_map", seq_map))
        m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    outputs.append(score)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.output[:]
    m.graph.output.extend(outputs)
    shape = dims or (["N", 64, 64, 3] if nhwc else ["N", 3, 64, 64])
    m.graph.input.insert(0, helper.make_tensor_value_info("image", TensorProto.FLOAT, shape))
    if not keep_metadata:
        m.ClearField("metadata_props")
    onnx.checker.check_model(m)
    return m
