"""Refuse ONNX models that keep any tensor outside the model bytes ("external data").

Any ``TensorProto`` can say "my bytes are in file X, from offset O, length
L".  ONNX Runtime resolves X against the model file's folder, or, for a model
loaded from bytes, the process's working directory: a 300-byte upload whose
``Constant`` reads ``.ota-data/signing-key.pem`` makes the registry's smoke
test compute on the signing key and ship the result to every car.  A model
in this system is data, never a file reference, so :func:`check_embedded`
walks *every* tensor a runtime could load:

- initializers and sparse initializers (values and indices) of the main graph,
- the same in every subgraph (``If`` branches, ``Loop``/``Scan`` bodies, nested),
- every tensor-valued attribute (``Constant.value``, ``ConstantOfShape.value``,
  any TENSOR/TENSORS/SPARSE_TENSOR/SPARSE_TENSORS attribute), whatever its
  declared type says (a hostile file can set a field and lie in ``type``),
- the nodes and attribute defaults of ``model.functions`` and the graphs of
  ``training_info``.

The walk is bounded (graph nesting depth and total node count) so that a
hostile file cannot make the check itself expensive.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import onnx

from models.errors import InvalidModel, UnsafeModel

#: Graphs nested deeper than this (an ``If`` inside a ``Loop`` inside ...) are refused; real models use 1-3.
MAX_GRAPH_DEPTH = 16
#: Nodes over all graphs and functions; SqueezeNet has 66, large vision models a few thousand.
MAX_NODES = 200_000

FIX = "external data is not allowed: embed the weights (onnx.save_model(..., save_as_external_data=False))"


@dataclass(frozen=True)
class _Graph:
    graph: onnx.GraphProto
    depth: int
    where: str  # "graph 'main'", "graph 'body' (attribute 'body' of Loop node 'l0' in graph 'main')"


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return f"{node.op_type or '?'} node {node.name!r}" if node.name else f"{node.op_type or '?'} node #{index}"


def _refuse_external(tensor: onnx.TensorProto, what: str) -> None:
    if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise UnsafeModel(f"tensor {tensor.name!r} ({what}) keeps its bytes outside the model, in the file "
                          f"{location[:200]!r}; {FIX}")


def _check_sparse(sparse: onnx.SparseTensorProto, what: str) -> None:
    _refuse_external(sparse.values, f"values of sparse {what}")
    _refuse_external(sparse.indices, f"indices of sparse {what}")


def _attribute_graphs(attr: onnx.AttributeProto, what: str) -> Iterator[tuple[onnx.GraphProto, str]]:
    """Check the attribute's own tensors; yield the subgraphs it holds, with a description each."""
    if attr.HasField("t"):
        _refuse_external(attr.t, what)
    for t in attr.tensors:
        _refuse_external(t, what)
    if attr.HasField("sparse_tensor"):
        _check_sparse(attr.sparse_tensor, what)
    for s in attr.sparse_tensors:
        _check_sparse(s, what)
    if attr.HasField("g"):
        yield attr.g, what
    for g in attr.graphs:
        yield g, what


def _check_nodes(nodes: Iterable[onnx.NodeProto], where: str, depth: int, budget: list[int]) -> Iterator[_Graph]:
    """Check every node's attributes; yield the subgraphs one level down.  ``budget`` is [nodes left, limit]."""
    for i, node in enumerate(nodes):
        budget[0] -= 1
        if budget[0] < 0:
            raise UnsafeModel(f"model has more than {budget[1]} nodes over all its graphs and functions; "
                              "split it, or raise the limit if such a model is expected")
        for attr in node.attribute:
            what = f"attribute {attr.name!r} of {_node_label(node, i)} in {where}"
            for g, desc in _attribute_graphs(attr, what):
                if depth + 1 > MAX_GRAPH_DEPTH:
                    raise UnsafeModel(f"graphs are nested more than {MAX_GRAPH_DEPTH} deep ({desc}); "
                                      "flatten the control flow")
                yield _Graph(g, depth + 1, f"graph {g.name!r} ({desc})")


def _check_graph(g: _Graph, budget: list[int]) -> Iterator[_Graph]:
    for t in g.graph.initializer:
        _refuse_external(t, f"initializer of {g.where}")
    for s in g.graph.sparse_initializer:
        _check_sparse(s, f"initializer of {g.where}")
    yield from _check_nodes(g.graph.node, g.where, g.depth, budget)


def check_embedded(model: onnx.ModelProto, *, max_nodes: int = MAX_NODES) -> None:
    """Refuse ``model`` if any tensor anywhere in it keeps its bytes in a file.

    Call it before anything (``onnx.checker``, ONNX Runtime) looks at the model.

    Raises:
        UnsafeModel: a tensor uses external data (the message names the tensor and the node
            holding it), or graphs nest deeper than ``MAX_GRAPH_DEPTH``, or there are more than
            ``max_nodes`` nodes.
    """
    budget = [max_nodes, max_nodes]  # [left, limit]
    pending = [_Graph(model.graph, 0, f"graph {model.graph.name!r}")]
    for ti, info in enumerate(model.training_info):
        for field in ("initialization", "algorithm"):
            if info.HasField(field):
                pending.append(_Graph(getattr(info, field), 1, f"training_info #{ti} {field} graph"))
    for f in model.functions:
        where = f"function {f.domain + '.' if f.domain else ''}{f.name}"
        for attr in f.attribute_proto:  # default attribute values
            pending.extend(_Graph(g, 1, f"graph {g.name!r} ({d})")
                           for g, d in _attribute_graphs(attr, f"default of attribute {attr.name!r} of {where}"))
        pending.extend(_check_nodes(f.node, where, 0, budget))
    while pending:
        pending.extend(_check_graph(pending.pop(), budget))


def parse_embedded(data: bytes) -> onnx.ModelProto:
    """Parse ONNX bytes and :func:`check_embedded` them (for callers that hold bytes, not a model).

    Raises:
        InvalidModel: the bytes are not an ONNX ModelProto.
        UnsafeModel: see :func:`check_embedded`.
    """
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf DecodeError and friends
        raise InvalidModel(f"not an ONNX ModelProto ({len(data)} bytes did not parse: {e})") from e
    check_embedded(model)
    return model
