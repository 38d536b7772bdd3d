"""Natural-photo probe sets: deterministic crops of scikit-image's bundled photos.

A codec's accuracy gate must measure on images like the ones the model will see; noise
inputs say nothing about a real classifier (issue 17: a real ImageNet SqueezeNet measured
0.59 agreement on noise at the finest setting).  scikit-image ships a few photos inside its
wheel; random crops of them (position, scale, mirror; seeded) give a few hundred distinct
inputs.  Only files bundled in the wheel are read -- the ones ``skimage.data`` would fetch
with pooch are never asked for, so nothing is downloaded.

scikit-image is a dev/test dependency (``pip install -e .[dev]``), imported only here and only
when a probe is built: the car never needs it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# bundled in the scikit-image wheel (skimage/data/*.png|jpg), colour photos first, then grey ones
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "motorcycle_left", "motorcycle_right")
GREY_PHOTOS = ("camera", "moon", "coins", "brick", "grass", "gravel", "clock")


def photo(name: str) -> np.ndarray:
    """One bundled photo as uint8 HWC RGB (grey photos repeated over 3 channels).

    Raises:
        ImportError: scikit-image is not installed (``pip install -e .[dev]``).
        KeyError: not one of :data:`COLOUR_PHOTOS` or :data:`GREY_PHOTOS`.
    """
    import skimage.data

    if name not in COLOUR_PHOTOS + GREY_PHOTOS:
        raise KeyError(f"{name!r} is not a bundled photo; choose from {', '.join(COLOUR_PHOTOS + GREY_PHOTOS)}")
    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        image = left if name == "motorcycle_left" else right
    elif name == "clock":
        image = np.asarray(Image.open(f"{skimage.data.data_dir}/clock_motion.png"))
    else:
        image = getattr(skimage.data, name)()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def natural_crops(count: int, *, size: int | tuple[int, int] = 227, seed: int = 0,
                  grey: bool = False) -> np.ndarray:
    """``count`` uint8 crops (N, H, W, 3) of the bundled photos: random square window of 30..100% of
    the shorter side, random position, mirrored half of the time, resized to ``size`` (bilinear).

    The same ``(count, size, seed, grey)`` always gives the same crops; use different seeds for
    a calibration probe and a held-out check.
    """
    h, w = (size, size) if isinstance(size, int) else size
    names = COLOUR_PHOTOS + (GREY_PHOTOS if grey else ())
    photos = [photo(n) for n in names]
    rng = np.random.default_rng(seed)
    out = np.empty((count, h, w, 3), np.uint8)
    for i in range(count):
        src = photos[i % len(photos)]
        ph, pw = src.shape[:2]
        side = int(min(ph, pw) * rng.uniform(0.3, 1.0))
        top, left = int(rng.integers(0, ph - side + 1)), int(rng.integers(0, pw - side + 1))
        crop = Image.fromarray(src[top : top + side, left : left + side]).resize((w, h), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop)
    return out
