"""Procedural road-sign images: the project's own data set.

No weights or data may be downloaded, so every model version is trained and
probed on images drawn here.  A sign is drawn large with Pillow, placed on a
random background, rotated, blurred, noised and optionally put in fog or at
night, then reduced to ``IMAGE_SIZE`` (or any ``size``: the transfer-learned
version of the ImageNet SqueezeNet sees signs rendered at 227x227).  Everything
is driven by one ``numpy.random.Generator`` so a seed always yields the same
images; the random draws do not depend on ``size`` until the final pixel noise,
and at ``IMAGE_SIZE`` the images are exactly the zoo's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

IMAGE_SIZE = 64
_CANVAS = 128  # draw at 2x of IMAGE_SIZE, downsample for anti-aliasing
MAX_SIZE = 1024

RED = (200, 30, 35)
WHITE = (245, 245, 245)
BLUE = (20, 70, 170)
YELLOW = (250, 200, 20)
BLACK = (20, 20, 20)

#: Class names in label order.  Versions v1-v3 know the first ten; v4 and v5
#: add ``general_danger``.
CLASSES: tuple[str, ...] = (
    "stop",
    "yield",
    "speed_30",
    "speed_50",
    "speed_80",
    "no_entry",
    "priority_road",
    "pedestrian_crossing",
    "turn_left",
    "turn_right",
    "general_danger",
)

WEATHERS = ("clear", "fog", "night")


@dataclass(frozen=True)
class SignBox:
    """Where a sign is drawn on the canvas: centre and radius in pixels."""

    cx: float
    cy: float
    r: float


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _regular_polygon(b: SignBox, n: int, rotation_deg: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(n):
        a = math.radians(rotation_deg + 360.0 * i / n)
        pts.append((b.cx + b.r * math.cos(a), b.cy + b.r * math.sin(a)))
    return pts


def _shrink(b: SignBox, f: float) -> SignBox:
    return SignBox(b.cx, b.cy, b.r * f)


def _text(d: ImageDraw.ImageDraw, b: SignBox, text: str, fill: tuple[int, int, int], scale: float) -> None:
    d.text((b.cx, b.cy), text, fill=fill, font=_font(int(b.r * scale)), anchor="mm")


def _round_sign(d: ImageDraw.ImageDraw, b: SignBox, ring: tuple[int, int, int], face: tuple[int, int, int]) -> None:
    d.ellipse([b.cx - b.r, b.cy - b.r, b.cx + b.r, b.cy + b.r], fill=ring)
    i = _shrink(b, 0.78)
    d.ellipse([i.cx - i.r, i.cy - i.r, i.cx + i.r, i.cy + i.r], fill=face)


def _arrow(d: ImageDraw.ImageDraw, b: SignBox, direction: int) -> None:
    """White arrow bending left (-1) or right (+1)."""
    s = b.r
    x0, y0 = b.cx - 0.1 * s * direction, b.cy + 0.55 * s
    d.line([(x0, y0), (x0, b.cy - 0.05 * s)], fill=WHITE, width=int(0.22 * s))
    tip_x = b.cx + 0.55 * s * direction
    d.line([(x0, b.cy - 0.05 * s), (tip_x - 0.2 * s * direction, b.cy - 0.05 * s)], fill=WHITE, width=int(0.22 * s))
    d.polygon(
        [(tip_x, b.cy - 0.05 * s), (tip_x - 0.3 * s * direction, b.cy - 0.35 * s), (tip_x - 0.3 * s * direction, b.cy + 0.25 * s)],
        fill=WHITE,
    )


def _draw_stop(d: ImageDraw.ImageDraw, b: SignBox) -> None:
    d.polygon(_regular_polygon(b, 8, 22.5), fill=WHITE)
    d.polygon(_regular_polygon(_shrink(b, 0.9), 8, 22.5), fill=RED)
    _text(d, b, "STOP", WHITE, 0.55)


def _draw_yield(d: ImageDraw.ImageDraw, b: SignBox) -> None:
    d.polygon(_regular_polygon(b, 3, 90), fill=RED)
    d.polygon(_regular_polygon(_shrink(b, 0.6), 3, 90), fill=WHITE)


def _draw_speed(limit: str) -> Callable[[ImageDraw.ImageDraw, SignBox], None]:
    def draw(d: ImageDraw.ImageDraw, b: SignBox) -> None:
        _round_sign(d, b, RED, WHITE)
        _text(d, b, limit, BLACK, 0.85)

    return draw


def _draw_no_entry(d: ImageDraw.ImageDraw, b: SignBox) -> None:
    d.ellipse([b.cx - b.r, b.cy - b.r, b.cx + b.r, b.cy + b.r], fill=RED)
    d.rectangle([b.cx - 0.65 * b.r, b.cy - 0.17 * b.r, b.cx + 0.65 * b.r, b.cy + 0.17 * b.r], fill=WHITE)


def _draw_priority(d: ImageDraw.ImageDraw, b: SignBox) -> None:
    d.polygon(_regular_polygon(b, 4, 0), fill=WHITE)
    d.polygon(_regular_polygon(_shrink(b, 0.72), 4, 0), fill=YELLOW)


def _draw_pedestrian(d: ImageDraw.ImageDraw, b: SignBox) -> None:
    s = b.r * 0.85
    d.rectangle([b.cx - s, b.cy - s, b.cx + s, b.cy + s], fill=BLUE)
    t = _shrink(b, 0.7)
    d.polygon(_regular_polygon(t, 3, -90), fill=WHITE)
    # a stick figure in the triangle
    h = t.r
    d.ellipse([b.cx - 0.09 * h, b.cy - 0.35 * h, b.cx + 0.09 * h, b.cy - 0.17 * h], fill=BLACK)
    d.line([(b.cx, b.cy - 0.17 * h), (b.cx, b.cy + 0.15 * h)], fill=BLACK, width=max(2, int(0.08 * h)))
    d.line([(b.cx, b.cy + 0.15 * h), (b.cx - 0.18 * h, b.cy + 0.42 * h)], fill=BLACK, width=max(2, int(0.08 * h)))
    d.line([(b.cx, b.cy + 0.15 * h), (b.cx + 0.18 * h, b.cy + 0.42 * h)], fill=BLACK, width=max(2, int(0.08 * h)))


def _draw_turn(direction: int) -> Callable[[ImageDraw.ImageDraw, SignBox], None]:
    def draw(d: ImageDraw.ImageDraw, b: SignBox) -> None:
        d.ellipse([b.cx - b.r, b.cy - b.r, b.cx + b.r, b.cy + b.r], fill=BLUE)
        _arrow(d, b, direction)

    return draw


def _draw_danger(d: ImageDraw.ImageDraw, b: SignBox) -> None:
    d.polygon(_regular_polygon(b, 3, -90), fill=RED)
    d.polygon(_regular_polygon(_shrink(b, 0.62), 3, -90), fill=WHITE)
    _text(d, SignBox(b.cx, b.cy + 0.1 * b.r, b.r), "!", BLACK, 0.7)


_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, SignBox], None]] = {
    "stop": _draw_stop,
    "yield": _draw_yield,
    "speed_30": _draw_speed("30"),
    "speed_50": _draw_speed("50"),
    "speed_80": _draw_speed("80"),
    "no_entry": _draw_no_entry,
    "priority_road": _draw_priority,
    "pedestrian_crossing": _draw_pedestrian,
    "turn_left": _draw_turn(-1),
    "turn_right": _draw_turn(+1),
    "general_danger": _draw_danger,
}


def _background(rng: np.random.Generator, canvas: int) -> Image.Image:
    """A sky-over-road gradient with a few random blocks (trees, buildings).

    Block positions and sizes are drawn on the 128-pixel reference canvas and scaled, so the
    random stream is the same at every size.
    """
    k = canvas / _CANVAS
    top = rng.integers(60, 230, size=3)
    bottom = rng.integers(30, 160, size=3)
    t = np.linspace(0.0, 1.0, canvas)[:, None, None]
    grad = (top[None, None, :] * (1 - t) + bottom[None, None, :] * t).repeat(canvas, axis=1)
    img = Image.fromarray(grad.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 5))):
        x0, y0 = rng.integers(0, _CANVAS, size=2)
        w, h = rng.integers(10, 60, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 255, size=3))
        d.rectangle([int(x0 * k), int(y0 * k), int((x0 + w) * k), int((y0 + h) * k)], fill=colour)
    return img


def _apply_weather(arr: np.ndarray, weather: str, rng: np.random.Generator) -> np.ndarray:
    if weather == "fog":
        density = rng.uniform(0.35, 0.7)
        fog_colour = rng.uniform(170, 225)
        # fog thickens towards the top of the frame
        ramp = np.linspace(1.0, 0.6, arr.shape[0])[:, None, None]
        alpha = density * ramp
        arr = arr * (1 - alpha) + fog_colour * alpha
    elif weather == "night":
        arr = arr * rng.uniform(0.18, 0.4)
        # headlight glow: a soft bright spot near the sign
        yy, xx = np.mgrid[0 : arr.shape[0], 0 : arr.shape[1]]
        cx, cy = rng.uniform(0.3, 0.7, size=2) * arr.shape[0]
        glow = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.3 * arr.shape[0]) ** 2)))
        arr = arr * (1 + rng.uniform(0.5, 1.5) * glow[..., None])
    return arr


def _check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= MAX_SIZE:
        raise ValueError(f"road-sign image size must be an integer from 8 to {MAX_SIZE}, got {size!r}")


def render(label: int, rng: np.random.Generator, weather: str = "clear", size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw one sign of class ``label``; returns uint8 HWC of ``size`` x ``size``.

    Raises:
        ValueError: ``size`` is not an integer from 8 to ``MAX_SIZE``.
    """
    _check_size(size)
    canvas = 2 * size
    img = _background(rng, canvas)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.28, 0.45) * canvas
    cx = canvas / 2 + rng.uniform(-0.12, 0.12) * canvas
    cy = canvas / 2 + rng.uniform(-0.12, 0.12) * canvas
    _DRAWERS[CLASSES[label]](d, SignBox(cx, cy, r))
    edge = tuple(int(c) for c in np.asarray(img)[0, 0])
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR, center=(cx, cy), fillcolor=edge)
    blur = float(rng.uniform(0.0, 2.0))
    if blur > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(blur * canvas / _CANVAS))
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    arr = arr * rng.uniform(0.7, 1.2) + rng.uniform(-20, 20)  # exposure
    arr = _apply_weather(arr, weather, rng)
    noisy = arr + rng.normal(0.0, rng.uniform(1.0, 8.0), size=arr.shape)  # float64 from here on, as it always was
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_dataset(
    n: int,
    num_classes: int,
    seed: int,
    weathers: tuple[str, ...] = ("clear",),
    weather_p: tuple[float, ...] | None = None,
    size: int = IMAGE_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 NHWC, ``size`` x ``size``) and labels (int64), balanced over classes.

    Raises:
        ValueError: ``size`` is out of range (see :func:`render`).
    """
    _check_size(size)
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        weather = str(rng.choice(weathers, p=weather_p))
        images[i] = render(int(label), rng, weather, size)
    return images, labels
