"""Packages and a patch made by the codec as it was before rate-distortion rounding (main at 5acb4b8).

Cars in the field hold packages made by that code; ``test_codec_rd.py`` checks that today's code
still decodes them, applies the patch between them, and packs a next version on them.  Regenerate
(only with the *old* codec on the path; the committed files must stay those of the old code):

    PYTHONPATH=<checkout of 5acb4b8> python tests/models/format2_fixtures.py tests/models/data
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from models import codec, onnx_factory


def small_cnn(seed: int = 5) -> bytes:
    """A three-convolution classifier (16x16 RGB in, 10 logits): small enough to commit its packages."""
    g = onnx_factory._Graph(np.random.default_rng(seed))
    x = g.relu(g.conv("input", 3, 16, 3, pad=1))
    x = g.pool(g.relu(g.conv(x, 16, 32, 3, pad=1)))
    x = g.relu(g.conv(x, 32, 10, 1, std=0.05))
    x = g.op("GlobalAveragePool", [x])
    g.nodes.append(helper.make_node("Flatten", [x], ["logits"], axis=1))
    graph = helper.make_graph(
        g.nodes, "small", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnx_factory")
    model.ir_version = 8
    return model.SerializeToString()


def versions() -> tuple[bytes, bytes, np.ndarray]:
    """(version a, version b = a fine-tuned, probe)."""
    a = small_cnn()
    return a, onnx_factory.fine_tune(a, scale=0.01, seed=7), onnx_factory.inputs(16, 64, seed=3)


def main(out: Path) -> None:
    a, b, probe = versions()
    pa = codec.pack(a, "deep", probe=probe, min_agreement=0.95).package
    pb = codec.pack(b, "deep", base=pa, probe=probe, min_agreement=0.95).package
    out.mkdir(parents=True, exist_ok=True)
    (out / "format2_a.pkg").write_bytes(pa)
    (out / "format2_b.pkg").write_bytes(pb)
    (out / "format2_ab.patch").write_bytes(codec.diff(pa, pb))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
