"""Golden smoke-test inputs, generated identically on server and car.

A manifest carries only a seed and the expected outputs; both sides derive
the inputs from the seed with a counter-based SplitMix64 generator written in
plain numpy integer arithmetic, so the stream never changes with the numpy
version (``numpy.random`` makes no such promise across releases).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(counter: np.ndarray) -> np.ndarray:
    z = counter * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def golden_inputs(seed: int, count: int, shape: tuple[int, ...] | list[int]) -> list[np.ndarray]:
    """``count`` float32 arrays of ``shape`` with values uniform in [-2, 2)."""
    size = int(np.prod(shape))
    out = []
    with np.errstate(over="ignore"):
        for i in range(count):
            start = np.uint64((seed * 1_000_003 + i) % (1 << 63)) * np.uint64(1 << 20)
            counter = start + np.arange(size, dtype=np.uint64)
            bits = _splitmix64(counter) >> np.uint64(40)  # 24 random bits
            values = bits.astype(np.float32) / np.float32(1 << 24) * 4.0 - 2.0
            out.append(values.reshape(tuple(shape)).astype(np.float32))
    return out
