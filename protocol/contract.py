"""A model line's input contract: what an image must become before the model sees it, and what comes out.

A fleet team ships its own classifier, exported from its own toolchain, with its own
preprocessing (size, channel order, value range, mean/std) and labels.  :class:`InputContract`
says all of that in one small, validated, canonical-JSON value: the registry stores it with every
version, signs it inside every offer, and the codec's gate and the car's ``classify`` both apply it
through :mod:`models.preprocess`, so both see the model's own inputs.

This module is the value only (fields, validation, JSON).  Reading a contract off an ONNX graph
and checking that it fits one is :mod:`models.contract`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from protocol.canonical import canonical_json
from protocol.errors import ContractError

LAYOUTS = ("NCHW", "NHWC")
RESIZES = ("stretch", "crop")  # crop: shorter side to the target, then centre crop
CHANNEL_ORDERS = ("RGB", "BGR")
SCALES = (1.0, 255.0)  # pixel values 0..1 or 0..255 before mean/std
OUTPUT_KINDS = ("logits", "probabilities")
CHANNELS = 3
MAX_SIDE = 4096
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 256



@dataclass(frozen=True)
class InputContract:
    """How to turn a uint8 image into the model's input, and how to read its output.

    ``mean`` and ``std`` are per channel in the *model's* channel order and apply after the
    value scale: ``x = (pixel / 255 * scale - mean) / std``.  Empty ``labels`` means the
    model has no names for its classes (``class_<i>`` is shown).
    """

    input_name: str
    layout: str
    height: int
    width: int
    resize: str
    channel_order: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output_name: str
    output_kind: str
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, data: Any) -> InputContract:
        """Build from a parsed JSON object; unknown or missing fields are refused.

        Raises:
            ContractError: not an object, a field is missing, unknown, of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise ContractError(f"contract must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ContractError(f"unknown contract field(s) {', '.join(unknown)}; known: {', '.join(names)}")
        missing = [n for n in names if n not in data and n != "labels"]
        if missing:
            raise ContractError(f"contract is missing field(s) {', '.join(missing)}")
        values = dict(data)
        for key in ("mean", "std", "labels"):
            if key in values:
                if not isinstance(values[key], list | tuple):
                    raise ContractError(f"contract field {key!r} must be a list, got {type(values[key]).__name__}")
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples as lists)."""
        d = asdict(self)
        for key in ("mean", "std", "labels"):
            d[key] = list(d[key])
        return d

    def canonical(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces, UTF-8): the bytes a signature covers."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> InputContract:
        """Parse a JSON document (e.g. a ``--spec`` file).

        Raises:
            ContractError: not JSON, or not a valid contract.
        """
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ContractError(f"contract is not valid JSON: {e}") from e
        return cls.from_dict(data)

    def same_input(self, other: InputContract) -> bool:
        """Whether an image becomes the same input array under both contracts (layout, size, resize, channel
        order, scale, mean, std): a second model may then reuse the first one's prepared input."""
        return (self.layout, self.height, self.width, self.resize, self.channel_order, self.scale, self.mean,
                self.std) == (other.layout, other.height, other.width, other.resize, other.channel_order,
                              other.scale, other.mean, other.std)

    def label(self, index: int) -> str:
        """The name of class ``index`` (``class_<index>`` when the contract has no labels)."""
        return self.labels[index] if 0 <= index < len(self.labels) else f"class_{index}"

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The model input's shape for ``batch`` images, in the contract's layout."""
        if self.layout == "NCHW":
            return (batch, CHANNELS, self.height, self.width)
        return (batch, self.height, self.width, CHANNELS)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _validate(c: InputContract) -> None:
    """Refuse field values a contract cannot have (types and ranges; fitting a model is check_contract's job)."""
    for name in ("input_name", "output_name"):
        value = getattr(c, name)
        if not isinstance(value, str) or not value:
            raise ContractError(f"contract field {name!r} must be a non-empty string, got {value!r}")
    for name, allowed in (("layout", LAYOUTS), ("resize", RESIZES), ("channel_order", CHANNEL_ORDERS),
                          ("output_kind", OUTPUT_KINDS)):
        if getattr(c, name) not in allowed:
            raise ContractError(f"contract field {name!r} must be one of {', '.join(allowed)}, got {getattr(c, name)!r}")
    for name in ("height", "width"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIDE:
            raise ContractError(f"contract field {name!r} must be an integer from 1 to {MAX_SIDE}, got {value!r} "
                                "(set it with --input-size)")
    if not _is_number(c.scale) or float(c.scale) not in SCALES:
        raise ContractError(f"contract field 'scale' must be 1 (pixel values 0..1) or 255 (0..255), got {c.scale!r}")
    for name in ("mean", "std"):
        value = getattr(c, name)
        if not isinstance(value, tuple) or len(value) != CHANNELS or not all(_is_number(v) for v in value):
            raise ContractError(f"contract field {name!r} must be {CHANNELS} finite numbers (one per channel, in the "
                                f"model's channel order), got {value!r}")
    if any(v <= 0 for v in c.std):
        raise ContractError(f"contract field 'std' must be positive, got {c.std!r}")
    if not isinstance(c.labels, tuple) or len(c.labels) > MAX_LABELS:
        raise ContractError(f"contract field 'labels' must be a list of at most {MAX_LABELS} strings")
    for i, label in enumerate(c.labels):
        if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL_CHARS:
            raise ContractError(f"label {i} must be a non-empty string of at most {MAX_LABEL_CHARS} characters, "
                                f"got {str(label)[:60]!r}")
