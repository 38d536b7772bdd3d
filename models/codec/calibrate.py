"""Layer input statistics from the probe, for error-compensating rounding.

For every plain convolution (ungrouped, explicit pads, no dilation) the
probe's activations entering it are unfolded into kernel-sized patches and
summarised as their second-moment matrix ``H = E[x x^T]`` (in the weight's
``in_channels * kh * kw`` order).  ``quantize.compensated_codes`` uses it to
round a layer so that its *outputs*, not its weights, stay close: the error
of each rounded column is pushed onto the columns not rounded yet (the OBQ /
GPTQ update).  Only the server runs this; the car decodes stored codes.

The same pass finds *dead* output channels: a convolution whose only consumer
is a ReLU, where the ReLU's channel is exactly 0 on every probe sample and the
channel's bias is <= 0.  Such a channel's weights can be coded as 0.0 (the
channel then outputs ReLU(bias) = 0 for every input, not only on the probe),
and the next layers see an input channel of zero energy, which the scaled grid
masks as well.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def relu_outputs(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> dict[str, tuple[str, str | None]]:
    """conv weight name -> (its ReLU's output, its bias name) for convolutions whose only consumer is a ReLU."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    out = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights or len(node.output) != 1:
            continue
        users = consumers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type == "Relu" and node.output[0] not in graph_outputs:
            out[node.input[1]] = (users[0].output[0], node.input[2] if len(node.input) > 2 else None)
    return out


def _activations(model: onnx.ModelProto, reference: Reference, names: list[str],
                 watched: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Activations of ``names`` on the calibration samples, and per-channel max |a| of ``watched`` on the whole probe."""
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    known = {o.name for o in probed.graph.output} | {i.name for i in probed.graph.input}
    for name in sorted(set(names) | set(watched)):
        if name not in known:
            probed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = session(probed.SerializeToString())
    x = reference.probe
    step = reference.batch or MAX_CHUNK
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    peaks: dict[str, np.ndarray] = {}
    for start in range(0, len(x), step):
        batch = x[start : start + step]
        n = len(batch)
        if reference.batch and n < reference.batch:
            batch = np.concatenate([batch, np.repeat(batch[-1:], reference.batch - n, axis=0)])
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {reference.input_name: batch}),
                        strict=True))
        outs[reference.input_name] = batch
        for name in watched:
            a = np.abs(np.asarray(outs[name])[:n])
            if a.ndim >= 2:
                peak = a.reshape(n, a.shape[1], -1).max(axis=(0, 2))
                peaks[name] = peak if name not in peaks else np.maximum(peaks[name], peak)
        if start < CALIBRATION_SAMPLES:
            keep = min(n, CALIBRATION_SAMPLES - start)
            for name in names:
                chunks[name].append(np.asarray(outs[name])[:keep])
    return {n: np.concatenate(c) for n, c in chunks.items()}, peaks


def _second_moment(a: np.ndarray, k: int, stride: int, pads: list[int]) -> np.ndarray:
    a = np.pad(a, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    windows = np.lib.stride_tricks.sliding_window_view(a, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, a.shape[1] * k * k)
    if len(patches) > MAX_PATCHES:
        patches = patches[np.linspace(0, len(patches) - 1, MAX_PATCHES).astype(np.int64)]
    p = patches.astype(np.float64)
    return p.T @ p / len(p)


@dataclass
class Calibration:
    """What the probe says about each convolution (weight name -> array)."""

    moments: dict[str, np.ndarray]  # second moments of the input patches (square kernels only)
    dead_rows: dict[str, np.ndarray]  # output channels that are dead everywhere (see the module docstring)
    dead_inputs: dict[str, np.ndarray]  # input channels that are exactly 0 on every probe sample


def input_moments(model: onnx.ModelProto, reference: Reference, weights: dict[str, np.ndarray]) -> Calibration:
    """Per-convolution input statistics on the probe (moments on the first calibration samples,
    dead channels on the whole probe)."""
    specs = {w: s for w, s in conv_specs(model).items()
             if w in weights and weights[w].ndim == 4 and weights[w].shape[2] == weights[w].shape[3]}
    relus = {w: r for w, r in relu_outputs(model, weights).items() if w in specs}
    if not specs:
        return Calibration({}, {}, {})
    inputs = sorted({x for x, _, _ in specs.values()})
    acts, peaks = _activations(model, reference, inputs, sorted({r for r, _ in relus.values()} | set(inputs)))
    out = {}
    for w_name, (x_name, stride, pads) in specs.items():
        a = acts[x_name]
        if a.ndim == 4 and a.shape[1] * weights[w_name].shape[2] ** 2 == weights[w_name][0].size:
            out[w_name] = _second_moment(a, weights[w_name].shape[2], stride, pads)
    dead = {}
    for w_name, (relu, bias) in relus.items():
        peak = peaks.get(relu)
        if peak is None or peak.size != weights[w_name].shape[0]:
            continue
        b = weights.get(bias) if bias else np.zeros(peak.size, np.float32)
        if b is None or b.shape != peak.shape:
            continue
        mask = (peak == 0) & (b <= 0)
        if mask.any():
            dead[w_name] = mask
    dead_in = {}
    for w_name, (x_name, _, _) in specs.items():
        peak = peaks.get(x_name)
        if w_name in out and peak is not None and peak.size == weights[w_name].shape[1] and np.any(peak == 0):
            dead_in[w_name] = peak == 0
    return Calibration(out, dead, dead_in)
