"""Checks an uploaded ONNX model before anything else looks at it (pure, no I/O)."""

from __future__ import annotations

import onnx
from google.protobuf.message import DecodeError

from models.errors import UnsafeModel
from models.onnx_safety import check_embedded
from server.errors import InvalidModel


def _input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise InvalidModel("model has no graph input; export it with a named image input")
    return inputs[0]


def inspect_upload(data: bytes) -> None:
    """Validate ``data`` with ``onnx.checker``.  What the registry reads from the graph (input, size, score
    output, labels) is its input contract's business (server/registry/contracts.py).

    Raises:
        InvalidModel: empty, not an ONNX ModelProto, truncated, keeps a tensor in a file (external
            data, anywhere in the model), or rejected by the checker.
    """
    if not data:
        raise InvalidModel("upload is empty; send the ONNX file as the multipart field 'file'")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InvalidModel(f"model upload is not an ONNX ModelProto ({len(data)} bytes; parse failed: {e}); "
                           "is the file truncated or not an .onnx export?") from e
    if not model.graph.node:
        raise InvalidModel(f"model upload is not an ONNX model: parsed {len(data)} bytes but found no graph nodes")
    try:  # before onnx.checker, which would look for the files
        check_embedded(model)
    except UnsafeModel as e:
        raise InvalidModel(f"model upload refused: {e}") from e
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
        raise InvalidModel(f"onnx.checker rejected the model: {first}") from e
    _input(model)
