"""Expected smoke-test outputs: the decoded package run on golden inputs with ONNX Runtime.

The car regenerates the same inputs from the seed (``models.smoke``) and
compares its new session's outputs with these before swapping.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.errors import InvalidModel as CodecInvalidModel
from models.onnx_safety import parse_embedded
from models.sessions import open_session
from models.smoke import golden_inputs
from server.errors import InvalidModel


def expected_outputs(model_bytes: bytes, input_name: str, shape: list[int], seed: int, count: int,
                     atol: float, output_name: str | None = None) -> dict[str, Any]:
    """The offer's ``smoke`` object for one decoded model: the class-score output ``output_name``
    (the contract's; the first output if None) on golden inputs of ``shape``.

    The session is built from bytes, after the model was checked for external data, with external
    data lookups confined to an empty folder (``models.sessions``): it cannot read the server's files.

    Raises:
        InvalidModel: the model keeps a tensor in a file, or ONNX Runtime cannot load or run it
            (e.g. a tiny upload whose graph asks for a tensor larger than memory): a bad upload,
            not a server failure.
    """
    try:
        parse_embedded(model_bytes)
    except CodecInvalidModel as e:
        raise InvalidModel(f"{e}; nothing was stored") from e
    expected = []
    try:
        sess = open_session(model_bytes, intra_threads=1, log_severity=2)
        for x in golden_inputs(seed, count, shape):
            out = sess.run([output_name] if output_name else None, {input_name: x})[0]
            expected.append([float(v) for v in np.asarray(out, dtype=np.float32).reshape(-1)])
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InvalidModel(f"ONNX Runtime could not run the model on the smoke inputs: {first}; "
                           "nothing was stored") from e
    return {"seed": seed, "count": count, "shape": list(shape), "input_name": input_name,
            "expected": expected, "atol": atol}
