"""Head shading: a wrapped-Lambert ellipsoid lit by the view's light, times soft occlusion,
computed at low resolution."""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from data_pipelines.sources.synthetic.drawing import _ONE, _SHIFT
from data_pipelines.sources.synthetic.geometry import _DEPTH


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
