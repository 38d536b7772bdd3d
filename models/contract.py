"""Reading a model line's input contract off an ONNX graph, and checking that one fits a model.

The contract value itself (:class:`~protocol.contract.InputContract`: fields, validation, JSON)
is part of the wire protocol and lives in :mod:`protocol.contract`; this module adds what needs
the graph:

* :func:`infer_contract` reads what the ONNX graph itself says (input name, layout and size, the
  class-score output, whether it ends in Softmax, labels in metadata or in an ONNX-ML label
  output); what a graph cannot say (channel order, value scale, mean/std) comes from overrides.
* :func:`check_contract` refuses a contract that does not fit a model, naming the mismatch.

Pure: no I/O; ``onnx`` protos in, values or :class:`~models.errors.ContractError` out.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from models.errors import ContractError
from protocol import errors as protocol_errors
from protocol.contract import (
    CHANNEL_ORDERS,
    CHANNELS,
    LAYOUTS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    MAX_SIDE,
    OUTPUT_KINDS,
    RESIZES,
    SCALES,
    InputContract,
    _is_number,
)

__all__ = ["CHANNELS", "CHANNEL_ORDERS", "LAYOUTS", "OVERRIDES", "MAX_LABELS", "MAX_LABEL_CHARS", "MAX_SIDE", "OUTPUT_KINDS",
           "RESIZES", "SCALES", "ContractError", "InputContract", "check_contract", "infer_contract",
           "model_labels", "parse_labels"]

# ops that only reshape a tensor: a Softmax followed by these still ends the graph in probabilities
_SHAPE_ONLY = ("Flatten", "Reshape", "Squeeze", "Identity")
# ops that pick a label out of a constant label tensor by class index
_LABEL_PICKERS = ("Gather", "ArrayFeatureExtractor")

# ---------------------------------------------------------------------------------------------- graph reading

def _dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """Dims of a tensor value (None where symbolic), or None when the value is not a tensor or has no shape."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value.type.tensor_type.shape.dim]


def _is_float(value: onnx.ValueInfoProto) -> bool:
    return value.type.HasField("tensor_type") and value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    weights = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def _find_input(model: onnx.ModelProto, name: str | None) -> onnx.ValueInfoProto:
    inputs = _data_inputs(model)
    if not inputs:
        raise ContractError("the model has no data input")
    if name is None:
        return inputs[0]
    for inp in inputs:
        if inp.name == name:
            return inp
    raise ContractError(f"the model has no input {name!r}; its inputs are {', '.join(i.name for i in inputs)}")


def _image_dims(inp: onnx.ValueInfoProto) -> list[int | None]:
    dims = _dims(inp)
    if not _is_float(inp) or dims is None or len(dims) != 4:
        shape = "unknown" if dims is None else [d if d else "?" for d in dims]
        raise ContractError(f"model input {inp.name!r} must be a 4-D float32 image batch (NCHW or NHWC), "
                            f"got elem type {inp.type.tensor_type.elem_type} with shape {shape}")
    return dims


def _guess_layout(dims: list[int | None]) -> str:
    return "NHWC" if dims[3] == CHANNELS and dims[1] != CHANNELS else "NCHW"


def _score_candidates(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Float outputs of rank 2, or [N, C, 1, 1]: the ones that can hold class scores."""
    out = []
    for o in model.graph.output:
        dims = _dims(o)
        if not _is_float(o) or dims is None:
            continue  # label tensors (int64/string), ZipMap's seq(map), outputs without a shape
        if len(dims) == 2 or (len(dims) == 4 and dims[2] == 1 and dims[3] == 1):
            out.append(o)
    return out


def score_output(model: onnx.ModelProto, name: str | None = None) -> onnx.ValueInfoProto:
    """The output holding class scores: ``name`` if given, else the first float output of rank 2 (or N,C,1,1).

    Raises:
        ContractError: no such output (the message lists the outputs and the flag to pass).
    """
    outputs = list(model.graph.output)
    listed = ", ".join(f"{o.name} ({'float' if _is_float(o) else 'not float'}, rank "
                       f"{'?' if _dims(o) is None else len(_dims(o) or [])})" for o in outputs)
    if name is not None:
        for o in outputs:
            if o.name == name:
                if not _is_float(o):
                    raise ContractError(f"output {name!r} does not hold float class scores; outputs: {listed}")
                return o
        raise ContractError(f"the model has no output {name!r}; its outputs are: {listed}")
    candidates = _score_candidates(model)
    if not candidates:
        raise ContractError("no output holds class scores (a float tensor [N, classes] or [N, classes, 1, 1]); "
                            f"outputs: {listed}. Export the scores as an output (ZipMap-only classifiers: "
                            "export without ZipMap) or name one with --output")
    return candidates[0]


def num_classes(model: onnx.ModelProto, output: str) -> int | None:
    """The class count of ``output`` (its dim 1), from the declared shape or ONNX shape inference."""
    for o in model.graph.output:
        if o.name == output:
            dims = _dims(o)
            if dims is not None and len(dims) >= 2 and dims[1]:
                return dims[1]
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a best effort; the runtime measures later
        return None
    for o in list(inferred.graph.output) + list(inferred.graph.value_info):
        if o.name == output:
            dims = _dims(o)
            return dims[1] if dims is not None and len(dims) >= 2 and dims[1] else None
    return None


def ends_in_softmax(model: onnx.ModelProto, output: str) -> bool:
    """Whether ``output`` is made by a Softmax (possibly followed by reshapes only)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    name = output
    for _ in range(16):
        node = producers.get(name)
        if node is None:
            return False
        if node.op_type == "Softmax" and node.domain in ("", "ai.onnx"):
            return True
        if node.op_type not in _SHAPE_ONLY or not node.input:
            return False
        name = node.input[0]
    return False


def _strings(values: list[bytes]) -> tuple[str, ...]:
    return tuple(v.decode("utf-8", "replace") for v in values)


def _constant_strings(model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """String tensors in the graph (initializers and Constant nodes), by name."""
    out = {t.name: _strings(list(t.string_data)) for t in model.graph.initializer
           if t.data_type == onnx.TensorProto.STRING}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.STRING:
                    out[node.output[0]] = _strings(list(a.t.string_data))
                elif a.name == "value_strings":
                    out[node.output[0]] = _strings(list(a.strings))
    return out


def model_labels(model: onnx.ModelProto) -> tuple[str, ...]:
    """Class names the model carries: a ``labels`` metadata entry (JSON list or one per line), an ONNX-ML
    ``classlabels_strings`` attribute (ZipMap, classifiers), or a string tensor a Gather picks a label from.

    Raises:
        ContractError: a ``labels`` metadata entry is present but empty or malformed.
    """
    for prop in model.metadata_props:
        if prop.key == "labels":
            return _parse_labels(prop.value, "the model's 'labels' metadata")
    for node in model.graph.node:
        for a in node.attribute:
            if a.name == "classlabels_strings" and a.strings:
                return _strings(list(a.strings))
    constants = _constant_strings(model)
    for node in model.graph.node:
        if node.op_type in _LABEL_PICKERS and node.input and node.input[0] in constants:
            return constants[node.input[0]]
    return ()


def _parse_labels(text: str, where: str) -> tuple[str, ...]:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            values = json.loads(stripped)
        except ValueError as e:
            raise ContractError(f"{where} looks like JSON but does not parse: {e}") from e
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ContractError(f"{where} must be a JSON list of strings")
        labels = tuple(values)
    else:
        labels = tuple(line.strip() for line in stripped.splitlines() if line.strip())
    if not labels:
        raise ContractError(f"{where} holds no labels")
    return labels


def parse_labels(text: str) -> tuple[str, ...]:
    """Labels from a ``--labels`` file's text: one per line (blank lines skipped), or a JSON list.

    Raises:
        ContractError: empty, or malformed JSON.
    """
    return _parse_labels(text, "the labels file")


# ---------------------------------------------------------------------------------------------- public API

OVERRIDES = ("input_name", "layout", "input_size", "resize", "channel_order", "scale", "mean", "std",
              "output_name", "output_kind", "labels")


def infer_contract(model: onnx.ModelProto, **overrides: Any) -> InputContract:
    """The contract the model states, with ``overrides`` for what it cannot state.

    Overrides: ``input_name``, ``layout``, ``input_size`` (int or (height, width)), ``resize``,
    ``channel_order``, ``scale``, ``mean``, ``std`` (a number or three), ``output_name``,
    ``output_kind``, ``labels``.  Defaults: stretch resize, RGB, scale 1, mean 0, std 1; logits
    unless the score output is made by a Softmax.  The result is checked with :func:`check_contract`.

    Raises:
        ContractError: an unknown override, no usable input/output, dynamic height/width without
            ``input_size`` (flag ``--input-size``), or a contract that does not fit the model.
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ContractError(f"unknown contract override(s) {', '.join(unknown)}; known: {', '.join(OVERRIDES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    inp = _find_input(model, given.get("input_name"))
    dims = _image_dims(inp)
    layout = given.get("layout", _guess_layout(dims))
    if layout not in LAYOUTS:
        raise ContractError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    h_dim, w_dim = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    if "input_size" in given:
        height, width = _size(given["input_size"])
    elif h_dim and w_dim:
        height, width = h_dim, w_dim
    else:
        raise ContractError(f"model input {inp.name!r} has dynamic height/width; pass the size the model expects "
                            "with --input-size (e.g. --input-size 224)")
    out = score_output(model, given.get("output_name"))
    kind = given.get("output_kind", "probabilities" if ends_in_softmax(model, out.name) else "logits")
    labels = given["labels"] if "labels" in given else model_labels(model)
    if isinstance(labels, str):
        labels = parse_labels(labels)
    try:
        contract = InputContract(
            input_name=inp.name, layout=layout, height=height, width=width,
            resize=given.get("resize", "stretch"), channel_order=str(given.get("channel_order", "RGB")).upper(),
            scale=float(given.get("scale", 1.0)) if _is_number(given.get("scale", 1.0)) else given["scale"],
            mean=_per_channel(given.get("mean", 0.0), "mean"), std=_per_channel(given.get("std", 1.0), "std"),
            output_name=out.name, output_kind=kind, labels=tuple(labels),
        )
    except protocol_errors.ContractError as e:
        if isinstance(e, ContractError):
            raise
        raise ContractError(str(e)) from e
    check_contract(model, contract)
    return contract


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ContractError(f"--input-size must be one integer or HEIGHT,WIDTH, got {value!r}")


def _per_channel(value: Any, name: str) -> tuple[float, ...]:
    if _is_number(value):
        return (float(value),) * CHANNELS
    if isinstance(value, list | tuple) and all(_is_number(v) for v in value):
        return tuple(float(v) for v in value)
    raise ContractError(f"--{name} must be a number or {CHANNELS} comma-separated numbers, got {value!r}")


def check_contract(model: onnx.ModelProto, contract: InputContract) -> None:
    """Refuse a contract that does not fit the model, naming the mismatch.

    Checks the input's name, rank, float type, channel count and any fixed height/width against
    the contract; the score output's name and type; and the label count against the class count.

    Raises:
        ContractError: the first mismatch found.
    """
    inp = _find_input(model, contract.input_name)
    dims = _image_dims(inp)
    c_dim, h_dim, w_dim = (dims[1], dims[2], dims[3]) if contract.layout == "NCHW" else (dims[3], dims[1], dims[2])
    if c_dim is not None and c_dim != CHANNELS:
        raise ContractError(f"model input {inp.name!r} has {c_dim} channels in {contract.layout} layout; the contract "
                            f"feeds {CHANNELS} ({contract.channel_order}). Check --layout (input shape "
                            f"{[d if d else '?' for d in dims]})")
    for what, fixed, wanted in (("height", h_dim, contract.height), ("width", w_dim, contract.width)):
        if fixed is not None and fixed != wanted:
            raise ContractError(f"contract input size {contract.height}x{contract.width} does not fit model input "
                                f"{inp.name!r}, whose {what} is fixed to {fixed}; use --input-size {h_dim or '?'}"
                                f"{'' if h_dim == w_dim else f',{w_dim}'}")
    score_output(model, contract.output_name)
    classes = num_classes(model, contract.output_name)
    if contract.labels and classes is not None and len(contract.labels) != classes:
        raise ContractError(f"{len(contract.labels)} labels given but output {contract.output_name!r} has "
                            f"{classes} classes; the labels file needs one line per class, in class order")
