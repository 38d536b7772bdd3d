"""Decoding a package or patch caps memory from its header, before allocating (issue #15, requirement 1).

The hostile inputs are a few hundred bytes that claim gigabytes: a header
with huge tensors whose payloads are "constant" symbol streams (a count and
one value), and streams that claim more symbols than their header's shape.
Each is decoded in a child process under an address-space limit, so the old
behaviour (allocating what was claimed) fails as a MemoryError instead of
taking the machine's memory, and the child reports how far its peak RSS
rose over its RSS before the call.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from models import codec
from models.codec import container, delta, entropy
from models.errors import CorruptPackage, DeltaError
from tests.hardening import external_data

ROOT = Path(__file__).resolve().parents[2]
ADDRESS_SPACE_LIMIT = 3 << 30  # the child may map 3 GB at most; the old decoder asks for more on each input
MAX_PEAK_GROWTH_MB = 20  # peak RSS over the RSS before the call


def _constant_stream(n: int) -> bytes:
    """An entropy stream that claims ``n`` zero symbols in three bytes."""
    return bytes([0]) + entropy.varint(n) + entropy.varint(0)


def _float_payload(n: int) -> bytes:
    """A 'float' tensor payload of ``n`` zeros: no parameters, four constant byte planes."""
    plane = _constant_stream(n)
    return entropy.varint(0) + (entropy.varint(len(plane)) + plane) * 4


def _package(tensors: list[tuple[str, list[int], bytes]], skeleton: bytes | None = None) -> bytes:
    skeleton = skeleton if skeleton is not None else external_data.embedded_model()
    header = {"format": container.FORMAT, "codec": "lossless", "model_sha256": "0" * 64, "model_bytes": 1000,
              "skeleton_bytes": len(container.compress(skeleton)), "metadata": [],
              "tensors": [{"name": name, "kind": "float", "shape": shape, "bytes": len(p)} for name, shape, p in tensors]}
    return container.build_package(container.canonical(header), skeleton, [p for _, _, p in tensors])


def _decode_in_child(tmp_path: Path, op: str, *inputs: bytes) -> dict[str, object]:
    """Run ``<op>(*inputs)`` (``codec.unpack``, ``entropy.decode``) in a child limited to ``ADDRESS_SPACE_LIMIT``; its outcome, time and peak RSS growth."""
    files = []
    for i, data in enumerate(inputs):
        (tmp_path / f"in{i}").write_bytes(data)
        files.append(str(tmp_path / f"in{i}"))
    script = textwrap.dedent(f"""
        import json, resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE_LIMIT}, {ADDRESS_SPACE_LIMIT}))
        from models import codec
        from models.codec import entropy

        def status_mb(key):  # this process's own memory (ru_maxrss would carry the forking parent's peak)
            line = next(x for x in open("/proc/self/status") if x.startswith(key + ":"))
            return int(line.split()[1]) / 1024

        args = [open(f, "rb").read() for f in {files!r}]
        before = status_mb("VmRSS")
        t = time.perf_counter()
        try:
            {op}(*args)
            outcome, message = "decoded", ""
        except BaseException as e:
            outcome, message = type(e).__name__, str(e)
        print(json.dumps({{"outcome": outcome, "message": message, "seconds": time.perf_counter() - t,
                          "peak_growth_mb": status_mb("VmHWM") - before}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_tiny_package_claiming_a_trillion_weights_is_refused_quickly_with_little_memory(tmp_path: Path) -> None:
    n = 1_000_000 * 1_000_000
    package = _package([("w", [1_000_000, 1_000_000], _float_payload(n))])
    assert len(package) < 1000
    result = _decode_in_child(tmp_path, "codec.unpack", package)
    assert result["outcome"] == "CorruptPackage", result
    assert "more than the cap of" in str(result["message"]) and "'w'" in str(result["message"]), result
    assert float(result["seconds"]) < 1.0 and float(result["peak_growth_mb"]) < MAX_PEAK_GROWTH_MB, result


def test_many_tensors_each_under_the_per_tensor_limit_are_refused_by_their_total(tmp_path: Path) -> None:
    """Eight tensors of 2^28 - 2^14 floats (1 GB each): each passes a per-tensor limit, the total does not."""
    n = (1 << 14) * ((1 << 14) - 1)
    package = _package([(f"w{i}", [1 << 14, (1 << 14) - 1], _float_payload(n)) for i in range(8)])
    result = _decode_in_child(tmp_path, "codec.unpack", package)
    assert result["outcome"] == "CorruptPackage", result
    assert "more than the cap of" in str(result["message"]), result
    assert float(result["seconds"]) < 1.0 and float(result["peak_growth_mb"]) < MAX_PEAK_GROWTH_MB, result


def test_a_stream_claiming_more_symbols_than_its_shape_is_refused_before_allocating(tmp_path: Path) -> None:
    """A 10-weight tensor whose byte planes each claim 2^28 - 1 symbols (2 GB of int64 each, were they believed)."""
    plane = _constant_stream((1 << 28) - 1)
    payload = entropy.varint(0) + (entropy.varint(len(plane)) + plane) * 4
    result = _decode_in_child(tmp_path, "codec.unpack", _package([("w", [10], payload)]))
    assert result["outcome"] == "CorruptPackage", result
    assert "its header allows" in str(result["message"]), result
    assert float(result["seconds"]) < 1.0 and float(result["peak_growth_mb"]) < MAX_PEAK_GROWTH_MB, result


def test_one_wide_symbol_does_not_make_every_symbol_cost_its_width(tmp_path: Path) -> None:
    """A split stream of a million symbols, one of them 61 bits wide: 17 bytes of low bits.

    Decoded a million x 61 int64 cells at a time it needs gigabytes; by blocks, a few MB over its output.
    """
    n = 1 << 20
    classes = np.zeros(n, dtype=np.int64)
    classes[-1] = 2 * entropy.MAX_BIT_LENGTH - 1
    head = entropy.encode(classes)
    stream = bytes([3]) + entropy.varint(n) + entropy.varint(len(head)) + head + b"\xff" * 8
    result = _decode_in_child(tmp_path, "entropy.decode", stream)
    assert result["outcome"] == "decoded", result
    assert float(result["peak_growth_mb"]) < 100, result
    decoded = entropy.decode(stream)
    assert decoded[-1] == (1 << 61) + (1 << 61) - 1 and not decoded[:-1].any()


@pytest.mark.parametrize("shape", [[-1, 4], [2.5], "12", [1] * 9, [True]])
def test_negative_fractional_or_absurd_shapes_are_refused(shape: object) -> None:
    package = _package([("w", [4], _float_payload(4))])
    parsed = container.parse_package(package)
    header = {**parsed.header, "tensors": [{**parsed.header["tensors"][0], "shape": shape}]}
    forged = container.build_package(container.canonical(header), parsed.skeleton, [bytes(parsed.payloads[0])])
    with pytest.raises(CorruptPackage, match="tensor w: shape"):
        codec.unpack(forged)


def test_the_cap_is_configurable_and_a_real_model_fits_the_default() -> None:
    model = external_data.embedded_model()
    package = codec.pack(model, "lossless").package
    assert codec.unpack(package) == model
    zoo = (ROOT / "models" / "zoo" / "v1.onnx").read_bytes()
    zoo_package = codec.pack(zoo, "lossless").package
    assert codec.unpack(zoo_package) == zoo
    with pytest.raises(CorruptPackage, match="more than the cap of 1000000"):
        codec.unpack(zoo_package, max_decoded_bytes=1_000_000)


def test_a_patch_whose_new_header_claims_a_trillion_weights_is_refused_before_rebuilding() -> None:
    base = codec.pack(external_data.embedded_model(), "lossless").package
    old = container.parse_package(base)
    huge = {**old.header, "tensors": [{"name": "w", "kind": "float", "shape": [1_000_000, 1_000_000],
                                       "bytes": len(_float_payload(10 ** 12))}]}
    forged_header = container.canonical(huge)
    target = container.build_from_sections(forged_header, old.skeleton_section, [_float_payload(10 ** 12)])
    header_section = delta._zpatch(old.header_bytes, forged_header)
    meta = {"format": container.FORMAT, "mode": "delta", "base_sha256": hashlib.sha256(base).hexdigest(),
            "target_sha256": hashlib.sha256(target).hexdigest(), "header_bytes": len(header_section), "skeleton": ["same", 0],
            "ops": [[0, "full", len(_float_payload(10 ** 12))]]}
    forged_patch = container.frame(container.PATCH_MAGIC, container.canonical(meta),
                                   [header_section, _float_payload(10 ** 12)])
    with pytest.raises(DeltaError, match="more than the cap of"):
        codec.patch(base, forged_patch)
