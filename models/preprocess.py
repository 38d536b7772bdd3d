"""The one image -> model-input transform, shared by trainer, codec and car.

Keeping it in one place is what makes a car's answer match the trainer's.
:func:`preprocess` applies a model's :class:`~models.contract.InputContract`
(any model: size, resize policy, channel order, value scale, mean/std, layout)
and :func:`postprocess` turns its class scores into probabilities.
:func:`to_input` is the shipped road-sign zoo's transform; it equals
``preprocess(images, zoo.contract())`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from models.contract import InputContract
from models.errors import ContractError

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


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """One uint8 image (HW grey, HW1, HW3 RGB or HW4 RGBA) as HW3 RGB."""
    if image.dtype != np.uint8:
        raise ContractError(f"expected uint8 images, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if image.ndim == 3 and image.shape[-1] == 4:
        return np.asarray(Image.fromarray(image, "RGBA").convert("RGB"))
    if image.ndim == 3 and image.shape[-1] == 3:
        return image
    raise ContractError(f"expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}")


def fit(image: np.ndarray, contract: InputContract) -> np.ndarray:
    """One uint8 image of any size -> uint8 RGB of the contract's height x width (bilinear, PIL).

    ``stretch`` resizes the whole image; ``crop`` scales the shorter side so the image covers the
    target, then cuts the centre.  An image already of the target size is returned untouched.
    """
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    th, tw = contract.height, contract.width
    if (h, w) == (th, tw):
        return rgb
    if h == 0 or w == 0:
        raise ContractError(f"image has no pixels (shape {image.shape})")
    pil = Image.fromarray(rgb, "RGB")
    if contract.resize == "stretch":
        return np.asarray(pil.resize((tw, th), Image.Resampling.BICUBIC))
    ratio = max(th / h, tw / w)
    sh, sw = max(th, round(h * ratio)), max(tw, round(w * ratio))
    scaled = pil.resize((sw, sh), Image.Resampling.BICUBIC)
    top, left = (sh - th) // 2, (sw - tw) // 2
    return np.asarray(scaled.crop((left, top, left + tw, top + th)))


def preprocess(images: np.ndarray | Sequence[np.ndarray], contract: InputContract) -> np.ndarray:
    """uint8 images of any size (one HWC/HW image, an NHWC batch, or a list) -> the model's float32 input batch.

    Raises:
        ContractError: an image is not uint8 or not of an image shape.
    """
    if isinstance(images, np.ndarray) and images.ndim in (2, 3):
        images = [images]  # one image; a 4-D array is a batch
    if len(images) == 0:
        raise ContractError("no images to preprocess")
    batch = np.stack([fit(np.asarray(im), contract) for im in images])
    # Channels first while computing: per-channel mean/std then broadcast over whole contiguous planes.
    # Channels last, numpy's inner loop is 3 elements long and a 64x64 frame took ~4x as long (the car
    # runs this on every camera frame).  Same float32 operations in the same order: same bits.
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
    if contract.scale == 1.0:
        x /= np.float32(255.0)
    if contract.channel_order == "BGR":
        x = x[:, ::-1]
    mean = np.asarray(contract.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(contract.std, dtype=np.float32).reshape(1, 3, 1, 1)
    x = (x - mean) / std
    if contract.layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def postprocess(scores: np.ndarray, contract: InputContract) -> np.ndarray:
    """The score output ((N, C) or (N, C, 1, 1)) -> (N, C) float32 probabilities; softmax only on logits."""
    s = np.asarray(scores, dtype=np.float32)
    s = s.reshape(len(s), -1) if s.ndim > 1 else s[None]
    return softmax(s) if contract.output_kind == "logits" else s
