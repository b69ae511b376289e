"""The six MaskTheFace anchors (a..f) and the face-tilt class, from 68 landmarks.

Pure functions of a (68, 2) float array of (x, y) pixel landmarks (iBUG/dlib convention),
following shared/specs/mask_synthesis.md:

* b = midpoint of landmarks 27 and 30 (``bridge_frac`` moves it along 27->30; 0.5 = spec);
* a, c = first and last jaw intersections of the eye line shifted down by nose_length
  (nose_length = y30 - y27); fallbacks: an ellipse fitted to the jaw, then jaw points 0/16;
* d, f = first and last jaw intersections of the eye line shifted down by
  (max bottom-lip y - eye-midpoint y); same fallbacks, the last one jaw points 5/11
  (the tool has no fallback there; jaw points 5/11 sit at about lip level);
* e = average of the first jaw intersections of (i) the perpendicular to the eye line
  through eye-midpoint + (0, nose_length/2) and (ii) the line from landmark 27 to the
  bottom-lip centroid; whichever exists if only one does; landmark 8 if neither does.

"First" and "last" are along the line's direction: left eye -> right eye for the shifted
eye lines, downwards for the two lines that give e.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

ANCHOR_NAMES: tuple[str, ...] = ("a", "b", "c", "d", "e", "f")
#: Bottom-lip landmark indices (spec: {54..59, 48, 64..67, 60}).
BOTTOM_LIP: tuple[int, ...] = (54, 55, 56, 57, 58, 59, 48, 64, 65, 66, 67, 60)
_BOTTOM_LIP_IDX = np.array(BOTTOM_LIP)
#: Order in which anchors enter the homography (spec: template [a,b,c,f,e,d] -> face).
HOMOGRAPHY_ORDER: tuple[int, ...] = (0, 1, 2, 5, 4, 3)
#: Tilt threshold in degrees (spec: below -13 -> "right", above +13 -> "left").
TILT_THRESHOLD_DEG: float = 13.0

_JAW = slice(0, 17)


def check_landmarks(landmarks68: np.ndarray) -> np.ndarray:
    """Validate (68, 2) finite landmarks; returns them as float64."""
    pts = np.asarray(landmarks68, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"landmarks68 must have shape (68, 2), got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("landmarks68 contains non-finite values")
    return pts


def line_polyline_intersections(p0: np.ndarray, direction: np.ndarray,
                                polyline: np.ndarray) -> np.ndarray:
    """Intersections of the infinite line ``p0 + t * direction`` with an open polyline
    (N, 2); returns (K, 2) points sorted by ``t`` (ascending), duplicates at shared
    vertices removed."""
    p0 = np.asarray(p0, dtype=np.float64)
    direction = np.asarray(direction, dtype=np.float64)
    return _batched_line_hits(p0[None], direction[None],
                              np.asarray(polyline, dtype=np.float64))[0]


def _batched_line_hits(p0s: np.ndarray, dirs: np.ndarray, polyline: np.ndarray
                       ) -> list[np.ndarray]:
    """``line_polyline_intersections`` for L lines at once: a list of L (K, 2) arrays."""
    starts = polyline[:-1]
    seg = polyline[1:] - starts                                    # (S, 2)
    dx, dy = dirs[:, 0:1], dirs[:, 1:2]                            # (L, 1)
    denom = dx * seg[:, 1] - dy * seg[:, 0]                        # (L, S)
    rx = starts[:, 0] - p0s[:, 0:1]
    ry = starts[:, 1] - p0s[:, 1:2]
    s_num = rx * dy - ry * dx
    ok = (np.abs(denom) > 1e-12) & (s_num * denom >= 0.0) & (np.abs(s_num) <= np.abs(denom))
    safe = np.where(ok, denom, 1.0)
    t_all = (rx * seg[:, 1] - ry * seg[:, 0]) / safe
    out = []
    for i in range(len(p0s)):
        t = np.sort(t_all[i][ok[i]])
        if t.size > 1:
            scale = max(1e-9, abs(float(dirs[i, 0])), abs(float(dirs[i, 1])))
            t = t[np.concatenate(([True], np.diff(t) * scale > 1e-7))]
        out.append(p0s[i][None, :] + t[:, None] * dirs[i][None, :])
    return out


def line_ellipse_intersections(p0: np.ndarray, direction: np.ndarray,
                               ellipse: tuple) -> np.ndarray:
    """Intersections (0 or 2 points, sorted by t) of a line with a cv2 RotatedRect
    ellipse ((cx, cy), (w, h), angle_deg)."""
    (cx, cy), (w, h), angle = ellipse
    if w <= 0 or h <= 0:
        return np.zeros((0, 2))
    th = math.radians(angle)
    rot = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])
    q0 = rot @ (p0 - np.array([cx, cy]))
    qd = rot @ direction
    ax, ay = w / 2.0, h / 2.0
    qa = (qd[0] / ax) ** 2 + (qd[1] / ay) ** 2
    qb = 2 * (q0[0] * qd[0] / ax ** 2 + q0[1] * qd[1] / ay ** 2)
    qc = (q0[0] / ax) ** 2 + (q0[1] / ay) ** 2 - 1.0
    disc = qb * qb - 4 * qa * qc
    if qa <= 0 or disc <= 0:
        return np.zeros((0, 2))
    root = math.sqrt(disc)
    ts = np.array([(-qb - root) / (2 * qa), (-qb + root) / (2 * qa)])
    return p0[None, :] + ts[:, None] * direction[None, :]


def _jaw_ellipse(jaw: np.ndarray) -> tuple | None:
    try:
        ellipse = cv2.fitEllipse(jaw.astype(np.float32))
    except cv2.error:
        return None
    (_, _), (w, h), _ = ellipse
    if not (np.isfinite(w) and np.isfinite(h)) or w <= 0 or h <= 0:
        return None
    return ellipse


def _side_pair(hits: np.ndarray, p0: np.ndarray, direction: np.ndarray, jaw: np.ndarray,
               ellipse_cache: list, fallback: tuple[int, int]
               ) -> tuple[np.ndarray, np.ndarray, str]:
    """First and last intersection with the jaw (``hits``), else with the fitted ellipse,
    else the two fallback jaw points. Returns (first, last, which)."""
    if len(hits) >= 2:
        return hits[0], hits[-1], "jaw"
    if not ellipse_cache:
        ellipse_cache.append(_jaw_ellipse(jaw))
    ellipse = ellipse_cache[0]
    if ellipse is not None:
        pts = line_ellipse_intersections(p0, direction, ellipse)
        if len(pts) >= 2:
            return pts[0], pts[-1], "ellipse"
    return jaw[fallback[0]].copy(), jaw[fallback[1]].copy(), "jaw_points"


def _first_ahead(hits: np.ndarray, p0: np.ndarray, direction: np.ndarray) -> np.ndarray | None:
    """The first hit at or beyond ``p0`` along ``direction`` (else the last one)."""
    if len(hits) == 0:
        return None
    t = (hits - p0) @ direction
    ahead = hits[t >= 0]
    return ahead[0] if len(ahead) else hits[-1]


def eye_geometry(landmarks68: np.ndarray) -> dict[str, np.ndarray | float]:
    """Eye centres, eye midpoint, unit eye direction (left -> right), unit downward
    normal, nose_length and the bottom-lip points."""
    pts = check_landmarks(landmarks68)
    left = pts[36:42].sum(axis=0) / 6.0
    right = pts[42:48].sum(axis=0) / 6.0
    eye_vec = right - left
    norm = math.hypot(eye_vec[0], eye_vec[1])
    eye_dir = eye_vec / norm if norm > 1e-9 else np.array([1.0, 0.0])
    down = np.array([-eye_dir[1], eye_dir[0]])  # eye_dir rotated +90deg: points down
    return {
        "left_eye": left, "right_eye": right, "eye_mid": (left + right) / 2.0,
        "eye_dir": eye_dir, "down": down,
        "nose_length": float(pts[30, 1] - pts[27, 1]),
        "bottom_lip": pts[_BOTTOM_LIP_IDX],
    }


def mask_anchors(landmarks68: np.ndarray, bridge_frac: float = 0.5,
                 return_info: bool = False):
    """The six anchors a..f as a float64 (6, 2) array in ``ANCHOR_NAMES`` order.

    ``bridge_frac`` places b along 27 -> 30 (0.5 = the spec's midpoint; larger = lower
    mask top). With ``return_info`` also returns a dict saying which construction gave
    each anchor pair ("jaw", "ellipse", "jaw_points", "mean", "single", "landmark8").
    """
    pts = check_landmarks(landmarks68)
    geo = eye_geometry(pts)
    jaw = pts[_JAW]
    eye_dir = geo["eye_dir"]
    ellipse_cache: list = []
    info: dict[str, str] = {}

    # The four construction lines (spec): a/c, d/f, and the two lines that give e.
    lip_shift = float(geo["bottom_lip"][:, 1].max() - geo["eye_mid"][1])
    lip_centroid = geo["bottom_lip"].mean(axis=0)
    chin_dir = lip_centroid - pts[27]
    chin_norm = math.hypot(chin_dir[0], chin_dir[1])
    chin_dir = chin_dir / chin_norm if chin_norm > 1e-9 else geo["down"]
    p0s = np.stack([
        geo["left_eye"] + (0.0, geo["nose_length"]),        # eye line shifted by nose_length
        geo["left_eye"] + (0.0, lip_shift),                 # ... by bottom-lip depth
        geo["eye_mid"] + (0.0, geo["nose_length"] / 2.0),   # perpendicular start
        pts[27],                                            # 27 -> bottom-lip centroid
    ])
    dirs = np.stack([eye_dir, eye_dir, geo["down"], chin_dir])
    hits = _batched_line_hits(p0s, dirs, jaw)
    a, c, info["ac"] = _side_pair(hits[0], p0s[0], eye_dir, jaw, ellipse_cache, (0, 16))
    d, f, info["df"] = _side_pair(hits[1], p0s[1], eye_dir, jaw, ellipse_cache, (5, 11))
    e1 = _first_ahead(hits[2], p0s[2], dirs[2])
    e2 = _first_ahead(hits[3], p0s[3], dirs[3]) if chin_norm > 1e-9 else None
    if e1 is not None and e2 is not None:
        e, info["e"] = (e1 + e2) / 2.0, "mean"
    elif e1 is not None or e2 is not None:
        e, info["e"] = (e1 if e1 is not None else e2), "single"
    else:
        e, info["e"] = pts[8].copy(), "landmark8"
    b = pts[27] + float(bridge_frac) * (pts[30] - pts[27])
    anchors = np.stack([a, b, c, d, e, f])
    return (anchors, info) if return_info else anchors


def _angle_0_180(vec: np.ndarray) -> float:
    return math.degrees(math.atan2(vec[1], vec[0])) % 180.0


def face_tilt_angle(landmarks68: np.ndarray) -> float:
    """angle(27->30) - angle(27->bottom-lip centroid), each in [0, 180) degrees; the
    difference is wrapped into [-90, 90) so that lines near the 0/180 seam (a face rotated
    by ~90 degrees in the image plane) do not read as a huge tilt."""
    pts = check_landmarks(landmarks68)
    lip_centroid = pts[_BOTTOM_LIP_IDX].mean(axis=0)
    diff = _angle_0_180(pts[30] - pts[27]) - _angle_0_180(lip_centroid - pts[27])
    return (diff + 90.0) % 180.0 - 90.0


def face_tilt(landmarks68: np.ndarray, threshold_deg: float = TILT_THRESHOLD_DEG) -> str:
    """"right" below -threshold, "left" above +threshold, else "frontal" (spec)."""
    angle = face_tilt_angle(landmarks68)
    if angle < -threshold_deg:
        return "right"
    if angle > threshold_deg:
        return "left"
    return "frontal"
