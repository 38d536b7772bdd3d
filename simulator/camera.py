"""Simulated cameras: what each car sees, from the road-sign generator, under its own conditions.

Shadow mode (issue 18) judges a candidate version on the frames the fleet really sees, so the cars must not
all see the same images: a car in a foggy valley sees fog, a night-shift delivery van sees dark frames, and a
US car sees US signs.  Three things decide a car's frames:

- its **region** (the fleet's ``region`` tag) picks a sign set: a weighting of the line's classes (EU roads
  are full of speed limits, US ones of stops and no priority-road diamonds, ...);
- its **climate** (``CarSpec.climate``: ``clear``, ``foggy`` or ``night``) picks how often a frame is taken in
  clear weather, fog (contrast loss towards grey, blur) or at night (dark, noisy, a headlight glow); the
  weathers are ``models.roadsigns``' own, so the frames are the ones the zoo was trained and probed on;
- its own seeded randomness picks the frame.

Memory stays bounded for thousands of cars: ``CameraPools`` renders a few dozen frames per (region,
weather) once per process (about 5 MB, a second or two) and every car's ``Camera`` draws from those shared
arrays; a car holds only its weights and a ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from models.roadsigns import CLASSES, IMAGE_SIZE, WEATHERS, render

#: Weather mix of a car's frames per climate (shares of its frames).
CLIMATES: dict[str, dict[str, float]] = {
    "clear": {"clear": 0.85, "fog": 0.05, "night": 0.10},
    "foggy": {"clear": 0.20, "fog": 0.75, "night": 0.05},
    "night": {"clear": 0.35, "fog": 0.05, "night": 0.60},
}
#: Share of the fleet's cars in each climate (``simulator.fleet.plan_fleet`` draws it from the car's seed).
CLIMATE_SHARES: dict[str, float] = {"clear": 0.4, "foggy": 0.4, "night": 0.2}

#: Sign sets per region: relative weights of the classes a car there meets.  ``general_danger`` (the class v4
#: added) is on no road yet: a car on a version without it is not judged on a sign it cannot know.
SIGN_SETS: dict[str, dict[str, float]] = {
    "eu": {"stop": 1, "yield": 1, "speed_30": 2.5, "speed_50": 2.5, "speed_80": 1.5, "no_entry": 1,
           "priority_road": 1.5, "pedestrian_crossing": 1, "turn_left": 0.5, "turn_right": 0.5},
    "us": {"stop": 3, "yield": 2, "speed_30": 1.5, "speed_50": 1.5, "speed_80": 1, "no_entry": 1,
           "pedestrian_crossing": 1, "turn_left": 1, "turn_right": 1},
    "apac": {"stop": 1, "yield": 1, "speed_30": 1, "speed_50": 1, "speed_80": 1, "no_entry": 1,
             "priority_road": 1, "pedestrian_crossing": 1.5, "turn_left": 1, "turn_right": 1},
}
#: Frames a region without a sign set of its own (a tag the simulator does not know) draws from.
DEFAULT_SIGN_SET = "apac"
#: Frames rendered per (region, weather): enough variety for a comparison, small enough to share.
POOL_SIZE = 48
MAX_POOL_SIZE = 1024


class CameraError(ValueError):
    """A camera cannot be built as asked (unknown climate, pool size out of range)."""


@dataclass(frozen=True)
class CameraPools:
    """Pre-rendered frames per (sign set, weather), shared by every car of a process.

    ``frames[(region, weather)]`` is a uint8 NHWC array; ``labels`` the classes drawn in it.
    """

    frames: dict[tuple[str, str], np.ndarray]
    labels: dict[tuple[str, str], np.ndarray]

    def pool(self, region: str, weather: str) -> np.ndarray:
        """The frames of ``region`` (its sign set, or the default one) in ``weather``."""
        key = (region if region in SIGN_SETS else DEFAULT_SIGN_SET, weather)
        return self.frames[key]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.frames.values())


@lru_cache(maxsize=4)
def camera_pools(seed: int = 0, pool_size: int = POOL_SIZE, size: int = IMAGE_SIZE) -> CameraPools:
    """Render (once per process and arguments) ``pool_size`` frames per sign set and weather.

    Raises:
        CameraError: ``pool_size`` is not 1..``MAX_POOL_SIZE``.
    """
    if not 1 <= pool_size <= MAX_POOL_SIZE:
        raise CameraError(f"camera pool size must be 1..{MAX_POOL_SIZE}, got {pool_size}")
    frames: dict[tuple[str, str], np.ndarray] = {}
    labels: dict[tuple[str, str], np.ndarray] = {}
    for r, (region, weights) in enumerate(sorted(SIGN_SETS.items())):
        names = list(weights)
        p = np.array([weights[n] for n in names], dtype=np.float64)
        for w, weather in enumerate(WEATHERS):
            rng = np.random.default_rng([seed, r, w])
            drawn = rng.choice(len(names), size=pool_size, p=p / p.sum())
            cls = np.array([CLASSES.index(names[i]) for i in drawn], dtype=np.int64)
            frames[(region, weather)] = np.stack([render(int(c), rng, weather, size) for c in cls])
            labels[(region, weather)] = cls
    return CameraPools(frames, labels)


class Camera:
    """One car's camera: draws its frames from the shared pools by its region's signs and its climate."""

    def __init__(self, pools: CameraPools, region: str, climate: str, rng: random.Random) -> None:
        if climate not in CLIMATES:
            raise CameraError(f"unknown climate {climate!r}; one of {', '.join(CLIMATES)}")
        mix = CLIMATES[climate]
        self.region, self.climate = region, climate
        self._weathers = list(mix)
        self._cum = list(np.cumsum([mix[w] for w in self._weathers]))
        self._pools = {w: pools.pool(region, w) for w in self._weathers}
        self._rng = rng
        self.counts = dict.fromkeys(self._weathers, 0)  # frames taken per weather

    def frame(self) -> np.ndarray:
        """The next frame (uint8 HWC), not a copy: callers must not write to it."""
        weather = self._rng.choices(self._weathers, cum_weights=self._cum)[0]
        self.counts[weather] += 1
        pool = self._pools[weather]
        return pool[self._rng.randrange(len(pool))]


def pick_climate(seed: int) -> str:
    """A car's climate from its own seed (so adding it changed no other random draw of ``plan_fleet``)."""
    rng = random.Random(seed ^ 0xC11A7E)
    return rng.choices(list(CLIMATE_SHARES), weights=list(CLIMATE_SHARES.values()))[0]
