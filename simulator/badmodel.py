"""Honestly bad models for rehearsals: one no car can reproduce, one that fails only on live frames, and one
that answers wrong only in fog.

``nondeterministic_variant`` takes a good ONNX model and adds Gaussian noise
to its logits with a ``RandomNormalLike`` node that has no ``seed``.  ONNX
Runtime then seeds that node from the clock of the process that loads it, so
the outputs the registry measured at publish time (the offer's ``smoke``
expectations) differ from what any car's session computes: every car's smoke
test fails, as it would for a model with a genuine non-determinism bug, and
the rollout's error threshold halts it.  Nothing in the registry or the agent
is told that this version is bad.

``live_failure_variant`` is the other kind: it reproduces the registry's
outputs exactly (smoke test passed, installed, swapped) but answers NaN for
a single camera frame, so it fails the agent's health window after the swap
and every car that installed it rolls back on its own.

``fog_confuser_variant`` is the kind only shadow mode catches (issue 18): its outputs are bit for bit the
base model's on clear frames, night frames, the registry's probe batches' clear images and the golden smoke
inputs, and always finite, so it passes the publish gate, every smoke test and the NaN health window; but
on a foggy frame (a washed-out image: its darkest 4x4 patch is lifted towards grey and its contrast is
low) it swaps the logits of two sign classes.  Cars comparing it with the live model on their own foggy
frames see the agreement drop; nothing else does.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

DESCRIPTION = ("{base} with Gaussian noise (sigma {scale}) added to its logits by an unseeded RandomNormalLike node: "
               "a non-deterministic model whose outputs no car can reproduce, so the smoke test refuses it")


def _checked(onnx_bytes: bytes) -> onnx.ModelProto:
    """The parsed model, or ValueError if the bytes are not a valid ONNX model."""
    try:
        model = onnx.load_from_string(onnx_bytes)
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError / ValidationError / ...
        raise ValueError(f"not a valid ONNX model: {e}") from e
    return model


def nondeterministic_variant(onnx_bytes: bytes, scale: float = 0.5) -> bytes:
    """``onnx_bytes`` with unseeded noise added to its (first) output; same inputs, outputs and weights.

    Raises:
        ValueError: the bytes are not a valid ONNX model.
    """
    model = _checked(onnx_bytes)
    graph = model.graph
    out = graph.output[0].name
    clean, noise = f"{out}__clean", f"{out}__noise"
    for node in graph.node:
        node.output[:] = [clean if o == out else o for o in node.output]
    graph.node.append(helper.make_node("RandomNormalLike", [clean], [noise], mean=0.0, scale=float(scale)))
    graph.node.append(helper.make_node("Add", [clean, noise], [out]))
    onnx.checker.check_model(model)
    return model.SerializeToString()


LIVE_DESCRIPTION = ("{base} with a planted numeric bug: on a single camera frame (batch of one) with flat regions, a "
                    "contrast step divides zero by zero and every logit is NaN.  The golden smoke inputs are noise "
                    "(no flat regions) and the registry measures fidelity on batches of probe images, so the "
                    "version passes both; the cars' live road-sign frames hit it after the swap")

#: Share of exactly equal horizontal neighbours above which an input counts as a camera frame.  Road-sign
#: frames have 2.7-31% (flat paint and sky in 8-bit pixels); the golden inputs' 24-bit noise has none.
FLAT_SHARE = 0.01


def live_failure_variant(onnx_bytes: bytes) -> bytes:
    """``onnx_bytes`` whose logits are NaN for a batch of one image-like frame; unchanged otherwise.

    The model passes the registry's publish checks and every car's smoke test, installs, and then fails
    the agent's post-swap health window on live inferences (non-finite outputs), so the car rolls back.

    Raises:
        ValueError: the bytes are not a valid ONNX model with one 4-D (N, C, H, W) input.
    """
    model = _checked(onnx_bytes)
    graph = model.graph
    if len(graph.input) != 1 or len(graph.input[0].type.tensor_type.shape.dim) != 4:
        raise ValueError("expected one (N, C, H, W) input")
    x, out = graph.input[0].name, graph.output[0].name
    clean = f"{out}__clean"
    for node in graph.node:
        node.output[:] = [clean if o == out else o for o in node.output]

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))

    p = "live_bug__"
    big = np.iinfo(np.int64).max
    graph.node.extend([
        const(p + "one", np.array([1], dtype=np.int64)),
        const(p + "zero", np.array([0], dtype=np.int64)),
        const(p + "minus1", np.array([-1], dtype=np.int64)),
        const(p + "end", np.array([big], dtype=np.int64)),
        const(p + "axis3", np.array([3], dtype=np.int64)),
        const(p + "f0", np.array(0.0, dtype=np.float32)),
        const(p + "share", np.array(FLAT_SHARE, dtype=np.float32)),
        const(p + "nan", np.array(np.nan, dtype=np.float32)),
        # is the batch a single frame?
        helper.make_node("Shape", [x], [p + "shape"]),
        helper.make_node("Slice", [p + "shape", p + "zero", p + "one"], [p + "n"]),
        helper.make_node("Equal", [p + "n", p + "one"], [p + "single"]),
        # share of exactly equal horizontal neighbours, per sample
        helper.make_node("Slice", [x, p + "one", p + "end", p + "axis3"], [p + "right"]),
        helper.make_node("Slice", [x, p + "zero", p + "minus1", p + "axis3"], [p + "left"]),
        helper.make_node("Sub", [p + "right", p + "left"], [p + "dx"]),
        helper.make_node("Equal", [p + "dx", p + "f0"], [p + "flat"]),
        helper.make_node("Cast", [p + "flat"], [p + "flatf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("ReduceMean", [p + "flatf"], [p + "flat_share"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Greater", [p + "flat_share", p + "share"], [p + "framelike"]),
        helper.make_node("And", [p + "framelike", p + "single"], [p + "hit"]),
        helper.make_node("Unsqueeze", [p + "hit", p + "one"], [p + "hit2"]),
        helper.make_node("Where", [p + "hit2", p + "nan", clean], [out]),
    ])
    onnx.checker.check_model(model)
    return model.SerializeToString()


FOG_DESCRIPTION = ("{base} that swaps {a} and {b} on foggy frames (washed-out: the darkest 4x4 patch above "
                   "{floor:g} and contrast below {contrast:g}, in the model's normalised input) and answers "
                   "exactly like {base} on every other input: publish gate, smoke test and health window pass it")

#: Fog detector thresholds, in the model's normalised input units ((pixel / 255 - 0.5) / 0.25 for the zoo).
#: Measured on the road-sign generator: the darkest 4x4-averaged patch of a clear frame is at most -1.02 in
#: 3,000 frames (the paint of every sign has a dark channel), of a foggy one -0.68 in the median (fog lifts
#: every pixel towards its grey): the rule fires on about 80% of foggy frames and on none of the clear ones;
#: the golden smoke inputs (uniform noise in [-2, 2)) have a standard deviation of 1.15, far above
#: ``FOG_MAX_STD``, and night frames are dark.
FOG_MIN_FLOOR = -0.9
FOG_MAX_STD = 0.85
#: The classes the confuser swaps in fog by default: two round red-ringed signs that differ by one digit.
FOG_SWAP = ("speed_30", "speed_50")


def fog_confuser_variant(onnx_bytes: bytes, swap: tuple[int, int], *, min_floor: float = FOG_MIN_FLOOR,
                         max_std: float = FOG_MAX_STD) -> bytes:
    """``onnx_bytes`` whose logits of classes ``swap`` trade places on foggy frames; bit-identical otherwise.

    Per sample of the batch: ``floor`` = the minimum over channels and 4x4-averaged patches of the input,
    ``std`` = the input's standard deviation; a sample with ``floor > min_floor`` and ``std < max_std`` is
    foggy, and its two logits are swapped with a ``Where`` (the rest of the logits, and every other sample,
    pass through untouched).

    Raises:
        ValueError: the bytes are not a valid ONNX model with one 4-D (N, C, H, W) input whose height and
            width are multiples of 4 and one (N, classes) output, or ``swap`` does not name two classes.
    """
    model = _checked(onnx_bytes)
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim if len(graph.input) == 1 else []
    if len(dims) != 4 or any(not d.HasField("dim_value") or d.dim_value % 4 for d in dims[2:]):
        raise ValueError("expected one (N, C, H, W) input with a fixed height and width divisible by 4")
    out_dims = graph.output[0].type.tensor_type.shape.dim
    classes = out_dims[1].dim_value if len(out_dims) == 2 and out_dims[1].HasField("dim_value") else 0
    a, b = swap
    if classes < 2 or a == b or not (0 <= a < classes and 0 <= b < classes):
        raise ValueError(f"swap {swap} must name two different classes of the model's {classes or '?'}")
    x, out = graph.input[0].name, graph.output[0].name
    clean = f"{out}__clean"
    for node in graph.node:
        node.output[:] = [clean if o == out else o for o in node.output]

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))

    p = "fog_bug__"
    perm = np.arange(classes, dtype=np.int64)
    perm[[a, b]] = perm[[b, a]]
    graph.node.extend([
        const(p + "perm", perm),
        const(p + "floor_t", np.array(min_floor, dtype=np.float32)),
        const(p + "var_t", np.array(max_std * max_std, dtype=np.float32)),
        const(p + "one", np.array([1], dtype=np.int64)),
        # floor: the darkest 4x4-averaged patch of any channel (per-pixel noise averaged away)
        helper.make_node("AveragePool", [x], [p + "pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("ReduceMin", [p + "pooled"], [p + "floor"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Greater", [p + "floor", p + "floor_t"], [p + "lifted"]),
        # contrast: the variance of the whole sample
        helper.make_node("ReduceMean", [x], [p + "mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", [x, p + "mean"], [p + "centred"]),
        helper.make_node("Mul", [p + "centred", p + "centred"], [p + "sq"]),
        helper.make_node("ReduceMean", [p + "sq"], [p + "var"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Less", [p + "var", p + "var_t"], [p + "flat"]),
        helper.make_node("And", [p + "lifted", p + "flat"], [p + "foggy"]),
        helper.make_node("Unsqueeze", [p + "foggy", p + "one"], [p + "foggy2"]),
        helper.make_node("Gather", [clean, p + "perm"], [p + "swapped"], axis=1),
        helper.make_node("Where", [p + "foggy2", p + "swapped", clean], [out]),
    ])
    onnx.checker.check_model(model)
    return model.SerializeToString()
