"""An honestly bad model for rehearsals: one whose answers no car can reproduce.

``nondeterministic_variant`` takes a good ONNX model and adds Gaussian noise
to its logits with a ``RandomNormalLike`` node that has no ``seed``.  ONNX
Runtime then seeds that node from the clock of the process that loads it, so
the outputs the registry measured at publish time (the offer's ``smoke``
expectations) differ from what any car's session computes: every car's smoke
test fails, as it would for a model with a genuine non-determinism bug, and
the rollout's error threshold halts it.  Nothing in the registry or the agent
is told that this version is bad.
"""

from __future__ import annotations

import onnx
from onnx import helper

DESCRIPTION = ("{base} with Gaussian noise (sigma {scale}) added to its logits by an unseeded RandomNormalLike node: "
               "a non-deterministic model whose outputs no car can reproduce, so the smoke test refuses it")


def nondeterministic_variant(onnx_bytes: bytes, scale: float = 0.5) -> bytes:
    """``onnx_bytes`` with unseeded noise added to its (first) output; same inputs, outputs and weights.

    Raises:
        ValueError: the bytes are not a valid ONNX model.
    """
    try:
        model = onnx.load_from_string(onnx_bytes)
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError / ValidationError / ...
        raise ValueError(f"not a valid ONNX model: {e}") from e
    graph = model.graph
    out = graph.output[0].name
    clean, noise = f"{out}__clean", f"{out}__noise"
    for node in graph.node:
        node.output[:] = [clean if o == out else o for o in node.output]
    graph.node.append(helper.make_node("RandomNormalLike", [clean], [noise], mean=0.0, scale=float(scale)))
    graph.node.append(helper.make_node("Add", [clean, noise], [out]))
    onnx.checker.check_model(model)
    return model.SerializeToString()
