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

from pathlib import Path

import numpy as np
from PIL import Image

# files bundled in the scikit-image wheel (skimage/data/), read directly with PIL: a photo that
# ``skimage.data`` would fetch with pooch cannot be named here, so nothing is ever downloaded
COLOUR_FILES = {
    "astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg", "immunohistochemistry": "ihc.png", "retina": "retina.jpg",
    "motorcycle_left": "motorcycle_left.png", "motorcycle_right": "motorcycle_right.png",
}
GREY_FILES = {
    "camera": "camera.png", "moon": "moon.png", "coins": "coins.png", "brick": "brick.png", "grass": "grass.png",
    "gravel": "gravel.png", "clock": "clock_motion.png",
}
COLOUR_PHOTOS = tuple(COLOUR_FILES)
GREY_PHOTOS = tuple(GREY_FILES)


def data_dir() -> Path:
    """scikit-image's folder of bundled data files.

    Raises:
        ImportError: scikit-image is not installed (``pip install -e .[dev]``).
    """
    import skimage.data

    return Path(skimage.data.data_dir)


def photo(name: str) -> np.ndarray:
    """One bundled photo as uint8 HWC RGB (grey photos repeated over 3 channels).

    Raises:
        ImportError: scikit-image is not installed.
        KeyError: not one of :data:`COLOUR_PHOTOS` or :data:`GREY_PHOTOS`.
        FileNotFoundError: this scikit-image wheel does not bundle the file.
    """
    files = {**COLOUR_FILES, **GREY_FILES}
    if name not in files:
        raise KeyError(f"{name!r} is not a bundled photo; choose from {', '.join(files)}")
    with Image.open(data_dir() / files[name]) as im:
        image = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(image)


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
