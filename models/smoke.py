"""Golden smoke-test inputs, generated identically on server and car.

A manifest carries only a seed and the expected outputs; both sides derive
the inputs from the seed with a counter-based SplitMix64 generator written in
plain numpy integer arithmetic, so the stream never changes with the numpy
version (``numpy.random`` makes no such promise across releases).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.errors import ContractError

if TYPE_CHECKING:
    import onnx

    from models.contract import InputContract

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(counter: np.ndarray) -> np.ndarray:
    z = counter * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def golden_inputs(seed: int, count: int, shape: tuple[int, ...] | list[int]) -> list[np.ndarray]:
    """``count`` float32 arrays of ``shape`` with values uniform in [-2, 2)."""
    size = int(np.prod(shape))
    out = []
    with np.errstate(over="ignore"):
        for i in range(count):
            start = np.uint64((seed * 1_000_003 + i) % (1 << 63)) * np.uint64(1 << 20)
            counter = start + np.arange(size, dtype=np.uint64)
            bits = _splitmix64(counter) >> np.uint64(40)  # 24 random bits
            values = bits.astype(np.float32) / np.float32(1 << 24) * 4.0 - 2.0
            out.append(values.reshape(tuple(shape)).astype(np.float32))
    return out


def input_shape(model: onnx.ModelProto, contract: InputContract | None = None) -> list[int]:
    """The model input's real shape for golden inputs: a fixed batch as fixed (else 1), fixed dims as
    they are, dynamic height/width from the contract.

    Raises:
        ContractError: a dynamic dim other than the batch that no contract fills (flag ``--input-size``).
    """
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    name = contract.input_name if contract is not None else (inputs[0].name if inputs else None)
    inp = next((i for i in inputs if i.name == name), None)
    if inp is None:
        raise ContractError(f"the model has no data input {name!r}")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inp.type.tensor_type.shape.dim]
    shape = [dims[0] or 1] if dims else []
    wanted = list(contract.input_shape(1))[1:] if contract is not None and len(dims) == 4 else [None] * (len(dims) - 1)
    for i, d in enumerate(dims[1:]):
        value = d or wanted[i]
        if value is None:
            raise ContractError(f"model input {inp.name!r} has dynamic dims {['?' if x is None else x for x in dims]}; "
                                "give the input size with --input-size")
        shape.append(value)
    return shape
