"""Move SqueezeNet 1.0 weights between an ONNX graph and our PyTorch :class:`SqueezeNet`.

Transfer learning starts from a model someone else trained and exported (the real ImageNet
SqueezeNet in ``models/pretrained``): no download, only its ONNX initializers.

* :func:`load_squeezenet` reads the graph's convolutions in execution order (conv1, then each
  fire module's squeeze, 1x1 expand and 3x3 expand, then conv10) and copies their weights into
  the same positions of ``SqueezeNet("1_0")``, checking every shape; the class count comes from
  conv10.
* :func:`graft` writes trained weights back into a copy of the *source graph*, under the
  source's own initializer names, and updates the score output's class dimension.  The new
  version keeps the source's input, its Softmax output and every name, so it fits the same
  line contract except for labels and class count, and a delta from the source touches only
  the tensors that training changed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from models.training.squeezenet import Fire, SqueezeNet


def conv_modules(model: SqueezeNet) -> list[nn.Conv2d]:
    """Our model's convolutions in execution order: conv1, each fire's (squeeze, expand1x1, expand3x3), conv10."""
    convs: list[nn.Conv2d] = []
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            convs.append(m)
        elif isinstance(m, Fire):
            convs += [m.squeeze, m.expand1x1, m.expand3x3]
    return [*convs, model.final_conv]


def _params(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a convolution; every SqueezeNet convolution has a bias."""
    if conv.bias is None:
        raise ValueError("SqueezeNet convolutions have a bias; this one has none")
    return conv.weight, conv.bias


def conv_weight_names(graph: onnx.GraphProto) -> list[tuple[str, str]]:
    """(weight, bias) initializer names of the graph's Conv nodes, in node (execution) order.

    Raises:
        ValueError: a Conv has no bias or takes a weight that is not an initializer.
    """
    inits = {t.name for t in graph.initializer}
    names = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        if len(node.input) != 3 or node.input[1] not in inits or node.input[2] not in inits:
            raise ValueError(f"Conv node {node.name or node.output[0]!r} must take a constant weight and bias")
        names.append((node.input[1], node.input[2]))
    return names


def load_squeezenet(proto: onnx.ModelProto) -> SqueezeNet:
    """A PyTorch SqueezeNet 1.0 holding the ONNX model's weights (eval mode).

    Raises:
        ValueError: the graph is not a SqueezeNet 1.0 (Conv count or a weight's shape differs).
    """
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    names = conv_weight_names(proto.graph)
    classes = int(arrays[names[-1][0]].shape[0]) if names else 0
    model = SqueezeNet("1_0", classes)
    convs = conv_modules(model)
    if len(names) != len(convs):
        raise ValueError(f"the graph has {len(names)} convolutions; SqueezeNet 1.0 has {len(convs)}")
    with torch.no_grad():
        for conv, (w, b) in zip(convs, names, strict=True):
            for param, name in zip(_params(conv), (w, b), strict=True):
                if tuple(param.shape) != arrays[name].shape:
                    raise ValueError(f"initializer {name!r} has shape {arrays[name].shape}; "
                                     f"SqueezeNet 1.0 wants {tuple(param.shape)} there")
                param.copy_(torch.from_numpy(arrays[name].copy()))
    return model.eval()


def _set_classes(value: onnx.ValueInfoProto, classes: int) -> None:
    """Set dim 1 (classes) of an output's declared shape; every SqueezeNet output is [N, classes]."""
    dims = value.type.tensor_type.shape.dim
    if len(dims) >= 2:
        dims[1].Clear()
        dims[1].dim_value = classes


def graft(source: onnx.ModelProto, model: SqueezeNet, metadata: Iterable[tuple[str, str]] = ()) -> onnx.ModelProto:
    """A copy of ``source`` with ``model``'s weights under the source's names, the output resized to its classes.

    Tensors whose values did not change keep the source's exact bytes.  ``metadata`` replaces
    the source's metadata entries.

    Raises:
        ValueError: the source is not a SqueezeNet 1.0 graph.
    """
    out = copy.deepcopy(source)
    names = conv_weight_names(out.graph)
    convs = conv_modules(model)
    if len(names) != len(convs):
        raise ValueError(f"the source graph has {len(names)} convolutions; SqueezeNet 1.0 has {len(convs)}")
    new = {}
    for conv, (w, b) in zip(convs, names, strict=True):
        weight, bias = _params(conv)
        new[w] = weight.detach().cpu().numpy()
        new[b] = bias.detach().cpu().numpy()
    for tensor in out.graph.initializer:
        if tensor.name in new and not np.array_equal(numpy_helper.to_array(tensor), new[tensor.name]):
            tensor.CopyFrom(numpy_helper.from_array(new[tensor.name], tensor.name))
    for value in out.graph.output:
        _set_classes(value, model.num_classes)
    del out.graph.value_info[:]  # intermediate shapes downstream of conv10 would be stale; ONNX Runtime infers them
    del out.metadata_props[:]
    for key, value in metadata:
        entry = out.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(out)
    return out
