"""``render_face``: one synthetic face from its traits, view, geometry, drawing and shading.

Pose: one similarity transform maps the canonical frame to pixels. Landmark pixel
convention: pixel ``(row i, column j)`` has its centre at ``x = j, y = i`` (OpenCV / dlib).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from data_pipelines.sources.synthetic.colours import _mix, _scale
from data_pipelines.sources.synthetic.drawing import (
    _AA, _ONE, _SHIFT, _background, _blend_fill, _draw_eye, _to_fixed)
from data_pipelines.sources.synthetic.geometry import _build, _ellipse
from data_pipelines.sources.synthetic.shading import _shading
from data_pipelines.sources.synthetic.traits import (
    _STREAM_IMAGE, _rng, _view_params, identity_traits)


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
