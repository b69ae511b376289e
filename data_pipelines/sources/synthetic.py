"""Procedural face renderer: the embedded default face source ``synthetic``.

Works on any machine with no download. Every record is a cartoon-like but varied face drawn
with OpenCV (anti-aliased polygons, soft directional shading) together with its exact
68-point iBUG/dlib landmarks, taken from the very point arrays that are drawn.

Determinism and identities
--------------------------
* Identity traits come from ``SeedSequence([seed, stream, identity])`` with three separate
  streams: *shared* (skin tone, hair colour), *upper face* (face width, eyes, brows, hair
  style, glasses) and *lower face* (jaw, chin, nose, mouth, lip colour, beard, mole). The
  lower face is thus independent of the visible upper face except for the shared skin tone
  and the (usually hair-coloured) beard, so a mask over nose/mouth/chin hides real
  information.
* Per-image variation comes from ``SeedSequence([seed, 3, index])``: pose (roll, scale,
  shift, small yaw), lighting, expression (mouth open, smile, brow raise, gaze, eye
  opening), glasses on/off, clothes and background clutter.
* Same ``(seed, index, resolution)`` -> byte-identical image and landmarks.

Geometry
--------
Everything is built in a canonical face frame (x right, y down; cheek half-width ~1, eyes at
y ~ -0.2, chin at y ~ 1.1). A small yaw moves each point by ``z * sin(yaw)`` (``z`` = depth
on a rounded head), which squeezes the far side of the face. One similarity transform
(roll, scale, shift) then maps every point to pixels, so drawing and landmarks agree
exactly. Landmark pixel convention: pixel ``(row i, column j)`` has its centre at
``x = j, y = i`` (OpenCV / dlib).
"""
from __future__ import annotations

import colorsys
import math
import operator
from typing import Any

import cv2
import numpy as np

from data_pipelines.sources.base import Record

MIN_RESOLUTION = 64
MAX_RESOLUTION = 512

_SHIFT = 4                      # sub-pixel bits for cv2 drawing
_ONE = float(1 << _SHIFT)
_AA = cv2.LINE_AA
_DEPTH = 0.8                    # depth of the head's front surface (yaw model)

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

# Static sample grids (built once at import; read-only).
_U13 = np.linspace(-1.0, 1.0, 13)          # eye lids: u = -1/3, 1/3 at indices 4, 8
_U9 = np.linspace(-1.0, 1.0, 9)            # brows: landmarks at every 2nd point
_U41 = np.linspace(-1.0, 1.0, 41)          # lips: step 0.05
_THETA25 = np.linspace(0.0, math.pi / 2, 25)   # jaw half: landmarks at every 3rd point
_PHI_FORE = np.linspace(0.0, math.pi, 21)[1:-1]
_PHI_CAP = np.linspace(math.pi, 0.0, 25)
_X21 = np.linspace(1.0, -1.0, 21)
_S4 = np.linspace(0.0, 1.0, 4)
_EVEN21 = (np.arange(21) % 2).astype(np.float64)

# Landmark indices inside the drawn point arrays.
_JAW_LM = np.r_[0:25:3, 27:49:3]                   # face outline: left half 25, right 24
_BROW_LM = np.arange(0, 9, 2)                      # brow centre line
_EYE_LM = np.array([0, 4, 8, 12, 16, 20])          # eye outline (upper 13 + lower 11)
_OUTER_UP_LM = np.array([0, 8, 15, 20, 25, 32, 40])    # u = -1, -.6, -.25, 0, .25, .6, 1
_OUTER_LOW_LM = np.array([32, 26, 20, 14, 8])          # u = .6, .3, 0, -.3, -.6
_INNER_UP_LM = np.array([0, 9, 17, 25, 34])            # u = -.85, -.4, 0, .4, .85
_INNER_LOW_LM = np.array([25, 17, 9])                  # u = .4, 0, -.4


def _circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.cos(a), np.sin(a)


_CIRCLES = {n: _circle(n) for n in (12, 20, 24, 28, 48)}


def _unit_arc(a0: float, a1: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.linspace(a0, a1, n)
    return np.cos(a), np.sin(a)


# Open arcs per side (-1: image left, +1: image right): inner ear rim, nose wing.
_EAR_ARCS = {-1: _unit_arc(0.5 * math.pi, 1.5 * math.pi, 8),
             1: _unit_arc(-0.5 * math.pi, 0.5 * math.pi, 8)}
_WING_ARCS = {-1: _unit_arc(0.55 * math.pi, 1.45 * math.pi, 9),
              1: _unit_arc(-0.45 * math.pi, 0.45 * math.pi, 9)}


# --------------------------------------------------------------------------------------
# Random streams and traits
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Canonical geometry
# --------------------------------------------------------------------------------------

def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24,
             angle: float = 0.0) -> np.ndarray:
    c, s = _CIRCLES[n]
    x, y = rx * c, ry * s
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], 1)


def _arc(cx: float, cy: float, rx: float, ry: float,
         unit: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return np.stack([cx + rx * unit[0], cy + ry * unit[1]], 1)


def _mirror(p: np.ndarray) -> np.ndarray:
    return p * (-1.0, 1.0)


def _jaw_half(t: dict[str, Any], theta: np.ndarray) -> np.ndarray:
    """Left half of the jaw contour: theta 0 = side (landmark 0), pi/2 = chin (8)."""
    c = np.clip(np.cos(theta), 0.0, 1.0)
    s = np.clip(np.sin(theta), 0.0, 1.0)
    e = 2.0 / t["jaw_n"]
    x = -t["face_w"] * (1.0 - t["jaw_taper"] * s * s) * c ** e
    y = t["jaw_top"] + (t["chin_y"] - t["jaw_top"]) * s ** e
    return np.stack([x, y], 1)


class _Bank:
    """Canonical point sets with depths, transformed to pixels in one go.

    A point's depth is ``surf * surface_z(x) + dz`` (``dz`` scalar or per-point array).
    """

    def __init__(self, face_w: float) -> None:
        self.face_w = face_w
        self.names: list[str] = []
        self.arrays: list[np.ndarray] = []
        self.sizes: list[int] = []
        self.surf: list[float] = []
        self.dz: list[float] = []
        self.dz_arrays: list[tuple[int, np.ndarray]] = []
        self.start: dict[str, int] = {}
        self.count = 0

    def add(self, name: str, pts: np.ndarray, dz: float | np.ndarray = 0.0,
            surf: float = 1.0) -> np.ndarray:
        n = len(pts)
        self.names.append(name)
        self.arrays.append(pts)
        self.sizes.append(n)
        self.surf.append(surf)
        if isinstance(dz, np.ndarray):
            self.dz.append(0.0)
            self.dz_arrays.append((self.count, dz))
        else:
            self.dz.append(dz)
        self.start[name] = self.count
        self.count += n
        return pts

    def finish(self) -> None:
        self.points = np.concatenate(self.arrays)
        sizes = np.asarray(self.sizes)
        r = self.points[:, 0] / (1.1 * self.face_w)
        z = np.repeat(np.asarray(self.surf), sizes) * (
            _DEPTH * np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0)))
        z += np.repeat(np.asarray(self.dz), sizes)
        for s, arr in self.dz_arrays:
            z[s:s + len(arr)] += arr
        self.z = z
        self.bounds = np.cumsum(sizes)

    def transform(self, yaw: float, m: np.ndarray) -> np.ndarray:
        """All points in pixels, ``(N, 2)`` float64."""
        p = self.points
        x = p[:, 0] * math.cos(yaw) + self.z * math.sin(yaw)
        out = np.empty_like(p)
        out[:, 0] = m[0, 0] * x + m[0, 1] * p[:, 1] + m[0, 2]
        out[:, 1] = m[1, 0] * x + m[1, 1] * p[:, 1] + m[1, 2]
        return out

    def split(self, pts: np.ndarray) -> dict[str, np.ndarray]:
        out, s = {}, 0
        for name, e in zip(self.names, self.bounds.tolist()):
            out[name] = pts[s:e]
            s = e
        return out


def _add_eye(b: _Bank, t: dict[str, Any], v: dict[str, Any], side: int, key: str) -> None:
    """Eye of one side (-1: image left = dlib 36-41, +1: image right = dlib 42-47)."""
    cx, cy, ew = side * t["eye_x"], t["eye_y"], t["eye_w"]
    eh = t["eye_h"] * ew * v["eye_open"]
    el = eh * t["eye_low"]
    u = _U13
    ang = -side * t["eye_tilt"]                          # outer corner up
    ca, sa = math.cos(ang), math.sin(ang)
    ux = u * ew
    uy = -eh * (1.0 - u * u) ** 0.8 * (1.0 - 0.12 * side * u)
    ly = el * (1.0 - u * u) ** 0.9
    upper = np.stack([cx + ca * ux - sa * uy, cy + sa * ux + ca * uy], 1)
    lower = np.stack([cx + ca * ux - sa * ly, cy + sa * ux + ca * ly], 1)
    outline = np.concatenate([upper, lower[-2:0:-1]])    # clockwise from the left corner
    b.add(f"eye_{key}", outline, -0.05)
    b.add(f"crease_{key}", upper[2:11] - (0.0, 0.45 * eh + 0.02), -0.05)
    gx, gy = v["gaze"]
    b.add(f"iris_{key}", np.array([[cx + gx * ew * 0.5, cy - 0.15 * eh + gy * eh]]), -0.05)


def _add_brow(b: _Bank, t: dict[str, Any], v: dict[str, Any], side: int, key: str) -> None:
    """Brow of one side; points run left to right in the image."""
    ew = t["eye_w"]
    u = _U9
    outer = -side * u                                    # +1 at the outer end
    cx = side * (t["eye_x"] + 0.1 * ew)
    arch = t["brow_arch"] * (1.0 - ((outer - 0.35) / 1.35) ** 2)
    y = t["eye_y"] - t["brow_gap"] - v["brow_raise"] - arch + 0.02 * outer
    centre = np.stack([cx + u * t["brow_len"] * ew, y], 1)
    half = 0.5 * t["brow_thick"] * (1.05 - 0.55 * np.clip(outer, 0.0, 1.0) ** 1.5)
    top = centre.copy()
    top[:, 1] -= half
    bottom = centre[::-1].copy()
    bottom[:, 1] += half[::-1]
    b.add(f"brow_{key}", np.concatenate([top, bottom]))
    b.add(f"browc_{key}", centre)


def _add_mouth(b: _Bank, t: dict[str, Any], v: dict[str, Any], my: float) -> None:
    mw, opn, smile = t["mouth_w"], v["open"], v["smile"]
    u = _U41
    uu = u * u
    line = my - smile * uu
    gap = 0.5 * opn * np.clip(1.0 - uu / 0.7225, 0.0, 1.0) ** 0.7
    bow = t["lip_bow"]
    h_up = np.sqrt(1.0 - uu) * (1.0 + 0.35 * bow * np.exp(-((np.abs(u) - 0.25) / 0.12) ** 2)
                                - 0.45 * bow * np.exp(-uu / 0.0081))
    x = u * mw
    b.add("mouth_ou", np.stack([x, line - gap - t["lip_up"] * h_up], 1), 0.06)
    b.add("mouth_ol", np.stack([x, line + gap + t["lip_low"] * (1.0 - uu) ** 0.55], 1), 0.06)
    b.add("mouth_iu", np.stack([x[3:38], (line - gap)[3:38]], 1), 0.06)   # |u| <= 0.85
    b.add("mouth_il", np.stack([x[3:38], (line + gap)[3:38]], 1), 0.06)


def _build(t: dict[str, Any], v: dict[str, Any]) -> tuple[_Bank, np.ndarray]:
    """All canonical geometry of one face and the global indices of its 68 landmarks."""
    b = _Bank(t["face_w"])
    fw, jt = t["face_w"], t["jaw_top"]

    # Face outline: jaw (landmarks on every 3rd point) and forehead arc.
    left = _jaw_half(t, _THETA25)
    sp = np.sin(_PHI_FORE)
    fore = np.stack([fw * (1.0 - 0.07 * sp) * np.cos(_PHI_FORE),
                     jt + (t["forehead_y"] - jt) * sp ** 0.85], 1)
    b.add("face", np.concatenate([left, _mirror(left[-2::-1]), fore]))
    half_x, half_y = -left[:, 0], left[:, 1]

    # Ears.
    es = t["ear_size"]
    ear_y = t["eye_y"] + 0.2
    ear_x = float(np.interp(ear_y, half_y, half_x)) + 0.02
    for side, key in ((-1, "l"), (1, "r")):
        ex = side * ear_x
        b.add(f"ear_{key}", _ellipse(ex, ear_y, 0.1 * es, 0.2 * es, 20, side * 0.15), -0.25, 0.0)
        b.add(f"earin_{key}", _arc(ex + side * 0.02, ear_y, 0.05 * es, 0.13 * es,
                                   _EAR_ARCS[side]), -0.25, 0.0)

    # Neck and clothes (depth 0: they do not turn with the head).
    nw = t["neck_w"] * fw
    b.add("neck", np.array([[-nw, jt + 0.4], [nw, jt + 0.4], [nw * 1.1, 4.0],
                            [-nw * 1.1, 4.0]]), 0.0, 0.0)
    yb = t["chin_y"] + 0.45
    collar = np.stack([_U9 * nw * 1.25, yb + v["neckline"] * (1.0 - np.abs(_U9) ** 1.5)], 1)
    b.add("clothes", np.concatenate([[[-3.2, yb + 0.7], [-2.0, yb + 0.15]], collar,
                                     [[2.0, yb + 0.15], [3.2, yb + 0.7], [3.4, 6.0],
                                      [-3.4, 6.0]]]), 0.0, 0.0)

    # Eyes and brows.
    for side, key in ((-1, "l"), (1, "r")):
        _add_eye(b, t, v, side, key)
        _add_brow(b, t, v, side, key)

    # Nose.
    tip_y = t["nose_tip_y"]
    base_y = tip_y + t["nose_drop"]
    prot = t["nose_prot"]
    top = t["eye_y"] - 0.03
    b.add("nose_bridge", np.stack([0.0 * _S4, top + (tip_y - top) * _S4], 1),
          prot * (0.25 + 0.75 * _S4))
    nsw = t["nose_w"]
    nbase = np.array([[-nsw, base_y - 0.035], [-0.5 * nsw, base_y - 0.002], [0.0, base_y],
                      [0.5 * nsw, base_y - 0.002], [nsw, base_y - 0.035]])
    b.add("nose_base", nbase, 0.6 * prot * (1.0 - np.abs(nbase[:, 0])))
    nr = t["nostril"]
    for side, key in ((-1, "l"), (1, "r")):
        b.add(f"nostril_{key}", _ellipse(side * 0.48 * nsw, base_y - 0.018, 0.24 * nsw * nr,
                                         0.018 * nr, 12, -side * 0.35), 0.5 * prot)
        b.add(f"wing_{key}", _arc(side * 0.7 * nsw, base_y - 0.05, 0.32 * nsw, 0.055,
                                  _WING_ARCS[side]), 0.45 * prot)
        b.add(f"noseside_{key}", np.array([[side * 0.075, t["eye_y"] + 0.06],
                                           [side * 0.085, tip_y - 0.12],
                                           [side * 0.1, tip_y - 0.06]]), 0.5 * prot)
    b.add("nose_tip", _ellipse(0.0, tip_y - 0.015, 0.06, 0.04, 12), prot)

    # Mouth and smile folds.
    my = base_y + t["philtrum"] + t["lip_up"]
    _add_mouth(b, t, v, my)
    mw = t["mouth_w"]
    for side, key in ((-1, "l"), (1, "r")):
        b.add(f"fold_{key}", np.array([[side * (nsw + 0.05), base_y - 0.06],
                                       [side * (mw * 0.85 + 0.12), my - 0.02 - v["smile"]],
                                       [side * (mw + 0.1), my + 0.1]]))

    # Beard and moustache.
    style = t["beard_style"]
    if style in ("full", "stubble"):
        outer_l = left[3:] * (1.03, 1.0) + (0.0, 0.03)
        outer = np.concatenate([outer_l, _mirror(outer_l[-2::-1])])
        reach = t["beard_reach"]
        cheek = np.array([[outer[-1, 0] * 0.97, base_y - reach],
                          [nsw + 0.12, base_y + 0.02 - 0.5 * reach],
                          [nsw * 0.6, base_y + 0.035], [0.0, base_y + 0.04]])
        b.add("beard", np.concatenate([outer, cheek, _mirror(cheek[-2::-1])]))
    elif style == "goatee":
        b.add("beard", np.array([
            [-(mw + 0.05), my - 0.01], [-(mw * 0.9), my + 0.2],
            [-(mw * 0.55), t["chin_y"] - 0.02], [0.0, t["chin_y"] + 0.04],
            [mw * 0.55, t["chin_y"] - 0.02], [mw * 0.9, my + 0.2], [mw + 0.05, my - 0.01],
            [mw * 0.5, my + 0.06], [0.0, my + 0.07], [-mw * 0.5, my + 0.06]]))
    if style != "none":
        ou = b.arrays[b.names.index("mouth_ou")]
        bottom = ou[::4] + (0.0, 0.25 * t["lip_up"])
        bottom[0] += (-0.03, 0.03)
        bottom[-1] += (0.03, 0.03)
        top_m = np.array([[nsw * 0.9, base_y + 0.035], [0.0, base_y + 0.045],
                          [-nsw * 0.9, base_y + 0.035]])
        b.add("moustache", np.concatenate([bottom, top_m]), 0.08)

    if t["mole"] is not None:
        mx, mole_y = t["mole"]
        b.add("mole", np.array([[mx * 0.8 * float(np.interp(mole_y, half_y, half_x)),
                                 mole_y]]))

    _add_hair(b, t)
    if v["glasses"]:
        _add_glasses(b, t)

    s = b.start
    lm = np.concatenate([
        s["face"] + _JAW_LM, s["browc_l"] + _BROW_LM, s["browc_r"] + _BROW_LM,
        s["nose_bridge"] + np.arange(4), s["nose_base"] + np.arange(5),
        s["eye_l"] + _EYE_LM, s["eye_r"] + _EYE_LM,
        s["mouth_ou"] + _OUTER_UP_LM,
        s["mouth_ol"] + _OUTER_LOW_LM, s["mouth_iu"] + _INNER_UP_LM,
        s["mouth_il"] + _INNER_LOW_LM])
    b.finish()
    return b, lm


def _add_hair(b: _Bank, t: dict[str, Any]) -> None:
    style = t["hair_style"]
    if style == "bald":
        return
    fw, top, jt = t["face_w"], t["forehead_y"], t["jaw_top"]
    vol = t["hair_volume"] * (0.25 if style == "buzz" else 1.0)
    hw = fw * 1.03 + vol * 0.6
    htop = top - vol
    side_y = jt + 0.15 if style in ("long", "bob", "curly") else jt - 0.05
    outer = np.stack([hw * np.cos(_PHI_CAP),
                      side_y + (htop - side_y) * np.sin(_PHI_CAP) ** 0.8], 1)
    brow_top = t["eye_y"] - t["brow_gap"] - t["brow_arch"] - t["brow_thick"]
    xs = _X21                                            # right to left across the forehead
    if style == "fringe":
        hl = brow_top - 0.06 - 0.035 * _EVEN21 - 0.08 * xs ** 4
    elif style == "receding":
        hl = top + t["hairline"] + 0.05 - 0.18 * np.exp(-((np.abs(xs) - 0.55) / 0.2) ** 2)
    else:
        hl = top + t["hairline"] + 0.05 * (xs - t["hair_part"]) ** 2 - 0.05 * np.abs(xs) ** 3
    hl = np.minimum(hl, brow_top - 0.03)
    # Half-width of the forehead arc at the hairline height, so the cap meets the face edge.
    sp = np.sin(_PHI_FORE[:9])
    arc_x = fw * (1.0 - 0.07 * sp) * np.cos(_PHI_FORE[:9])
    arc_y = jt + (top - jt) * sp ** 0.85
    edge = np.interp(hl, arc_y[::-1], arc_x[::-1], left=arc_x[-1], right=fw)
    hairline = np.stack([xs * edge * np.where(np.abs(xs) > 0.9, 1.0, 0.97), hl], 1)
    sides_r = np.array([[fw * 0.99, side_y], [fw * 0.95, jt - 0.2]])
    b.add("hair_cap", np.concatenate([outer, sides_r, hairline, _mirror(sides_r[::-1])]),
          0.0, 0.6)

    if style in ("long", "bob", "curly", "bun"):
        if style == "curly":
            c, s = _CIRCLES[48]
            r = 1.0 + 0.04 * np.sin(np.arctan2(s, c) * 14.0 + 3.0 * t["hair_part"])
            cy = 0.5 * (htop + t["chin_y"]) - 0.15
            back = np.stack([r * hw * 1.35 * c, cy + r * (cy - htop + 0.15) * s], 1)
        elif style == "bun":
            back = _ellipse(0.2 * t["hair_part"], htop - 0.05, 0.32, 0.26, 20)
        else:
            length = t["hair_length"] if style == "long" else t["chin_y"] - 0.05
            w = hw * (1.12 if style == "long" else 1.08)
            bx = -w * _U9
            by = length + 0.06 * _EVEN21[:9] - 0.1 * _U9 ** 2
            back = np.concatenate([outer, [[w, side_y + 0.3]], np.stack([bx, by], 1),
                                   [[-w, side_y + 0.3]]])
        b.add("hair_back", back, 0.0, 0.3)

    if style != "buzz":                                  # strands from hairline to crown
        strands = []
        for kk in (-0.8, -0.53, -0.27, 0.0, 0.27, 0.53, 0.8):
            x0 = kk * fw * 0.8
            y0 = float(np.interp(-x0, -hairline[:, 0], hairline[:, 1])) - 0.02
            x2 = x0 * 1.1 + 0.1 * t["hair_part"]
            y2 = min(float(np.interp(x2, outer[:, 0], outer[:, 1])) + 0.08, y0 - 0.05)
            strands.append([[x0, y0], [0.5 * (x0 + x2) + 0.01, 0.5 * (y0 + y2)], [x2, y2]])
        b.add("hair_strands", np.asarray(strands).reshape(-1, 2), 0.0, 0.5)


def _add_glasses(b: _Bank, t: dict[str, Any]) -> None:
    ew, fw = t["eye_w"], t["face_w"]
    gw, gh = ew * 1.45, ew * 1.0
    style = t["glasses_style"]
    c, s = _CIRCLES[28]
    if style == "round":
        shape = np.stack([c, s], 1)
    elif style == "rect":
        shape = np.stack([np.sign(c) * np.abs(c) ** 0.35, np.sign(s) * np.abs(s) ** 0.35 * 0.8],
                         1)
    else:
        shape = np.stack([c * (1.0 + 0.1 * s), s * (0.8 + 0.35 * np.clip(s, 0, 1))], 1)
    ey = t["eye_y"] + 0.01
    for side, key in ((-1, "l"), (1, "r")):
        cx = side * t["eye_x"]
        lens = (shape if side < 0 else _mirror(shape)) * (gw, gh) + (cx, ey)
        b.add(f"glass_{key}", lens, 0.2)
        outer_x = side * (t["eye_x"] + gw)
        b.add(f"temple_{key}", np.array([[outer_x, ey - 0.25 * gh],
                                         [side * fw, ey - 0.2 * gh + 0.03]]),
              np.array([_DEPTH * 0.7, 0.1]), 0.0)
    inner = t["eye_x"] - gw * 0.98
    b.add("glass_bridge", np.array([[-inner, ey - 0.3 * gh], [0.0, ey - 0.45 * gh],
                                    [inner, ey - 0.3 * gh]]), 0.25)


# --------------------------------------------------------------------------------------
# Drawing (all coordinates in pixels; ``q`` holds the same points in fixed point)
# --------------------------------------------------------------------------------------

def _roi(shape: tuple[int, ...], pts: np.ndarray, pad: int) -> tuple[int, int, int, int] | None:
    h, w = shape[:2]
    lo = pts.min(0)
    hi = pts.max(0)
    x0 = max(int(lo[0]) - pad - 1, 0)
    y0 = max(int(lo[1]) - pad - 1, 0)
    x1 = min(int(hi[0]) + pad + 2, w)
    y1 = min(int(hi[1]) + pad + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _blend(roi: np.ndarray, layer: np.ndarray, mask: np.ndarray, alpha: float) -> None:
    """``roi = roi + alpha * mask/255 * (layer - roi)``, in place."""
    w2 = mask.astype(np.float32)
    w2 *= alpha / 255.0
    w1 = 1.0 - w2
    roi[...] = cv2.blendLinear(roi, layer, w1, w2)


def _blend_fill(img: np.ndarray, polys: list[np.ndarray], fixed: list[np.ndarray], colour,
                alpha: float, soft: float = 0.0) -> None:
    """Alpha-blend filled polygons of one colour into ``img`` (in place).

    ``polys`` are float pixel points (for the box), ``fixed`` the same in fixed point;
    ``soft`` > 0 feathers the edge with a Gaussian of that many pixels.
    """
    k = 2 * int(round(1.5 * soft)) + 1 if soft >= 0.5 else 0
    box = _roi(img.shape, np.concatenate(polys) if len(polys) > 1 else polys[0], k)
    if box is None:
        return
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    off = np.array([x0, y0], np.int32) << _SHIFT
    cv2.fillPoly(mask, [q - off for q in fixed], 255, _AA, _SHIFT)
    if k:
        mask = cv2.GaussianBlur(mask, (k, k), soft)
    roi = img[y0:y1, x0:x1]
    layer = np.empty_like(roi)
    layer[...] = colour
    _blend(roi, layer, mask, alpha)


def _draw_eye(img: np.ndarray, p: dict[str, np.ndarray], q: dict[str, np.ndarray], key: str,
              t: dict[str, Any], scale: float) -> None:
    outline = p[f"eye_{key}"]
    box = _roi(img.shape, outline, 0)
    if box is None:
        return
    x0, y0, x1, y1 = box
    off = np.array([x0, y0], np.int32) << _SHIFT
    roi = img[y0:y1, x0:x1]
    skin = t["skin"]
    sclera = _mix((238, 234, 228), skin, 0.15)
    layer = np.empty_like(roi)
    layer[...] = sclera
    ew = t["eye_w"] * scale
    r = t["iris_r"] * ew
    ci = q[f"iris_{key}"][0] - off
    c = (int(ci[0]), int(ci[1]))
    cv2.circle(layer, c, int(r * _ONE), t["iris"], -1, _AA, _SHIFT)
    cv2.circle(layer, c, int(r * _ONE), _scale(t["iris"], 0.55), max(1, int(r * 0.18)), _AA,
               _SHIFT)
    cv2.circle(layer, c, int(r * 0.45 * _ONE), (12, 10, 10), -1, _AA, _SHIFT)
    hl = (c[0] - int(0.3 * r * _ONE), c[1] - int(0.35 * r * _ONE))
    cv2.circle(layer, hl, int(max(0.6, r * 0.2) * _ONE), (250, 250, 250), -1, _AA, _SHIFT)
    qe = q[f"eye_{key}"] - off
    cv2.polylines(layer, [qe[:13]], False, _scale(sclera, 0.7),
                  max(1, int(round(0.25 * t["eye_h"] * ew))), _AA, _SHIFT)
    mask = np.zeros(roi.shape[:2], np.uint8)
    cv2.fillPoly(mask, [qe], 255, _AA, _SHIFT)
    _blend(roi, layer, mask, 1.0)
    qa = q[f"eye_{key}"]
    lid = _scale(t["hair"], 0.35) if sum(t["hair"]) < 300 else (40, 30, 28)
    cv2.polylines(img, [qa[:13]], False, lid, max(1, round(0.018 * scale)), _AA, _SHIFT)
    cv2.polylines(img, [np.concatenate([qa[12:], qa[:1]])], False, _scale(skin, 0.72),
                  max(1, round(0.006 * scale)), _AA, _SHIFT)
    cv2.polylines(img, [q[f"crease_{key}"]], False, _scale(skin, 0.78),
                  max(1, round(0.007 * scale)), _AA, _SHIFT)


def _background(rng: np.random.Generator, res: int) -> np.ndarray:
    """Soft clutter: a colour gradient with random shapes, drawn at half size."""
    h = max(32, res // 2)
    base_h = rng.random()
    grid = np.empty((3, 3, 3), np.float32)
    for i in range(3):
        for j in range(3):
            grid[i, j] = _hsv(base_h + _u(rng, -0.12, 0.12), _u(rng, 0.0, 0.5),
                              _u(rng, 0.2, 0.95))
    bg = cv2.resize(grid, (h, h), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    for _ in range(int(rng.integers(3, 10))):
        kind = _pick(rng, ("rect", "disc", "line", "poly", "stripes"), (3, 3, 2, 2, 1))
        col = _hsv(rng.random(), _u(rng, 0.0, 0.7), _u(rng, 0.1, 1.0))
        cx, cy = _u(rng, -0.1, 1.1) * h, _u(rng, -0.1, 1.1) * h
        size = _u(rng, 0.05, 0.45) * h
        if kind == "rect":
            box = cv2.boxPoints(((cx, cy), (size, _u(rng, 0.2, 2.0) * size),
                                 _u(rng, 0.0, 180.0)))
            cv2.fillPoly(bg, [(box * _ONE).astype(np.int32)], col, _AA, _SHIFT)
        elif kind == "disc":
            cv2.circle(bg, (int(cx * _ONE), int(cy * _ONE)), int(size * 0.5 * _ONE), col, -1,
                       _AA, _SHIFT)
        elif kind == "line":
            ang = rng.random() * math.pi
            dx, dy = 2.0 * size * math.cos(ang), 2.0 * size * math.sin(ang)
            seg = (np.array([[cx - dx, cy - dy], [cx + dx, cy + dy]]) * _ONE).astype(np.int32)
            cv2.polylines(bg, [seg], False, col, int(_u(rng, 1.0, 0.05 * h + 2.0)), _AA,
                          _SHIFT)
        elif kind == "poly":
            n = int(rng.integers(3, 6))
            pts = np.array([cx, cy]) + rng.uniform(-size, size, (n, 2))
            cv2.fillPoly(bg, [(pts * _ONE).astype(np.int32)], col, _AA, _SHIFT)
        else:
            ang = rng.random() * math.pi
            d = np.array([math.cos(ang), math.sin(ang)]) * 2.0 * h
            nrm = np.array([-d[1], d[0]]) / (2.0 * h)
            period = _u(rng, 0.05, 0.15) * h
            k = np.arange(-4, 5)[:, None] * period * nrm + (cx, cy)
            segs = (np.stack([k - d, k + d], 1) * _ONE).astype(np.int32)
            cv2.polylines(bg, list(segs), False, col, max(1, int(period * 0.3)), _AA, _SHIFT)
    return cv2.resize(bg, (res, res), interpolation=cv2.INTER_LINEAR)


def _shading(res: int, m: np.ndarray, t: dict[str, Any], v: dict[str, Any],
             q_low: dict[str, np.ndarray]) -> np.ndarray:
    """Head shading factor (ellipsoid + soft occlusion) at low resolution, (L, L) float32."""
    low = max(32, res // 4)
    k = low / res
    q = (np.arange(low, dtype=np.float32) + 0.5) / k - 0.5    # low-res centres in pixels
    inv = np.linalg.inv(m[:, :2])
    xs = q[None, :] - m[0, 2]
    ys = q[:, None] - m[1, 2]
    cx0 = _DEPTH * 0.6 * math.sin(v["yaw"])
    cy0 = 0.5 * (t["forehead_y"] + t["chin_y"])
    rx = 1.1 * t["face_w"]
    ry = 0.55 * (t["chin_y"] - t["forehead_y"]) + 0.1
    u = (inv[0, 0] * xs + inv[0, 1] * ys - cx0) * (1.0 / rx)
    w = (inv[1, 0] * xs + inv[1, 1] * ys - cy0) * (1.0 / ry)
    r2 = u * u + w * w
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    norm = 1.0 / np.maximum(np.sqrt(r2), 1.0)
    lx, ly, lz = v["light"]
    cr, sr = math.cos(v["roll"]), math.sin(v["roll"])
    lxf, lyf = cr * lx + sr * ly, -sr * lx + cr * ly      # light in the face frame
    wrap = 0.35
    lam = np.clip(((lxf * u + lyf * w) * norm + lz * nz + wrap) * (1.0 / (1.0 + wrap)),
                  0.0, 1.0)
    shade = (v["ambient"] + v["diffuse"] * lam).astype(np.float32)
    ao = np.ones((low, low), np.float32)                # soft occlusion / highlights
    cv2.fillPoly(ao, [q_low["neck"]], 0.8, cv2.LINE_8, _SHIFT)
    cv2.fillPoly(ao, [q_low["face"]], 1.0, cv2.LINE_8, _SHIFT)
    cv2.fillPoly(ao, [q_low["eye_l"], q_low["eye_r"]], 0.88, cv2.LINE_8, _SHIFT)
    nb = q_low["nose_base"]
    drop = np.array([0, int(0.03 * res * k * _ONE)], np.int32)
    cv2.fillPoly(ao, [np.concatenate([nb, nb[::-1] + drop])], 0.8, cv2.LINE_8, _SHIFT)
    cv2.fillPoly(ao, [q_low["mouth_ol"][10:31] + drop // 3], 0.85, cv2.LINE_8, _SHIFT)
    cv2.fillPoly(ao, [q_low["nose_tip"]], 1.12, cv2.LINE_8, _SHIFT)
    blur = max(3, (low // 16) | 1)
    ao = cv2.GaussianBlur(ao, (blur, blur), 0)
    shade *= ao
    return shade


def _to_fixed(p: np.ndarray) -> np.ndarray:
    return np.rint(p * _ONE).astype(np.int32)


def render_face(seed: int, index: int, identity: int, resolution: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Render one face: ``(uint8 (R, R, 3) RGB image, float32 (68, 2) landmarks)``."""
    res = int(resolution)
    t = identity_traits(seed, identity)
    rng = _rng(seed, _STREAM_IMAGE, index)
    v = _view_params(rng, t)

    # Pose: canonical -> pixels.
    scale = v["frac"] * res / (2.0 * t["face_w"])
    cr, sr = math.cos(v["roll"]), math.sin(v["roll"])
    a = scale * np.array([[cr, -sr], [sr, cr]])
    c0 = np.array([0.0, 0.5 * (t["forehead_y"] + t["chin_y"]) + 0.05])
    centre = res * (0.5 + np.asarray(v["shift"])) - 0.5
    m = np.concatenate([a, (centre - a @ c0)[:, None]], 1)
    bank, lm_idx = _build(t, v)
    pts = bank.transform(v["yaw"], m)
    p = bank.split(pts)
    q = bank.split(_to_fixed(pts))

    img = _background(rng, res)
    head = np.zeros((res, res), np.uint8)
    skin, hair = t["skin"], t["hair"]
    px = lambda x: max(1, int(round(x * scale)))        # noqa: E731  canonical -> px width

    def fill(target: np.ndarray, names: tuple[str, ...], colour) -> None:
        for n in names:                                 # one call each: fillPoly XORs overlaps
            cv2.fillPoly(target, [q[n]], colour, _AA, _SHIFT)

    def lines(names: tuple[str, ...], colour, width: int, closed: bool = False) -> None:
        cv2.polylines(img, [q[n] for n in names], closed, colour, width, _AA, _SHIFT)

    # Body, head silhouette.
    if "hair_back" in q:
        fill(img, ("hair_back",), _scale(hair, 0.85))
    fill(img, ("neck",), _scale(skin, 0.9))
    fill(img, ("clothes",), v["clothes"])
    cv2.polylines(img, [q["clothes"][2:11]], False, _scale(v["clothes"], 0.7), px(0.02), _AA,
                  _SHIFT)
    fill(img, ("ear_l", "ear_r"), _scale(skin, 0.97))
    lines(("earin_l", "earin_r"), _scale(skin, 0.75), px(0.012))
    fill(img, ("face",), skin)
    fill(head, tuple(n for n in ("hair_back", "neck") if n in q), 255)
    fill(head, ("clothes",), 0)                         # clothes keep the scene lighting
    fill(head, tuple(n for n in ("ear_l", "ear_r", "face", "hair_cap") if n in q), 255)

    # Cheeks and mole.
    if t["cheek_blush"] > 0.05:
        for side, key in ((-1, "l"), (1, "r")):
            c = 0.3 * p[f"eye_{key}"].mean(0) + 0.7 * p["nose_base"][2 + 2 * side]
            c[0] += side * 0.12 * scale
            blob = _ellipse(c[0], c[1], 0.12 * scale, 0.085 * scale, 12)
            _blend_fill(img, [blob], [_to_fixed(blob)], (220, 90, 90), t["cheek_blush"] * 0.35,
                        0.05 * scale)
    if "mole" in q:
        cv2.circle(img, tuple(int(x) for x in q["mole"][0]), int(0.02 * scale * _ONE),
                   _scale(skin, 0.45), -1, _AA, _SHIFT)

    # Beard (under the lips), nose.
    style = t["beard_style"]
    beard = t["beard"]
    if style == "stubble":
        _blend_fill(img, [p["beard"]], [q["beard"]], beard, 0.3 * t["beard_density"],
                    0.05 * scale)
        _blend_fill(img, [p["moustache"]], [q["moustache"]], beard,
                    0.25 * t["beard_density"], 0.02 * scale)
    elif style in ("full", "goatee"):
        _blend_fill(img, [p["beard"]], [q["beard"]], beard, t["beard_density"], 0.01 * scale)
    lines(("fold_l", "fold_r"), _scale(skin, 0.86), px(0.01))
    lines(("noseside_l", "noseside_r"), _scale(skin, 0.88), px(0.014))
    lines(("wing_l", "wing_r"), _scale(skin, 0.72), px(0.012))
    fill(img, ("nostril_l", "nostril_r"), _scale(skin, 0.35))

    # Mouth.
    lip = t["lip"]
    if v["open"] > 0.01:
        cv2.fillPoly(img, [np.concatenate([q["mouth_iu"], q["mouth_il"][::-1]])],
                     (70, 22, 26), _AA, _SHIFT)
        teeth = q["mouth_iu"][4:-4]
        drop = (q["mouth_il"][4:-4] - teeth) * 9 // 20
        cv2.fillPoly(img, [np.concatenate([teeth, (teeth + drop)[::-1]])], (236, 232, 222),
                     _AA, _SHIFT)
    cv2.fillPoly(img, [np.concatenate([q["mouth_ou"], q["mouth_iu"][::-1]])], lip, _AA,
                 _SHIFT)
    cv2.fillPoly(img, [np.concatenate([q["mouth_ol"], q["mouth_il"][::-1]])],
                 _scale(lip, 1.08), _AA, _SHIFT)
    cv2.polylines(img, [np.concatenate([q["mouth_ou"][:3], q["mouth_iu"],
                                        q["mouth_ou"][-3:]])], False, _scale(lip, 0.55),
                  px(0.008), _AA, _SHIFT)
    if v["open"] > 0.01:
        cv2.polylines(img, [q["mouth_il"]], False, _scale(lip, 0.6), px(0.006), _AA, _SHIFT)
    if style in ("full", "goatee", "moustache"):
        _blend_fill(img, [p["moustache"]], [q["moustache"]], beard, t["beard_density"])

    # Eyes and brows.
    _draw_eye(img, p, q, "l", t, scale)
    _draw_eye(img, p, q, "r", t, scale)
    brow = _mix(hair, (20, 16, 14), 1.0 - t["brow_dark"]) if sum(hair) < 600 else \
        _scale(hair, 0.8)
    fill(img, ("brow_l", "brow_r"), _mix(brow, skin, 0.08))

    # Hair cap and strands.
    if "hair_cap" in q:
        if t["hair_style"] == "buzz":                  # short hair: skin shows through
            fill(img, ("hair_cap",), _mix(hair, skin, 0.4))
        else:
            fill(img, ("hair_cap",), hair)
        if "hair_strands" in q and scale > 40.0:       # strands only where they are thin
            cv2.polylines(img, list(q["hair_strands"].reshape(-1, 3, 2)), False,
                          _scale(hair, 0.82 if sum(hair) > 150 else 1.6), 1, _AA, _SHIFT)

    # Lighting: the head is shaded by an ellipsoid model, the background keeps its own.
    k = max(32, res // 4) / res
    m_low = np.concatenate([a * k, ((m[:, 2] + 0.5) * k - 0.5)[:, None]], 1)
    q_low = bank.split(_to_fixed(bank.transform(v["yaw"], m_low)))
    shade = cv2.resize(_shading(res, m, t, v, q_low), (res, res),
                       interpolation=cv2.INTER_LINEAR)
    shade -= 1.0                                        # shade = 1 + head * (shade - 1)
    shade *= head.astype(np.float32)
    shade *= 1.0 / 255.0
    shade += 1.0
    shade8 = cv2.convertScaleAbs(shade, alpha=128.0)    # fixed point, 128 = 1 (shade > 0)
    shade8 = cv2.multiply(cv2.cvtColor(shade8, cv2.COLOR_GRAY2RGB), (*v["tint"], 0.0))
    img = cv2.multiply(img, shade8, scale=1.0 / 128.0)  # light colour tints the scene

    # Glasses sit in front: drawn after shading.
    if "glass_l" in q:
        col = t["glasses_colour"]
        if t["glasses_tint"] > 0.0:
            _blend_fill(img, [p["glass_l"], p["glass_r"]], [q["glass_l"], q["glass_r"]],
                        _scale(col, 0.6), t["glasses_tint"])
        lines(("glass_l", "glass_r"), col, px(0.022), closed=True)
        lines(("glass_bridge", "temple_l", "temple_r"), col, px(0.02))

    return img, pts[lm_idx].astype(np.float32)


# --------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------

class SyntheticFaces:
    """Procedurally rendered faces with exact 68-point landmarks and identity labels.

    ``identity = index // images_per_identity``. Picklable (plain attributes only).
    """

    def __init__(self, seed: int = 0, num_records: int = 10000, resolution: int = 256,
                 images_per_identity: int = 8, name: str = "synthetic") -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if int(num_records) < 1:
            raise ValueError(f"num_records must be >= 1, got {num_records}")
        if not MIN_RESOLUTION <= int(resolution) <= MAX_RESOLUTION:
            raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], "
                             f"got {resolution}")
        if int(images_per_identity) < 1:
            raise ValueError(f"images_per_identity must be >= 1, got {images_per_identity}")
        self.seed = int(seed)
        self.num_records = int(num_records)
        self.resolution = int(resolution)
        self.images_per_identity = int(images_per_identity)
        self.name = str(name)
        self.has_identities = True

    def __len__(self) -> int:
        return self.num_records

    @property
    def num_identities(self) -> int:
        return -(-self.num_records // self.images_per_identity)

    def identity_indices(self, identity: int) -> np.ndarray:
        """Record indices of ``identity`` (empty when it has no records)."""
        identity = int(identity)
        if not 0 <= identity < self.num_identities:
            return np.zeros((0,), np.int64)
        start = identity * self.images_per_identity
        return np.arange(start, min(start + self.images_per_identity, self.num_records),
                         dtype=np.int64)

    def identity_traits(self, identity: int) -> dict[str, Any]:
        """The fixed traits every image of ``identity`` is drawn with."""
        return identity_traits(self.seed, int(identity))

    def __getitem__(self, index: int) -> Record:
        i = operator.index(index)
        if i < 0:
            i += self.num_records
        if not 0 <= i < self.num_records:
            raise IndexError(f"index {index} out of range for {self.num_records} records")
        identity = i // self.images_per_identity
        image, landmarks = render_face(self.seed, i, identity, self.resolution)
        return {
            "image": image, "landmarks": landmarks, "landmark_source": "synthetic",
            "identity": np.int64(identity), "index": i,
            "key": f"synthetic/{self.seed}/{i}", "error": "",
        }

    def __repr__(self) -> str:
        return (f"SyntheticFaces(seed={self.seed}, num_records={self.num_records}, "
                f"resolution={self.resolution}, "
                f"images_per_identity={self.images_per_identity}, name={self.name!r})")
