"""The codec's public functions: pack, unpack, read_header, inspect (diff/patch live in delta.py).

``pack`` reads the ONNX model, splits off its float32 weights, has
``allocate`` choose an encoding per tensor under the accuracy gate (reusing
the base package's codebooks/scales where that keeps the gate), and lays the
result out as described in ``container.py``.  ``unpack`` is the car's side:
entropy-decode, dequantize, reassemble, and check the SHA-256.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.codec import allocate, container, onnxio, tensors
from models.codec.fidelity import Fidelity, Gate, synthetic_probe
from models.codec.tensors import Coded
from models.contract import InputContract, check_contract
from models.errors import CorruptPackage, InvalidModel

CODECS = ("lossless", "int8", "deep", "svd")


@dataclass(frozen=True)
class PackResult:
    """A packed version: the package bytes and what the packer measured."""

    package: bytes
    header: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_tensors(parsed: container.Parsed) -> dict[str, Coded]:
    """Every tensor of a parsed package in the coded domain.

    Raises:
        CorruptPackage: a payload does not match its header entry.
    """
    try:
        return {e["name"]: tensors.from_payload(p, e) for e, p in zip(parsed.header["tensors"], parsed.payloads, strict=True)}
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptPackage(f"package tensor table is malformed: {e}") from e


def _weights(coded: dict[str, Coded]) -> dict[str, np.ndarray]:
    return {name: tensors.values(c) for name, c in coded.items()}


def _base_tensors(base: bytes | None, codec: str) -> tuple[dict[str, Coded], str | None]:
    if base is None or container.older_package(base):
        return {}, None  # an older format's package (before a server upgrade): pack afresh
    parsed = container.parse_package(base)
    if parsed.header.get("codec") != codec:
        return {}, None  # another codec's grid cannot be reused; pack from scratch
    return decode_tensors(parsed), sha256(base)


def pack(
    onnx_bytes: bytes,
    codec: str = "lossless",
    *,
    base: bytes | None = None,
    probe: np.ndarray | None = None,
    min_agreement: float | None = None,
    contract: InputContract | None = None,
) -> PackResult:
    """Encode one ONNX model as a package.

    ``base`` is the previous version's package of the same codec: its
    codebooks and scales are reused where the gate still holds, so the delta
    between the two packages is small.  ``probe`` is a float32 (N, C, H, W)
    input batch; without one, deterministic noise inputs are used to measure
    fidelity.  With ``min_agreement`` the lossy codecs pick the smallest
    encoding whose top-1 agreement on the probe reaches it.

    Raises:
        InvalidModel: the bytes are not a valid ONNX model, or the probe does not fit it.
        ContractError: ``contract`` does not fit the model, or no probe and dynamic height/width
            without a contract.
        FidelityGateError: no encoding meets ``min_agreement`` on ``probe``.
        CorruptPackage: ``base`` is not a readable package.
    """
    if codec not in CODECS:
        raise InvalidModel(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise InvalidModel(f"min_agreement must be between 0 and 1, got {min_agreement}")
    model = onnxio.load(onnx_bytes)
    skeleton, weight_list = onnxio.split(model)
    weights = dict(weight_list)
    if codec != "lossless":
        bad = next((n for n, w in weights.items() if not np.all(np.isfinite(w))), None)
        if bad is not None:
            raise InvalidModel(f"initializer {bad!r} holds NaN or Inf; only --codec lossless can store it")
    if contract is not None:
        check_contract(model, contract)
    base_coded, base_sha = _base_tensors(base, codec)
    probe_source = "given" if probe is not None else "synthetic"
    gate_info: dict[str, Any] = {}
    if codec == "lossless":
        coded = {name: tensors.encode_float(w) for name, w in weights.items()}
        fid, probe_source, probe_count = Fidelity(1.0, 0.0), "exact", 0
    else:
        gate = Gate(model, onnx_bytes, synthetic_probe(model, contract) if probe is None else probe, skeleton, weights,
                    contract)
        probe_count = len(gate.reference.probe)
        coded, fid, gate_info = allocate.CHOOSERS[codec](weights, base_coded, gate, min_agreement)
    props = onnxio.metadata(model)
    decoded = onnxio.assemble(skeleton, _weights(coded), props)
    payloads = [tensors.to_payload(coded[name]) for name in weights]
    reused = sum(
        1 for n, c in coded.items()
        if n in base_coded and c.kind == base_coded[n].kind and np.array_equal(c.params, base_coded[n].params)
        and c.kind != "float"
    )
    header = {
        "format": container.FORMAT,
        "codec": codec,
        "model_sha256": sha256(decoded),
        "model_bytes": len(decoded),
        "source_bytes": len(onnx_bytes),
        "fidelity": {**fid.as_dict(), "probe": probe_source, "probe_count": probe_count},
        "gate": {"min_agreement": min_agreement, **gate_info},
        # the base's hash is named by every patch against it; keeping it out of the
        # header keeps the header's own delta small
        "base": {"reused_grids": reused} if base_sha else None,
        "skeleton_bytes": len(container.compress(skeleton)),
        "metadata": props,
        "tensors": [tensors.entry(name, coded[name], len(p)) for name, p in zip(weights, payloads, strict=True)],
    }
    package = container.build_package(container.canonical(header), skeleton, payloads)
    report = {
        "package_bytes": len(package),
        "source_bytes": len(onnx_bytes),
        "ratio": round(len(package) / len(onnx_bytes), 4),
        "fidelity": header["fidelity"],
    }
    return PackResult(package, header, report)


def read_header(package: bytes) -> dict[str, Any]:
    """The package's header (model SHA-256, codec, fidelity) without decoding it.

    Raises:
        CorruptPackage: the bytes are not a package.
    """
    return container.parse_package(package).header


def unpack(package: bytes, *, max_decoded_bytes: int = container.MAX_DECODED_BYTES) -> bytes:
    """Decode a package to ONNX bytes and check them against the header's SHA-256.

    The header's tensor table is checked against ``max_decoded_bytes`` before
    anything is allocated from it, and the graph must keep every tensor inside
    the model (``onnxio.assemble``): the car decodes what the network gave it.

    Raises:
        CorruptPackage: malformed or over-budget package, a graph that names a file, or a
            decoded model hash mismatch.
    """
    parsed = container.parse_package(package, max_decoded_bytes=max_decoded_bytes)
    model = onnxio.assemble(parsed.skeleton, _weights(decode_tensors(parsed)), parsed.header.get("metadata"))
    if sha256(model) != parsed.header.get("model_sha256"):
        raise CorruptPackage("decoded model does not match the package's model_sha256; the package is damaged")
    return model


def inspect(package: bytes) -> dict[str, Any]:
    """Per-package summary for humans and ``--json``: per-tensor codec, bits, sparsity, bytes; fidelity.

    Raises:
        CorruptPackage: the bytes are not a package (or a tensor does not decode).
    """
    parsed = container.parse_package(package)
    h = parsed.header
    coded = decode_tensors(parsed)
    rows = []
    for t in h["tensors"]:
        n = int(np.prod(t["shape"], dtype=np.int64))
        rows.append({
            "name": t["name"], "kind": t["kind"], "shape": t["shape"], "bytes": t["bytes"],
            **tensors.describe(coded[t["name"]]), "rank": t.get("rank"),
            "bits_per_weight": round(8 * t["bytes"] / max(n, 1), 3),
        })
    return {
        "package_bytes": len(package),
        "package_sha256": sha256(package),
        "codec": h["codec"],
        "model_sha256": h["model_sha256"],
        "model_bytes": h["model_bytes"],
        "source_bytes": h.get("source_bytes"),
        "ratio": round(len(package) / h["source_bytes"], 4) if h.get("source_bytes") else None,
        "fidelity": h["fidelity"],
        "gate": h.get("gate"),
        "base": h.get("base"),
        "skeleton_bytes": h["skeleton_bytes"],
        "tensors": rows,
    }
