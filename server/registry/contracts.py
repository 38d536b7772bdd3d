"""Which input contract a new version gets: the publisher's spec, the line's previous version, the graph.

A publisher states what a graph cannot say (channel order, value scale, mean/std, a size for
dynamic height/width, labels) once, with ``--spec FILE`` and/or flags; later versions of the line
inherit it unless they change it.  Precedence per field: the spec of this publish, then what the
graph itself says (fixed input size, the score output, a Softmax at its end, labels in metadata or
in an ONNX-ML label output), then the previous version's contract.  Pure: no I/O, no database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnx

from models.contract import OVERRIDES, infer_contract, num_classes
from models.errors import ContractError
from protocol.contract import InputContract

# fields a later version takes from the line's previous version when neither the spec nor the graph says
_INHERITED = ("layout", "resize", "channel_order", "scale", "mean", "std")
MAX_SPEC_KEYS = 32


@dataclass(frozen=True)
class Resolved:
    """A version's contract and what changed from the previous version's (field names)."""

    contract: InputContract
    changed: tuple[str, ...]


def parse_spec(spec: Any) -> dict[str, Any]:
    """A publisher's spec (``--spec`` JSON and flags merged) as :func:`models.contract.infer_contract` overrides.

    Accepts the override names (``input_size`` as one integer or ``[height, width]``) and, so that a
    contract printed by ``ota model inspect`` or the versions API can be fed back, the contract's own
    ``height``/``width``.

    Raises:
        ContractError: not an object, or an unknown key.
    """
    if spec is None:
        return {}
    if not isinstance(spec, dict) or len(spec) > MAX_SPEC_KEYS:
        raise ContractError("the contract spec must be a JSON object of contract fields "
                            f"({', '.join(OVERRIDES)})")
    out = dict(spec)
    if "height" in out or "width" in out:
        h, w = out.pop("height", None), out.pop("width", None)
        if not isinstance(h, int) or not isinstance(w, int):
            raise ContractError("the contract spec gives 'height' and 'width' together, as integers")
        out.setdefault("input_size", [h, w])
    unknown = sorted(set(out) - set(OVERRIDES))
    if unknown:
        raise ContractError(f"unknown contract field(s) {', '.join(unknown)}; known: {', '.join(OVERRIDES)}")
    return {k: v for k, v in out.items() if v is not None}


def _names(values: Any) -> set[str]:
    return {v.name for v in values}


def resolve(model: onnx.ModelProto, spec: dict[str, Any], previous: InputContract | None) -> Resolved:
    """The contract of a new version of a line whose latest version has ``previous`` (None: a new line).

    Raises:
        ContractError: the spec and the graph do not make a contract that fits the model (the message
            names the mismatch and the flag to change).
    """
    given = parse_spec(spec)
    if previous is not None:
        inherited = {k: getattr(previous, k) for k in _INHERITED if k not in given}
        if "input_name" not in given and previous.input_name in _names(model.graph.input):
            inherited["input_name"] = previous.input_name
        if "output_name" not in given and previous.output_name in _names(model.graph.output):
            inherited["output_name"] = previous.output_name
        given = {**inherited, **given}
        try:
            contract = infer_contract(model, **given)
        except ContractError:
            if "input_size" in given:
                raise
            # dynamic height/width: the line's size, which the graph cannot contradict
            contract = infer_contract(model, **given, input_size=(previous.height, previous.width))
        if not contract.labels and "labels" not in given and previous.labels:
            classes = num_classes(model, contract.output_name)
            if classes == len(previous.labels):
                contract = infer_contract(model, **{**given, "labels": list(previous.labels),
                                                    "input_size": (contract.height, contract.width)})
    else:
        contract = infer_contract(model, **given)
    changed = () if previous is None else tuple(
        k for k, v in contract.to_dict().items() if v != previous.to_dict()[k])
    return Resolved(contract, changed)
