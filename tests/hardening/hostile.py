"""Hostile inputs for the hardening tests: models that try to blow up the registry, and raw HTTP.

Each builder returns bytes an attacker (or a broken exporter) could upload;
none of them may cost the server more than a 4xx.
"""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def _zoo_v1() -> onnx.ModelProto:
    return onnx.load(ZOO / "v1.onnx")


def external_data_model(location: str) -> bytes:
    """The zoo model with its first weight moved to 'external data' at ``location`` (a path on the server)."""
    model = _zoo_v1()
    init = model.graph.initializer[0]
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    entry = init.external_data.add()
    entry.key, entry.value = "location", location
    return model.SerializeToString()


def huge_declared_tensor_model() -> bytes:
    """A weight that claims 640 billion elements and carries none: a parser that trusts dims allocates them."""
    model = _zoo_v1()
    init = model.graph.initializer[0]
    init.ClearField("raw_data")
    init.ClearField("float_data")
    del init.dims[:]
    init.dims.extend([100_000, 100_000, 64])
    return model.SerializeToString()


def expanding_graph_model() -> bytes:
    """~300 bytes that, when run, ask for a 160 GB tensor (ConstantOfShape): the ONNX zip bomb."""
    shape = numpy_helper.from_array(np.array([200_000, 200_000], dtype=np.int64), "bomb_shape")
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("ConstantOfShape", ["bomb_shape"], ["big"], value=one),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
             helper.make_node("Add", ["input", "total"], ["shifted"]),
             helper.make_node("ReduceMean", ["shifted"], ["output"], axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(
        nodes, "bomb", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def gzip_bomb(inflated_bytes: int = 50_000_000) -> bytes:
    """50 MB of zeros gzipped to ~50 KB; sent with Content-Encoding: gzip it must not be inflated."""
    return gzip.compress(b"\0" * inflated_bytes, compresslevel=9)


def raw_http(url: str, request: bytes, timeout_s: float = 10.0) -> bytes:
    """Send raw bytes to the server at ``url`` (http://host:port) and return what comes back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything: read what it said
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)
