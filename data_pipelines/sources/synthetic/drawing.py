"""Drawing primitives of the synthetic renderer: alpha-blended fills, the eye, the
background. All coordinates in pixels; ``q`` holds the same points in fixed point
(``_SHIFT`` sub-pixel bits, as cv2's ``shift`` argument)."""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from data_pipelines.sources.synthetic.colours import _hsv, _mix, _scale
from data_pipelines.sources.synthetic.traits import _pick, _u

_SHIFT = 4                      # sub-pixel bits for cv2 drawing
_ONE = float(1 << _SHIFT)
_AA = cv2.LINE_AA


def _to_fixed(p: np.ndarray) -> np.ndarray:
    return np.rint(p * _ONE).astype(np.int32)


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
