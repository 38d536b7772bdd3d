"""The shipped model series: where the files are and what the manifest says.

``models/zoo`` holds ``v1.onnx`` .. ``v5.onnx``, ``probe.npz`` (uint8 road-sign
images with labels, for fidelity gates) and ``manifest.json`` written by
``models.training.train``.  Everything here is read-only data.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import InputContract

ZOO_DIR = Path(__file__).resolve().parent / "zoo"


@lru_cache(maxsize=1)
def manifest() -> dict[str, Any]:
    """The parsed ``manifest.json`` (line, preprocessing, versions with accuracy)."""
    return json.loads((ZOO_DIR / "manifest.json").read_text())


def version_names() -> list[str]:
    """Shipped version names in publish order: ``["v1", ..., "v5"]``."""
    return [v["version"] for v in manifest()["versions"]]


def model_path(version: str) -> Path:
    """Path of a shipped ONNX file, e.g. ``model_path("v3")``."""
    path = ZOO_DIR / f"{version}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped model {version!r} in {ZOO_DIR}; run `make train` to regenerate the zoo")
    return path


def probe_images() -> tuple[np.ndarray, np.ndarray]:
    """The probe set: uint8 NHWC images and int64 labels."""
    with np.load(ZOO_DIR / "probe.npz") as data:
        return data["images"], data["labels"]


def contract(version: str = "v1") -> InputContract:
    """The shipped line's input contract, from ``manifest.json``: the same mechanism as any user model.

    64x64 RGB, values 0..1 then mean 0.5 / std 0.25, NCHW, logits, the version's class names.
    """
    m = manifest()
    pre = m["preprocess"]
    entry = next((v for v in m["versions"] if v["version"] == version), None)
    if entry is None:
        raise FileNotFoundError(f"no shipped model {version!r} in the manifest; versions: {', '.join(version_names())}")
    return InputContract(
        input_name=m["input_name"], layout=pre["layout"], height=m["image_size"], width=m["image_size"],
        resize="stretch", channel_order="RGB", scale=round(pre["scale"] * 255.0, 6),
        mean=(float(pre["mean"]),) * 3, std=(float(pre["std"]),) * 3,
        output_name=m["output_name"], output_kind="logits", labels=tuple(entry["classes"]),
    )
