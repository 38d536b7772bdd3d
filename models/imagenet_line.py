"""The ImageNet SqueezeNet line: the real pretrained model and the road-sign version made from it.

``models/pretrained`` holds the real ImageNet SqueezeNet 1.0 (not trained by us; see its README)
and ``squeezenet1.0-roadsigns.onnx``, made from it by transfer learning as in the seed's MATLAB
demo: conv10 (the last learnable layer) replaced for the road-sign classes and retrained on
signs rendered at 227x227 and put through the ImageNet model's own preprocessing
(``python -m models.training.transfer``, part of ``make train``).  The two form one model line:
the same input (``data``, 1x3x227x227, Caffe BGR 0..255 minus the mean), the same Softmax output
``prob``; only labels and class count differ.  ``squeezenet1.0-roadsigns.json`` records how it
was made and its held-out accuracy.

Read-only data, like :mod:`models.zoo`; ``onnx`` only (no ONNX Runtime, no torch).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import onnx

from models.contract import InputContract, infer_contract, parse_labels

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
IMAGENET_FILE = "squeezenet1.0-imagenet.onnx"
IMAGENET_LABELS_FILE = "imagenet-labels.txt"
ROADSIGNS_FILE = "squeezenet1.0-roadsigns.onnx"
ROADSIGNS_LABELS_FILE = "squeezenet1.0-roadsigns-labels.txt"
ROADSIGNS_MANIFEST_FILE = "squeezenet1.0-roadsigns.json"

#: What the ImageNet graph cannot say about its input (Caffe preprocessing): the overrides of
#: :func:`models.contract.infer_contract`, spelled as the ``ota publish`` flags take them.
CAFFE_PREPROCESS: dict[str, Any] = {"channel_order": "bgr", "scale": 255, "mean": [104, 117, 123]}


def _existing(name: str) -> Path:
    path = PRETRAINED_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"no {name} in {PRETRAINED_DIR}; the road-sign version is made by `make train`")
    return path


def imagenet_path() -> Path:
    """The real ImageNet SqueezeNet 1.0 (the line's first version)."""
    return _existing(IMAGENET_FILE)


def imagenet_labels_path() -> Path:
    """Its 1000 class names, one a line (``ota publish --labels``)."""
    return _existing(IMAGENET_LABELS_FILE)


def roadsigns_path() -> Path:
    """The road-sign version transfer-learned from it (the line's next version).

    Raises:
        FileNotFoundError: the file is missing (``make train`` regenerates it).
    """
    return _existing(ROADSIGNS_FILE)


def roadsigns_labels_path() -> Path:
    """Its class names, one a line, in class order (also in the ONNX file's ``labels`` metadata)."""
    return _existing(ROADSIGNS_LABELS_FILE)


def imagenet_labels() -> tuple[str, ...]:
    """The ImageNet model's 1000 class names."""
    return parse_labels(imagenet_labels_path().read_text())


def roadsigns_labels() -> tuple[str, ...]:
    """The road-sign version's class names (``models.roadsigns.CLASSES``, all eleven)."""
    return parse_labels(roadsigns_labels_path().read_text())


@lru_cache(maxsize=1)
def roadsigns_manifest() -> dict[str, Any]:
    """How the road-sign version was made: source hash, recipe, held-out accuracy, file hash."""
    return json.loads(_existing(ROADSIGNS_MANIFEST_FILE).read_text())


def imagenet_contract() -> InputContract:
    """The line's contract as the ImageNet model states it plus the Caffe preprocessing and its labels."""
    return infer_contract(onnx.load(imagenet_path()), **CAFFE_PREPROCESS, labels=imagenet_labels())


def roadsigns_contract() -> InputContract:
    """The same contract for the road-sign version: only the labels differ from :func:`imagenet_contract`."""
    return infer_contract(onnx.load(roadsigns_path()), **CAFFE_PREPROCESS, labels=roadsigns_labels())
