"""RGB colour helpers of the synthetic renderer (float tuples in [0, 255])."""
from __future__ import annotations

import colorsys

import numpy as np


def _clamp(x: float) -> float:
    return 0.0 if x < 0.0 else 255.0 if x > 255.0 else float(x)


def _jitter_colour(rng: np.random.Generator, colour, amount: float) -> tuple[float, ...]:
    d = rng.normal(0.0, amount, 3)
    return tuple(_clamp(c + e) for c, e in zip(colour, d.tolist()))


def _mix(a, b, t: float) -> tuple[float, ...]:
    return tuple(x + (y - x) * t for x, y in zip(a, b))


def _scale(colour, k: float) -> tuple[float, ...]:
    return tuple(_clamp(c * k) for c in colour)


def _hsv(h: float, s: float, v: float) -> tuple[float, ...]:
    return tuple(255.0 * c for c in colorsys.hsv_to_rgb(h % 1.0, s, v))
