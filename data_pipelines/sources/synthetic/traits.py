"""Random streams and the traits of a synthetic face.

Identity traits come from ``SeedSequence([seed, stream, identity])`` with three streams:
*shared* (skin tone, hair colour), *upper face* (face width, eyes, brows, hair style,
glasses) and *lower face* (jaw, chin, nose, mouth, lip colour, beard, mole). Per-image
view parameters (pose, lighting, expression, glasses on/off, clothes) come from the image
stream ``SeedSequence([seed, 3, index])``; the renderer then draws the background from the
same stream.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from data_pipelines.sources.synthetic.colours import _hsv, _jitter_colour, _mix, _scale

_STREAM_SHARED, _STREAM_UPPER, _STREAM_LOWER, _STREAM_IMAGE = 0, 1, 2, 3

# Skin tones from light to dark (RGB); a tone is interpolated along this axis.
_SKIN_TONES = (
    (255, 228, 206), (246, 208, 178), (234, 188, 152), (218, 164, 124), (196, 138, 100),
    (166, 112, 78), (132, 86, 58), (98, 64, 44), (70, 46, 34))
_HAIR_COLOURS = (
    (24, 20, 18), (52, 36, 28), (94, 64, 42), (140, 98, 60), (196, 156, 98),
    (230, 202, 140), (150, 66, 32), (160, 156, 152), (226, 222, 214), (60, 86, 170),
    (196, 76, 140))
_HAIR_PROBS = (0.22, 0.2, 0.16, 0.09, 0.07, 0.06, 0.06, 0.06, 0.04, 0.02, 0.02)
_IRIS_COLOURS = (
    (92, 56, 30), (50, 32, 20), (118, 90, 48), (78, 120, 66), (72, 112, 168), (120, 132, 142))
_LIPSTICKS = ((196, 32, 54), (150, 28, 80), (222, 110, 128), (120, 40, 60), (232, 80, 60))
_HAIR_STYLES = ("bald", "buzz", "short", "receding", "fringe", "long", "bob", "curly", "bun")
_HAIR_STYLE_PROBS = (0.07, 0.08, 0.2, 0.07, 0.12, 0.18, 0.1, 0.1, 0.08)
_BEARD_STYLES = ("none", "stubble", "moustache", "goatee", "full")
_BEARD_STYLE_PROBS = (0.5, 0.15, 0.1, 0.1, 0.15)
_GLASSES_STYLES = ("round", "rect", "aviator")


def _rng(seed: int, stream: int, value: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, value]))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * rng.random()


def _pick(rng: np.random.Generator, options: tuple, probs: tuple | None = None) -> Any:
    r = rng.random()
    if probs is None:
        return options[min(int(r * len(options)), len(options) - 1)]
    acc = 0.0
    for option, prob in zip(options, probs):
        acc += prob
        if r * sum(probs) < acc:
            return option
    return options[-1]


def identity_traits(seed: int, identity: int) -> dict[str, Any]:
    """Fixed traits of one identity (plain floats, strings, bools and RGB tuples).

    Lower-face keys (``chin_y``, ``jaw_*``, ``nose_*``, ``philtrum``, ``mouth_w``, ``lip*``,
    ``beard*``, ``neck_w``, ``mole``, ``cheek_blush``) come from a stream independent of the
    upper-face keys; ``skin``/``hair`` are shared.
    """
    shared = _rng(seed, _STREAM_SHARED, identity)
    tone = shared.random()
    pos = tone * (len(_SKIN_TONES) - 1)
    k = min(int(pos), len(_SKIN_TONES) - 2)
    skin = _mix(_SKIN_TONES[k], _SKIN_TONES[k + 1], pos - k)
    skin = _jitter_colour(shared, skin, 5.0)
    hair = _jitter_colour(shared, _pick(shared, _HAIR_COLOURS, _HAIR_PROBS), 8.0)

    up = _rng(seed, _STREAM_UPPER, identity)
    t: dict[str, Any] = {"skin_tone": tone, "skin": skin, "hair": hair}
    t["face_w"] = _u(up, 0.9, 1.04)
    t["jaw_top"] = _u(up, -0.16, -0.02)
    t["forehead_y"] = -_u(up, 0.95, 1.12)
    t["eye_x"] = _u(up, 0.36, 0.45)
    t["eye_y"] = _u(up, -0.27, -0.15)
    t["eye_w"] = _u(up, 0.13, 0.17)
    t["eye_h"] = _u(up, 0.3, 0.5)            # upper lid height / eye half-width
    t["eye_low"] = _u(up, 0.45, 0.75)        # lower lid height / upper lid height
    t["eye_tilt"] = _u(up, -0.08, 0.16)
    t["iris_r"] = _u(up, 0.4, 0.5)           # iris radius / eye half-width
    t["iris"] = _jitter_colour(up, _pick(up, _IRIS_COLOURS), 10.0)
    t["brow_gap"] = _u(up, 0.14, 0.22)
    t["brow_thick"] = _u(up, 0.03, 0.065)
    t["brow_arch"] = _u(up, 0.01, 0.06)
    t["brow_len"] = _u(up, 1.1, 1.35)        # brow half-length / eye half-width
    t["brow_dark"] = _u(up, 0.45, 0.9)
    t["ear_size"] = _u(up, 0.85, 1.15)
    t["hair_style"] = _pick(up, _HAIR_STYLES, _HAIR_STYLE_PROBS)
    t["hair_volume"] = _u(up, 0.04, 0.2)
    t["hairline"] = _u(up, 0.15, 0.35)       # hairline depth below the forehead top
    t["hair_part"] = _u(up, -0.5, 0.5)
    t["hair_length"] = _u(up, 1.2, 2.6)
    t["glasses_wearer"] = bool(up.random() < 0.3)
    t["glasses_style"] = _pick(up, _GLASSES_STYLES)
    t["glasses_colour"] = _hsv(_u(up, 0, 1), _u(up, 0, 0.7), _u(up, 0.05, 0.7))
    tint = up.random()
    t["glasses_tint"] = _u(up, 0.6, 0.85) if tint < 0.08 else (
        _u(up, 0.05, 0.25) if tint < 0.5 else 0.0)

    low = _rng(seed, _STREAM_LOWER, identity)
    t["chin_y"] = _u(low, 0.95, 1.2)
    t["jaw_n"] = _u(low, 2.0, 3.4)           # superellipse exponent: squareness of the jaw
    t["jaw_taper"] = _u(low, 0.0, 0.3)       # V-shape of the lower face
    t["nose_tip_y"] = _u(low, 0.2, 0.36)
    t["nose_w"] = _u(low, 0.14, 0.24)
    t["nose_drop"] = _u(low, 0.03, 0.07)     # subnasale below the tip
    t["nose_prot"] = _u(low, 0.15, 0.35)
    t["nostril"] = _u(low, 0.6, 1.3)
    t["philtrum"] = _u(low, 0.11, 0.2)
    t["mouth_w"] = _u(low, 0.26, 0.4)
    t["lip_up"] = _u(low, 0.03, 0.07)
    t["lip_low"] = _u(low, 0.045, 0.1)
    t["lip_bow"] = _u(low, 0.1, 0.7)
    lip = _scale(_mix(skin, (176, 70, 76), _u(low, 0.25, 0.6)), _u(low, 0.72, 0.95))
    if low.random() < 0.12:
        lip = _jitter_colour(low, _pick(low, _LIPSTICKS), 12.0)
    t["lip"] = lip
    t["beard_style"] = _pick(low, _BEARD_STYLES, _BEARD_STYLE_PROBS)
    other = _hsv(_u(low, 0.02, 0.1), _u(low, 0.1, 0.6), _u(low, 0.1, 0.8))
    t["beard"] = hair if low.random() < 0.75 else other
    t["beard_density"] = _u(low, 0.75, 1.0)
    t["beard_reach"] = _u(low, 0.0, 0.12)    # how far the beard climbs the cheeks
    t["neck_w"] = _u(low, 0.48, 0.62)
    mole = (_u(low, -0.6, 0.6), _u(low, 0.3, 0.95))
    t["mole"] = mole if low.random() < 0.2 else None
    t["cheek_blush"] = _u(low, 0.0, 0.25)
    return t


def _view_params(rng: np.random.Generator, traits: dict[str, Any]) -> dict[str, Any]:
    """Per-image pose, lighting and expression."""
    v: dict[str, Any] = {}
    v["roll"] = min(max(rng.normal(0.0, 0.1), -0.3), 0.3)
    v["frac"] = _u(rng, 0.5, 0.65)           # cheek-to-cheek width / image width
    v["shift"] = (_u(rng, -0.04, 0.04), _u(rng, -0.04, 0.04))
    v["yaw"] = min(max(rng.normal(0.0, 0.08), -0.2), 0.2)
    az = _u(rng, 0.0, 2.0 * math.pi)
    el = _u(rng, 0.35, 0.85)                 # light elevation above the image plane
    v["light"] = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
    v["ambient"] = _u(rng, 0.45, 0.7)
    v["diffuse"] = _u(rng, 0.35, 0.65)
    v["tint"] = (_u(rng, 0.93, 1.05), 1.0, _u(rng, 0.93, 1.05))
    v["open"] = 0.13 * rng.random() ** 2.5
    v["smile"] = _u(rng, -0.02, 0.07)
    v["brow_raise"] = _u(rng, -0.02, 0.05)
    v["gaze"] = (_u(rng, -0.25, 0.25), _u(rng, -0.1, 0.1))
    v["eye_open"] = _u(rng, 0.8, 1.1)
    v["glasses"] = bool(rng.random() < (0.85 if traits["glasses_wearer"] else 0.04))
    v["clothes"] = _hsv(_u(rng, 0, 1), _u(rng, 0.1, 0.8), _u(rng, 0.15, 0.9))
    v["neckline"] = _u(rng, 0.08, 0.5)
    return v
