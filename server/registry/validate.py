"""Checks an uploaded ONNX model and reads what the registry needs from it (pure, no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import onnx
from google.protobuf.message import DecodeError

from models.errors import UnsafeModel
from models.onnx_safety import check_embedded
from server.errors import InvalidModel


@dataclass(frozen=True)
class ModelInfo:
    """What publish needs to know about a valid upload."""

    labels: list[str]
    input_name: str
    input_shape: list[int]  # symbolic dims (batch) resolved to 1


def _input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise InvalidModel("model has no graph input; export it with a named image input")
    return inputs[0]


def inspect_upload(data: bytes) -> ModelInfo:
    """Validate ``data`` with ``onnx.checker`` and return its labels and input shape.

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
    inp = _input(model)
    dims = inp.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims]
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        labels = json.loads(meta["labels"]) if "labels" in meta else []
        if not isinstance(labels, list):
            raise ValueError("labels metadata is not a list")
    except ValueError as e:
        raise InvalidModel(f"model metadata 'labels' must be a JSON list of class names: {e}") from e
    return ModelInfo(labels=[str(x) for x in labels], input_name=inp.name, input_shape=shape)
