"""External data is refused wherever it hides, and no session we build reads a file a model names.

Models are built with ``onnx.helper`` here (``tests/hardening/external_data.py``);
ONNX Runtime runs for real on files planted beside the models.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from client.hotswap import default_session_factory
from models import codec, onnx_safety
from models.codec import container, onnxio
from models.errors import CorruptPackage, InvalidModel
from tests.hardening import external_data

SECRET = b"-----BEGIN PRIVATE KEY-----MC4CAQAwBQYDK2VwBCIEI-not-for-models\n"


@pytest.mark.parametrize("variant", list(external_data.VARIANTS))
def test_pack_refuses_external_data_wherever_it_hides(variant: str) -> None:
    model = external_data.VARIANTS[variant]("secret.pem")
    with pytest.raises(InvalidModel, match=r"external data is not allowed: embed the weights") as e:
        codec.pack(model, "lossless")
    assert "secret.pem" in str(e.value)


def _with_custom_attribute(attr: onnx.AttributeProto) -> onnx.ModelProto:
    """``external_data.embedded_model()`` plus one node of a custom domain carrying ``attr``."""
    model = onnx.load_from_string(external_data.embedded_model())
    node = model.graph.node.add(op_type="Carrier", domain="example.custom", name="carrier")
    node.attribute.append(attr)
    return model


@pytest.mark.parametrize("field", ["tensors", "sparse_tensor", "sparse_tensors", "t with a lying type"])
def test_every_tensor_valued_attribute_is_checked(field: str) -> None:
    ext = external_data.external_tensor("hidden", "secret.pem")
    indices = numpy_helper.from_array(np.arange(external_data.N, dtype=np.int64), "i")
    sparse = helper.make_sparse_tensor(ext, indices, [external_data.N])
    attr = onnx.AttributeProto(name="payload")
    if field == "tensors":
        attr.type = onnx.AttributeProto.TENSORS
        attr.tensors.append(ext)
    elif field == "sparse_tensor":
        attr.type = onnx.AttributeProto.SPARSE_TENSOR
        attr.sparse_tensor.CopyFrom(sparse)
    elif field == "sparse_tensors":
        attr.type = onnx.AttributeProto.SPARSE_TENSORS
        attr.sparse_tensors.append(sparse)
    else:
        attr.type = onnx.AttributeProto.INT  # says INT, carries a tensor
        attr.t.CopyFrom(ext)
    with pytest.raises(onnx_safety.UnsafeModel, match="'hidden'.*attribute 'payload' of Carrier node 'carrier'"):
        onnx_safety.check_embedded(_with_custom_attribute(attr))


def test_sparse_indices_in_a_file_are_refused() -> None:
    values = numpy_helper.from_array(np.ones(external_data.N, dtype=np.uint8), "w")
    indices = external_data.external_tensor("w_indices", "secret.pem")
    model = onnx.load_from_string(external_data.embedded_model())
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [external_data.N]))
    with pytest.raises(onnx_safety.UnsafeModel, match="indices of sparse"):
        onnx_safety.check_embedded(model)


def test_a_function_body_and_a_function_attribute_default_are_checked() -> None:
    const = helper.make_node("Constant", [], ["out"], value=external_data.external_tensor("fn_c", "secret.pem"))
    fn = helper.make_function("example.custom", "Leak", [], ["out"], [const], [helper.make_opsetid("", 17)])
    model = onnx.load_from_string(external_data.embedded_model())
    model.functions.append(fn)
    with pytest.raises(onnx_safety.UnsafeModel, match="'fn_c'.*function example.custom.Leak"):
        onnx_safety.check_embedded(model)

    clean = helper.make_function("example.custom", "Clean", [], ["out"], [], [helper.make_opsetid("", 17)])
    default = onnx.AttributeProto(name="w", type=onnx.AttributeProto.TENSOR)
    default.t.CopyFrom(external_data.external_tensor("default_w", "secret.pem"))
    clean.attribute_proto.append(default)
    model = onnx.load_from_string(external_data.embedded_model())
    model.functions.append(clean)
    with pytest.raises(onnx_safety.UnsafeModel, match="'default_w'.*default of attribute 'w'"):
        onnx_safety.check_embedded(model)


def _nested_ifs(depth: int) -> onnx.ModelProto:
    """``depth`` If nodes, each in the then-branch of the one before."""
    out = [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])]
    one = numpy_helper.from_array(np.ones(1, dtype=np.float32), "one")
    leaf = helper.make_graph([helper.make_node("Identity", ["one"], ["o"])], "leaf", [], out, initializer=[one])
    inner = leaf
    for level in range(depth):
        node = helper.make_node("If", ["cond"], ["o"], name=f"if{level}", then_branch=inner, else_branch=leaf)
        inner = helper.make_graph([node], f"level{level}", [], out)
    inputs = [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    return helper.make_model(helper.make_graph(list(inner.node), "main", inputs, out))


def test_nesting_and_node_count_are_bounded_and_the_refusal_is_quick() -> None:
    onnx_safety.check_embedded(_nested_ifs(onnx_safety.MAX_GRAPH_DEPTH))
    too_deep = _nested_ifs(onnx_safety.MAX_GRAPH_DEPTH + 1)
    # 20,000 Identity nodes in a row against a budget of 50
    nodes = [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"]) for i in range(20_000)]
    graph = helper.make_graph(nodes, "long", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("t20000", TensorProto.FLOAT, [1])])
    too_long = helper.make_model(graph)
    t = time.perf_counter()
    with pytest.raises(onnx_safety.UnsafeModel, match=f"nested more than {onnx_safety.MAX_GRAPH_DEPTH} deep"):
        onnx_safety.check_embedded(too_deep)
    with pytest.raises(onnx_safety.UnsafeModel, match="more than 50 nodes"):
        onnx_safety.check_embedded(too_long, max_nodes=50)
    assert time.perf_counter() - t < 0.1


def test_an_embedded_model_with_subgraphs_passes() -> None:
    onnx_safety.check_embedded(onnx.load_from_string(external_data.embedded_model()))
    onnx_safety.check_embedded(_nested_ifs(3))


def _package_with_skeleton(skeleton: bytes) -> bytes:
    """A package the server could have crafted: a graph skeleton of its choice, no coded weights."""
    model = onnxio.assemble(skeleton, {}, [])
    header = {"format": container.FORMAT, "codec": "lossless", "model_sha256": hashlib.sha256(model).hexdigest(),
              "model_bytes": len(model), "skeleton_bytes": len(container.compress(skeleton)), "metadata": [],
              "tensors": []}
    return container.build_package(container.canonical(header), skeleton, [])


def test_the_car_refuses_a_package_whose_graph_names_a_file() -> None:
    hostile = external_data.if_subgraph_initializer("secret.pem")
    model = onnx.load_from_string(hostile)
    # build the package by hand: assemble (which now checks) is what must refuse it
    header = {"format": container.FORMAT, "codec": "lossless", "model_sha256": hashlib.sha256(hostile).hexdigest(),
              "model_bytes": len(hostile), "skeleton_bytes": len(container.compress(model.SerializeToString())),
              "metadata": [], "tensors": []}
    package = container.build_package(container.canonical(header), model.SerializeToString(), [])
    with pytest.raises(CorruptPackage, match="package graph is unsafe to load: .*'secret'.*external data"):
        codec.unpack(package)
    assert codec.unpack(_package_with_skeleton(external_data.embedded_model()))  # a clean one decodes


@pytest.mark.parametrize("variant", list(external_data.VARIANTS))
def test_the_cars_session_on_a_staged_file_reads_nothing_beside_it(tmp_path: Path, variant: str) -> None:
    """The second wall: a model that slipped past the walk still cannot read the staged file's neighbours."""
    (tmp_path / "secret.pem").write_bytes(SECRET)
    staged = tmp_path / ".model.onnx.staged"
    staged.write_bytes(external_data.VARIANTS[variant]("secret.pem"))
    cwd_secret = Path(os.getcwd()) / f".ota-safety-secret-{os.getpid()}"
    cwd_secret.write_bytes(SECRET)
    try:
        make = default_session_factory()
        for source in (staged, external_data.VARIANTS[variant](cwd_secret.name)):
            with pytest.raises(Exception, match=r"(?i)external data|invalid model|does not exist|failed") as e:
                session = make(source, "sha")
                out = session.run(None, {"x": np.zeros((1, external_data.N), np.float32)})[0]
                pytest.fail(f"session loaded and answered {out.astype(np.uint8).tobytes()!r}")
            assert SECRET[:11] not in str(e.value).encode()
    finally:
        cwd_secret.unlink(missing_ok=True)
