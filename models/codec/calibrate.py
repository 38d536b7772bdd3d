"""Layer input statistics from the probe, for error-compensating rounding.

For every plain convolution (ungrouped, explicit pads, no dilation) the
probe's activations entering it are unfolded into kernel-sized patches and
summarised as their second-moment matrix ``H = E[x x^T]`` (in the weight's
``in_channels * kh * kw`` order).  ``quantize.compensated_codes`` uses it to
round a layer so that its *outputs*, not its weights, stay close: the error
of each rounded column is pushed onto the columns not rounded yet (the OBQ /
GPTQ update).  Only the server runs this; the car decodes stored codes.
"""

from __future__ import annotations

import numpy as np
import onnx

from models.codec.fidelity import MAX_CHUNK, Reference, session

CALIBRATION_SAMPLES = 64
MAX_PATCHES = 20000


def conv_specs(model: onnx.ModelProto) -> dict[str, tuple[str, int, list[int]]]:
    """weight name -> (input tensor, stride, pads) for convolutions this module can unfold."""
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    out = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in floats:
            continue
        attrs = {a.name: a for a in node.attribute}
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1, 1]
        pads = list(attrs["pads"].ints) if "pads" in attrs else [0, 0, 0, 0]
        dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1, 1]
        group = attrs["group"].i if "group" in attrs else 1
        auto_pad = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        if group != 1 or dilations != [1, 1] or auto_pad != "NOTSET" or len(pads) != 4 or strides[0] != strides[-1]:
            continue
        out[node.input[1]] = (node.input[0], strides[0], pads)
    return out


def _activations(model: onnx.ModelProto, reference: Reference, names: list[str]) -> dict[str, np.ndarray]:
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    known = {o.name for o in probed.graph.output} | {i.name for i in probed.graph.input}
    for name in names:
        if name not in known:
            probed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = session(probed.SerializeToString())
    x = reference.probe[:CALIBRATION_SAMPLES]
    step = reference.batch or MAX_CHUNK
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, len(x), step):
        batch = x[start : start + step]
        n = len(batch)
        if reference.batch and n < reference.batch:
            batch = np.concatenate([batch, np.repeat(batch[-1:], reference.batch - n, axis=0)])
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {reference.input_name: batch}),
                        strict=True))
        outs[reference.input_name] = batch
        for name in names:
            chunks[name].append(np.asarray(outs[name])[:n])
    return {n: np.concatenate(c) for n, c in chunks.items()}


def _second_moment(a: np.ndarray, k: int, stride: int, pads: list[int]) -> np.ndarray:
    a = np.pad(a, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    windows = np.lib.stride_tricks.sliding_window_view(a, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, a.shape[1] * k * k)
    if len(patches) > MAX_PATCHES:
        patches = patches[np.linspace(0, len(patches) - 1, MAX_PATCHES).astype(np.int64)]
    p = patches.astype(np.float64)
    return p.T @ p / len(p)


def input_moments(model: onnx.ModelProto, reference: Reference, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """weight name -> second-moment matrix of the patches it sees on the probe (square kernels only)."""
    specs = {w: s for w, s in conv_specs(model).items()
             if w in weights and weights[w].ndim == 4 and weights[w].shape[2] == weights[w].shape[3]}
    if not specs:
        return {}
    acts = _activations(model, reference, sorted({x for x, _, _ in specs.values()}))
    out = {}
    for w_name, (x_name, stride, pads) in specs.items():
        a = acts[x_name]
        if a.ndim == 4 and a.shape[1] * weights[w_name].shape[2] ** 2 == weights[w_name][0].size:
            out[w_name] = _second_moment(a, weights[w_name].shape[2], stride, pads)
    return out
