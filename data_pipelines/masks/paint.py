"""Paints a mask's appearance on a small canvas in template space.

The canvas is the template frame scaled by ``s`` (about the size the mask will have in the
image), so every detail is drawn once at roughly output resolution and then warped onto the
face with the same homography as the outline. As in MaskTheFace, the appearance is

    addWeighted(template, 1 - w, colour, w)

where ``template`` is a grey "structure" image (pleats, seams, rims, valve, cartridges
drawn as grey levels) and ``colour`` is the colour layer (a plain colour, a procedural
fabric pattern, or coloured parts such as gas cartridges); the result is then multiplied
by a smooth shading field (cylinder across the face, darker towards the chin, darker on
the far side of a turned face).
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from data_pipelines.masks import shapes
from data_pipelines.masks.config import MaskParams

_SHIFT = 4                   # fractional bits for cv2 drawing
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA
_PAD = 8.0                   # template units around the outline bbox
MAX_CANVAS_SIDE = 1024


def _luma(colour) -> float:
    r, g, b = colour
    return 0.299 * r + 0.587 * g + 0.114 * b


REL_ONE = 128                # structure layers store factor * REL_ONE (1.0 = base level)


def quantise_scale(scale: float) -> float:
    """Canvas scales are quantised to steps of 2**(1/8) so structure layers can be cached;
    the warp uses the quantised scale, so this only changes detail resolution (< 5%)."""
    scale = float(np.clip(scale, 1e-3, 16.0))
    return float(2.0 ** (round(8.0 * math.log2(scale)) / 8.0))


class Canvas:
    """Template-space drawing geometry at scale ``s``: canvas size, origin, and drawing
    helpers that take template coordinates and draw on a given layer."""

    def __init__(self, mask_type: str, scale: float):
        x0, y0, x1, y1 = shapes.outline_bbox(mask_type)
        self.origin = (x0 - _PAD, y0 - _PAD)
        span = max(x1 - x0, y1 - y0) + 2 * _PAD
        self.scale = float(min(scale, MAX_CANVAS_SIDE / span))
        self.width = int(math.ceil((x1 - x0 + 2 * _PAD) * self.scale)) + 1
        self.height = int(math.ceil((y1 - y0 + 2 * _PAD) * self.scale)) + 1

    # Coordinates ------------------------------------------------------------------
    def px(self, pts) -> np.ndarray:
        """Template points -> fixed-point canvas pixel coordinates (int32, shift 4)."""
        pts = np.asarray(pts, dtype=np.float64)
        return np.round((pts - self.origin) * self.scale * _ONE).astype(np.int32)

    def t(self, length: float, minimum: int = 1) -> int:
        """A template-space length (line thickness) in whole canvas pixels."""
        return max(minimum, int(round(length * self.scale)))

    # Drawing ----------------------------------------------------------------------
    def line(self, layer: np.ndarray, pts, value, thickness: float, closed: bool = False
             ) -> None:
        cv2.polylines(layer, [self.px(pts)], closed, value, self.t(thickness), _AA, _SHIFT)

    def fill(self, layer: np.ndarray, pts, value) -> None:
        cv2.fillPoly(layer, [self.px(pts)], value, _AA, _SHIFT)

    def circle(self, layer: np.ndarray, centre, radius: float, value, thickness: float = -1
               ) -> None:
        c = self.px(np.asarray(centre)[None])[0]
        r = int(round(radius * self.scale * _ONE))
        th = -1 if thickness < 0 else self.t(thickness)
        cv2.circle(layer, (int(c[0]), int(c[1])), max(r, 1), value, th, _AA, _SHIFT)

    def ellipse(self, layer: np.ndarray, ell: tuple, value, thickness: float = -1) -> None:
        (cx, cy), (rx, ry), angle = ell
        c = self.px(np.array([[cx, cy]]))[0]
        axes = (max(1, int(round(rx * self.scale * _ONE))),
                max(1, int(round(ry * self.scale * _ONE))))
        th = -1 if thickness < 0 else self.t(thickness)
        cv2.ellipse(layer, (int(c[0]), int(c[1])), axes, angle, 0, 360, value, th, _AA, _SHIFT)


def rel(factor: float) -> int:
    """A structure factor (1.0 = the base level) as a stored uint8 value."""
    return int(np.clip(round(factor * REL_ONE), 0, 255))


# ---------------------------------------------------------------------------------------
# Fabric patterns (colour layer), built in canvas pixels. Each returns uint8 (h, w, 3).
# Repeating motifs are drawn once into a small periodic tile and tiled (fast); numpy
# broadcasting over the trailing RGB axis is avoided (slow), planes are merged with cv2.
# ---------------------------------------------------------------------------------------


def solid(shape: tuple[int, int], colour) -> np.ndarray:
    """A uint8 (h, w, 3) image of one colour."""
    return cv2.merge([np.full(shape, int(c), np.uint8) for c in colour])


def _mix(t: np.ndarray, c1, c2) -> np.ndarray:
    """Per-pixel c1 + t * (c2 - c1), t float32 (h, w) in [0, 1] -> uint8 (h, w, 3)."""
    return cv2.merge([cv2.convertScaleAbs(t, alpha=float(b) - float(a), beta=float(a))
                      for a, b in zip(c1, c2)])


def _layer(base: np.ndarray, coverage: np.ndarray, colour) -> np.ndarray:
    """Paint ``colour`` over ``base`` (uint8 (h, w, 3)) with uint8 coverage (h, w)."""
    t = coverage.astype(np.float32) * np.float32(1.0 / 255.0)
    planes = [cv2.convertScaleAbs(plane.astype(np.float32) * (1.0 - t) + t * float(c))
              for plane, c in zip(cv2.split(base), colour)]
    return cv2.merge(planes)


def _tile_to(tile: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
             offset: tuple[int, int] | None = None) -> np.ndarray:
    """Repeat ``tile`` over ``shape`` starting at ``offset`` (random phase if None)."""
    th, tw = tile.shape[:2]
    oy, ox = offset if offset is not None else (int(rng.integers(th)), int(rng.integers(tw)))
    reps = ((shape[0] + oy) // th + 1, (shape[1] + ox) // tw + 1)
    return np.tile(tile, reps)[oy:oy + shape[0], ox:ox + shape[1]]


def _fold(big: np.ndarray, n: int) -> np.ndarray:
    """Fold an (n*T, n*T) drawing onto one periodic (T, T) tile (max over the blocks)."""
    t = big.shape[0] // n
    return big.reshape(n, t, n, t).max(axis=(0, 2))


def _stripes(shape, p: MaskParams, period: float, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    th = math.radians(p.texture_angle + (90.0 if rng.random() < 0.3 else 0.0))
    d = np.add.outer(np.arange(h, dtype=np.float32) * np.float32(math.sin(th)),
                     np.arange(w, dtype=np.float32) * np.float32(math.cos(th)))
    d += np.float32(rng.uniform(0, period))
    half = np.float32(period * rng.uniform(0.12, 0.25))
    dist = np.abs(np.mod(d, np.float32(period)) - np.float32(period / 2))
    t = np.clip(half - dist + np.float32(0.5), 0.0, 1.0)  # anti-aliased stripe coverage
    return _mix(t, p.colour, p.colour2)


def _checks(shape, p: MaskParams, period: float, rng: np.random.Generator) -> np.ndarray:
    half = max(1.0, period / 2.0)
    xs = ((np.arange(shape[1]) + rng.integers(64)) // half % 2).astype(np.float32)
    ys = ((np.arange(shape[0]) + rng.integers(64)) // half % 2).astype(np.float32)
    level = np.add.outer(ys, xs) * np.float32(0.5)  # gingham: 0, 0.5, 1
    return _mix(level, p.colour, p.colour2)


def _dots(shape, p: MaskParams, period: float, rng: np.random.Generator) -> np.ndarray:
    pi = max(3, int(round(period)))
    tile = np.zeros((2 * pi, pi), np.uint8)
    r = int(round(max(1.0, pi * rng.uniform(0.2, 0.3)) * _ONE))
    for cx, cy in ((pi / 2, pi / 2), (0.0, 1.5 * pi), (float(pi), 1.5 * pi)):
        cv2.circle(tile, (int(cx * _ONE), int(cy * _ONE)), r, 255, -1, _AA, _SHIFT)
    cover = _tile_to(tile, shape, rng).astype(np.float32) * np.float32(1.0 / 255.0)
    return _mix(cover, p.colour, p.colour2)


def _smooth_noise(shape: tuple[int, int], cell: float, rng: np.random.Generator) -> np.ndarray:
    gh = max(2, int(round(shape[0] / max(cell, 1.0))) + 2)
    gw = max(2, int(round(shape[1] / max(cell, 1.0))) + 2)
    grid = rng.random((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _noise(shape, p: MaskParams, period: float, rng: np.random.Generator) -> np.ndarray:
    # Heather / melange: a soft mix of the two colours.
    field = (0.65 * _smooth_noise(shape, period * 0.6, rng)
             + 0.35 * _smooth_noise(shape, period * 0.15, rng))
    return _mix(np.clip((field - 0.2) / 0.6, 0.0, 1.0), p.colour, p.colour2)


def _camo(shape, p: MaskParams, period: float, rng: np.random.Generator) -> np.ndarray:
    field = (0.7 * _smooth_noise(shape, period * 0.9, rng)
             + 0.3 * _smooth_noise(shape, period * 0.3, rng))
    levels = (field > 0.58).astype(np.uint8) + (field > 0.38).astype(np.uint8)  # 0, 1, 2
    c1, c2 = np.asarray(p.colour, np.float32), np.asarray(p.colour2, np.float32)
    dark = 0.35 * (c1 + c2)
    lut = np.stack([dark, c1, c2]).astype(np.uint8)  # level -> colour
    return cv2.merge([lut[:, k][levels] for k in range(3)])


def _floral(shape, p: MaskParams, period: float, rng: np.random.Generator) -> np.ndarray:
    t = max(6, int(round(2.5 * period)))
    leaves, petals, centres = (np.zeros((3 * t, 3 * t), np.uint8) for _ in range(3))
    petal_r = max(1.0, period * 0.28)
    for _ in range(3):  # three flowers per 2x2-period tile
        cx, cy = t + rng.uniform(0, t), t + rng.uniform(0, t)
        rot = rng.uniform(0, 2 * math.pi)
        size = petal_r * rng.uniform(0.75, 1.25)
        lx, ly = cx + 1.6 * size * math.cos(rot), cy + 1.6 * size * math.sin(rot)
        cv2.ellipse(leaves, (int(lx * _ONE), int(ly * _ONE)),
                    (max(1, int(size * 1.1 * _ONE)), max(1, int(size * 0.5 * _ONE))),
                    math.degrees(rot), 0, 360, 255, -1, _AA, _SHIFT)
        for k in range(5):
            ang = rot + k * 2 * math.pi / 5
            cv2.circle(petals, (int((cx + size * math.cos(ang)) * _ONE),
                                int((cy + size * math.sin(ang)) * _ONE)),
                       max(1, int(size * 0.75 * _ONE)), 255, -1, _AA, _SHIFT)
        cv2.circle(centres, (int(cx * _ONE), int(cy * _ONE)), max(1, int(size * 0.45 * _ONE)),
                   255, -1, _AA, _SHIFT)
    offset = (int(rng.integers(t)), int(rng.integers(t)))  # one phase for all layers
    layers = [_tile_to(_fold(layer, 3), shape, rng, offset) for layer in (leaves, petals, centres)]
    leaf_colour = tuple(int(0.5 * a + 0.5 * b) for a, b in zip((60, 130, 70), p.colour))
    centre_colour = (240, 215, 80) if _luma(p.colour2) < 200 else (200, 60, 80)
    out = solid(shape, p.colour)
    for layer, colour in zip(layers, (leaf_colour, p.colour2, centre_colour)):
        out = _layer(out, layer, colour)
    return out


def _zigzag(shape, p: MaskParams, period: float, rng: np.random.Generator) -> np.ndarray:
    pw = max(4, int(round(period)))
    ph = max(4, int(round(period * 0.8)))
    amp = ph * rng.uniform(0.15, 0.28)
    thick = max(1, int(round(period * 0.15)))
    xs = np.arange(-pw, 2 * pw + 1, pw / 2.0)
    ys = ph / 2 + np.where(np.arange(len(xs)) % 2 == 0, -amp, amp)
    tile = np.zeros((ph, pw), np.uint8)
    cv2.polylines(tile, [np.round(np.stack([xs, ys], 1) * _ONE).astype(np.int32)], False, 255,
                  thick, _AA, _SHIFT)
    cover = _tile_to(tile, shape, rng).astype(np.float32) * np.float32(1.0 / 255.0)
    return _mix(cover, p.colour, p.colour2)


PATTERNS = {
    "stripes": _stripes, "checks": _checks, "dots": _dots, "noise": _noise,
    "floral": _floral, "zigzag": _zigzag, "camo": _camo,
}


# ---------------------------------------------------------------------------------------
# Per-type structure ("template" grey levels, relative to the base level) -- cached.
# ---------------------------------------------------------------------------------------


def _shrink(pts: np.ndarray, factor: float) -> np.ndarray:
    centre = pts.mean(axis=0)
    return centre + factor * (pts - centre)


def _surgical(cv: Canvas, st: np.ndarray, pleats: int, seam: bool, valve_side: int) -> None:
    for curve in shapes.pleat_curves(pleats):
        cv.line(st, curve + (0, 9), rel(0.86), 14)            # soft shadow under the fold
        cv.line(st, curve - (0, 10), rel(1.07), 16)           # lit upper face of the pleat
        cv.line(st, curve, rel(0.7), 4)                       # the fold itself
    outline = shapes.OUTLINES["surgical"][0]
    cv.line(st, outline, rel(1.05), 34, closed=True)          # bound edge (half inside)
    cv.line(st, _shrink(outline, 0.955), rel(0.86), 2.5, closed=True)  # stitching
    nose = shapes.bezier_through((150, 58), (307, 36), (465, 58), 10)
    cv.line(st, nose, rel(0.9), 7)                            # nose wire


def _cloth(cv: Canvas, st: np.ndarray, pleats: int, seam: bool, valve_side: int) -> None:
    outline = shapes.OUTLINES["cloth"][0]
    cv.line(st, outline, rel(0.85), 26, closed=True)          # hem
    cv.line(st, _shrink(outline, 0.95), rel(0.8), 2.5, closed=True)
    if seam:
        line = shapes.vertical_seam(8.0, 508.0, bulge=4.0)
        cv.line(st, line + (5, 0), rel(1.1), 7)
        cv.line(st, line, rel(0.62), 4)


def n95_valve_centre(valve_side: int) -> tuple[float, float]:
    return (shapes.CENTRE_U + valve_side * 150.0, 300.0)


def _n95(cv: Canvas, st: np.ndarray, pleats: int, seam: bool, valve_side: int) -> None:
    outline = shapes.OUTLINES["n95"][0]
    cv.line(st, outline, rel(0.82), 40, closed=True)          # moulded rim
    cv.line(st, _shrink(outline, 0.93), rel(1.06), 6, closed=True)
    clip = shapes.bezier_through((250, 44), (310, 34), (371, 44), 8)
    cv.line(st, clip, rel(0.84), 9)                           # metal nose clip
    if valve_side:
        centre = n95_valve_centre(valve_side)
        cv.circle(st, centre, 78, rel(0.55))                  # shadow ring
        cv.circle(st, centre, 72, rel(1.0))
        cv.circle(st, centre, 72, rel(0.7), thickness=9)
        cv.circle(st, centre, 44, rel(0.82), thickness=6)
        for dy in (-24, -8, 8, 24):
            half = math.sqrt(max(0.0, 40.0 ** 2 - dy ** 2))
            cv.line(st, [(centre[0] - half, centre[1] + dy), (centre[0] + half, centre[1] + dy)],
                    rel(0.6), 5)


def _kn95(cv: Canvas, st: np.ndarray, pleats: int, seam: bool, valve_side: int) -> None:
    outline = shapes.OUTLINES["kn95"][0]
    cv.line(st, outline, rel(0.9), 44, closed=True)           # heat-sealed border
    ring = _shrink(outline, 0.955)
    step = max(1, len(ring) // 36)
    for pt in ring[::step]:
        cv.circle(st, pt, 3.5, rel(0.78))                     # seal dots
    line = np.array([[307.0, 6.0], [307.0, shapes.KN95_CHIN_TIP[1] - 4]])
    cv.line(st, line + (6, 0), rel(1.08), 8)
    cv.line(st, line, rel(0.68), 5)                           # centre seam
    for corner in ((45.0, 105.0), (576.0, 105.0), (48.0, 318.0), (570.0, 318.0)):
        cv.circle(st, corner, 11, rel(0.82))                  # ear-loop welds


def _gas(cv: Canvas, st: np.ndarray, pleats: int, seam: bool, valve_side: int) -> None:
    face = shapes.OUTLINES["gas"][0]
    cv.line(st, face, rel(1.5), 18, closed=True)              # rubber lip
    cv.line(st, _shrink(face, 0.8), rel(1.3), 10, closed=True)
    for ell in shapes.GAS_CARTRIDGES:
        (cx, cy), (rx, ry), ang = ell
        cv.ellipse(st, ell, rel(0.6))                         # backing
        cv.ellipse(st, ((cx, cy), (rx * 0.92, ry * 0.92), ang), rel(1.0))
        cv.ellipse(st, ((cx, cy), (rx * 0.92, ry * 0.92), ang), rel(1.5), thickness=10)
        cv.ellipse(st, ((cx, cy), (rx * 0.55, ry * 0.55), ang), rel(0.75), thickness=8)
        cv.circle(st, (cx, cy), 18, rel(0.6))
    (vx, vy), vr = shapes.GAS_VALVE
    cv.circle(st, (vx, vy), vr + 6, rel(1.6), thickness=8)
    cv.circle(st, (vx, vy), vr, rel(0.75))
    for dy in (-30, -15, 0, 15, 30):
        half = math.sqrt(max(0.0, (vr - 12) ** 2 - dy ** 2))
        cv.line(st, [(vx - half, vy + dy), (vx + half, vy + dy)], rel(0.4), 6)


_STRUCTURE = {"surgical": _surgical, "cloth": _cloth, "n95": _n95, "kn95": _kn95, "gas": _gas}
#: Types whose structure shows a fold along the nose ridge on a turned face.
_RIDGE_TYPES = ("surgical", "cloth")


@functools.lru_cache(maxsize=256)
def structure_factors(mask_type: str, scale_q: float, pleats: int = 0, seam: bool = False,
                      valve_side: int = 0, far_side: int = 0) -> np.ndarray:
    """The structure layer as float32 factors (1.0 = base level), (h, w) of the canvas
    ``Canvas(mask_type, scale_q)``. Pure and cached (read-only result)."""
    cv = Canvas(mask_type, scale_q)
    st = np.full((cv.height, cv.width), REL_ONE, np.uint8)
    _STRUCTURE[mask_type](cv, st, pleats, seam, valve_side)
    if far_side != 0 and mask_type in _RIDGE_TYPES:
        ridge = shapes.vertical_seam(30.0, 480.0, bulge=-far_side * 12.0)
        cv.line(st, ridge, rel(0.85), 12)
    out = st.astype(np.float32) * (1.0 / REL_ONE)
    out.setflags(write=False)
    return out


def _has_colour_parts(p: MaskParams) -> bool:
    return (p.mask_type == "n95" and p.valve) or p.mask_type == "gas"


def _colour_parts(cv: Canvas, col: np.ndarray, p: MaskParams) -> None:
    """Parts with their own colour: the N95 valve, the gas cartridges."""
    if p.mask_type == "n95" and p.valve:
        valve_colour = tuple(int(v) for v in (np.asarray(p.colour2) * 0.6
                                              + np.asarray(p.colour) * 0.4))
        cv.circle(col, n95_valve_centre(p.valve_side), 72, valve_colour)
    elif p.mask_type == "gas":
        cartridge = tuple(int(v) for v in p.colour2)
        for (cx, cy), (rx, ry), ang in shapes.GAS_CARTRIDGES:
            cv.ellipse(col, ((cx, cy), (rx * 0.92, ry * 0.92), ang), cartridge)


def _shading_profiles(cv: Canvas, p: MaskParams, far_side: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Smooth multiplicative shading as two 1-D float32 profiles (rows, columns): a
    cylinder across the face (stronger on the far side of a turned face), darker towards
    the chin and slightly at the top edge. The shading field is their outer product."""
    us = cv.origin[0] + np.arange(cv.width, dtype=np.float32) / np.float32(cv.scale)
    vs = cv.origin[1] + np.arange(cv.height, dtype=np.float32) / np.float32(cv.scale)
    x = (us - np.float32(shapes.CENTRE_U)) / np.float32(300.0)
    k = np.float32(p.shading * (1.6 if p.mask_type in ("n95", "gas") else 1.0))
    if far_side != 0:
        side_gain = np.where(np.sign(x) == far_side, 1.8, 0.7).astype(np.float32)
    else:
        side_gain = np.float32(1.0)
    shade_u = 1.0 - k * side_gain * np.minimum(np.abs(x), 1.3) ** 2
    y = (vs - np.float32(250.0)) / np.float32(260.0)
    shade_v = 1.0 - 0.6 * k * np.clip(y, 0.0, 1.2) ** 2 - 0.15 * k * np.clip(-y, 0.0, 1.0)
    return (np.clip(shade_v, 0.3, 1.0).astype(np.float32),
            np.clip(shade_u, 0.3, 1.0).astype(np.float32))


def base_level(p: MaskParams) -> float:
    """Grey level of the structure ("template") layer: white for surgical masks (the
    tool's white template), the colour's luma for the others."""
    if p.mask_type == "surgical":
        base = 232.0
    elif p.texture != "plain":
        base = 0.5 * (_luma(p.colour) + _luma(p.colour2))
    else:
        base = _luma(p.colour)
    return float(np.clip(base, 25.0, 240.0))


def paint_mask(p: MaskParams, scale: float, far_side: int = 0
               ) -> tuple[np.ndarray, tuple[float, float], float]:
    """Paint mask ``p`` at about template scale ``scale``. Returns (canvas float32
    (h, w, 3) RGB 0-255, template origin (u0, v0) of canvas pixel (0, 0), the canvas
    scale actually used). ``far_side`` (-1 image-left, +1 image-right, 0 frontal) darkens
    the far half of a turned face and adds a fold along the nose ridge."""
    cv = Canvas(p.mask_type, quantise_scale(scale))
    factors = structure_factors(
        p.mask_type, cv.scale,
        pleats=p.pleats if p.mask_type == "surgical" else 0,
        seam=bool(p.seam) if p.mask_type == "cloth" else False,
        valve_side=int(np.sign(p.valve_side)) if (p.mask_type == "n95" and p.valve) else 0,
        far_side=far_side if p.mask_type in _RIDGE_TYPES else 0)
    shade_v, shade_u = _shading_profiles(cv, p, far_side)
    shade = np.outer(shade_v, shade_u)
    w = float(p.blend_weight)
    # addWeighted(template, 1 - w, colour, w), then shading:
    #   out = (w * colour + (1 - w) * base * factors) * shade
    grey = factors * shade
    grey *= np.float32(base_level(p) * (1.0 - w))
    shade *= np.float32(w)
    # Per-channel planes + cv2.merge: numpy broadcasting over a trailing axis of 3 is slow.
    if p.texture == "plain" and not _has_colour_parts(p):
        planes = [cv2.scaleAdd(shade, float(c), grey) for c in p.colour]
    else:
        shape = (cv.height, cv.width)
        if p.texture != "plain":
            period = max(60.0 * p.texture_scale * cv.scale, 2.0)
            col = PATTERNS[p.texture](shape, p, period, np.random.default_rng(p.texture_seed))
        else:
            col = solid(shape, p.colour)
        _colour_parts(cv, col, p)
        planes = [cv2.multiply(c, shade, dtype=cv2.CV_32F) + grey for c in cv2.split(col)]
    out = cv2.merge(planes)
    return out, cv.origin, cv.scale
