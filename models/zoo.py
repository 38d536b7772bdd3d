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
