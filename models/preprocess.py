"""The one image -> model-input transform, shared by trainer, codec and car.

Keeping it in one place is what makes a car's answer match the trainer's.
"""

from __future__ import annotations

import numpy as np

MEAN = 0.5
STD = 0.25


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 images, HWC or NHWC, -> float32 NCHW normalised model input."""
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got shape {images.shape}")
    x = images.astype(np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
