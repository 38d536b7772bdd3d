"""Expected smoke-test outputs: the decoded package run on golden inputs with ONNX Runtime.

The car regenerates the same inputs from the seed (``models.smoke``) and
compares its new session's outputs with these before swapping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from models.smoke import golden_inputs
from server.errors import InvalidModel


def expected_outputs(model_bytes: bytes, input_name: str, shape: list[int], seed: int, count: int,
                     atol: float) -> dict[str, Any]:
    """The offer's ``smoke`` object for one decoded model.

    Raises:
        InvalidModel: ONNX Runtime cannot load or run the model (e.g. a tiny upload whose graph
            asks for a tensor larger than memory): a bad upload, not a server failure.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    expected = []
    try:
        sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        for x in golden_inputs(seed, count, shape):
            out = sess.run(None, {input_name: x})[0]
            expected.append([float(v) for v in np.asarray(out, dtype=np.float32).reshape(-1)])
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InvalidModel(f"ONNX Runtime could not run the model on the smoke inputs: {first}; "
                           "nothing was stored") from e
    return {"seed": seed, "count": count, "shape": list(shape), "input_name": input_name,
            "expected": expected, "atol": atol}
