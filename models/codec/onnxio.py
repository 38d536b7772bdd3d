"""Split an ONNX model into a weightless graph ("skeleton") and its float32 weights, and back.

Only float32 initializers are coded; every other tensor (int64 shapes,
constants) stays inside the skeleton untouched.  The model's metadata
properties (version, labels) are split off too and travel in the package
header, so that two versions of one graph share one skeleton.  Reassembly puts the
decoded weights back as ``raw_data`` in initializer order and serializes with
protobuf, which is deterministic for a given message, so a package always
decodes to the same bytes (and, for a model saved by ``onnx.save``, the
lossless codec gives back the uploaded file byte for byte).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from models.errors import CorruptPackage, InvalidModel, UnsafeModel
from models.onnx_safety import check_embedded


def load(onnx_bytes: bytes) -> onnx.ModelProto:
    """Parse and check an uploaded model.

    Raises:
        InvalidModel: not an ONNX ModelProto or fails the checker.
        UnsafeModel: some tensor keeps its bytes outside the file (checked before the checker,
            which would look for the file).
    """
    if not onnx_bytes:
        raise InvalidModel("model upload is empty")
    try:
        model = onnx.load_model_from_string(onnx_bytes)
    except Exception as e:  # protobuf DecodeError and friends
        raise InvalidModel(f"not an ONNX ModelProto ({len(onnx_bytes)} bytes did not parse: {e})") from e
    if not model.graph.node:
        raise InvalidModel("ONNX model has an empty graph (is the file truncated or another protobuf?)")
    check_embedded(model)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise InvalidModel(f"ONNX checker rejected the model: {str(e).splitlines()[0]}") from e
    return model


def metadata(model: onnx.ModelProto) -> list[list[str]]:
    """The model's metadata properties as ``[[key, value], ...]`` in file order."""
    return [[p.key, p.value] for p in model.metadata_props]


def split(model: onnx.ModelProto) -> tuple[bytes, list[tuple[str, np.ndarray]]]:
    """(skeleton bytes, [(name, float32 weights)]) in initializer order; the skeleton has no metadata properties."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    skeleton.ClearField("metadata_props")
    weights = []
    for t in skeleton.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        weights.append((t.name, numpy_helper.to_array(t).astype(np.float32)))
        t.ClearField("float_data")
        t.ClearField("raw_data")
    return skeleton.SerializeToString(), weights


def assemble(skeleton: bytes, weights: dict[str, np.ndarray], props: list[list[str]] | None = None) -> bytes:
    """Put decoded weights (and metadata properties) back into the skeleton; the ONNX bytes the car runs.

    The skeleton came from the server: before the car builds a session on it, every tensor in it
    must be embedded (a skeleton naming a file would make ONNX Runtime read the car's disk).

    Raises:
        CorruptPackage: the skeleton does not parse or keeps a tensor in a file, a weight is
            missing, or a property is malformed.
    """
    model = onnx.ModelProto()
    try:
        model.ParseFromString(skeleton)
    except Exception as e:
        raise CorruptPackage(f"package graph does not parse: {e}") from e
    try:
        check_embedded(model)
    except UnsafeModel as e:
        raise CorruptPackage(f"package graph is unsafe to load: {e}") from e
    for prop in props or []:
        if not (isinstance(prop, list) and len(prop) == 2 and all(isinstance(x, str) for x in prop)):
            raise CorruptPackage(f"package metadata entry {str(prop)[:60]!r} is not a [key, value] pair of strings")
        model.metadata_props.add(key=prop[0], value=prop[1])
    for t in model.graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        w = weights.get(t.name)
        if w is None:
            raise CorruptPackage(f"package has no weights for initializer {t.name!r}")
        t.raw_data = np.ascontiguousarray(w, dtype="<f4").tobytes()
    return model.SerializeToString()


def input_spec(model: onnx.ModelProto) -> tuple[str, list[int | None]]:
    """Name and dims (None where symbolic) of the first graph input that is not a weight."""
    weights = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name not in weights:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
            return inp.name, dims
    raise InvalidModel("ONNX model has no data input")

