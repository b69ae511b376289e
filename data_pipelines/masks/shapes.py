"""Mask outlines and decoration geometry in template space.

Every mask type lives in one canonical template frame: the surgical template of the tool
(620 x 518 px) with anchors a (21,97), b (307,22), c (600,99), d (25,322), e (295,470),
f (600,323). Outlines are defined relative to those anchors (constant data, built once at
import); the renderer warps them onto the face with the least-squares homography that maps
the template anchors [a,b,c,f,e,d] to the face anchors.

* surgical: the hexagon a-b-c-f-e-d with a convex top edge (apex near (307,13)), straight
  sides (widest 22..600 at y 253) and a rounded chin bottom near y 504;
* cloth: the same hexagon-matching outline, a little fuller, with a pointed nose top;
* n95: a cup oval around the anchors (a, c, d, f ~25 px inside, top 20 px above b,
  bottom ~45 px below e) -- follows the tool's current masks.cfg, where the N95 anchors
  sit near the outline, rather than the 60 px the fact sheet reads off an older template;
* kn95: broad top peaked at the nose, sides down to d/f, then a V chin whose tip reaches
  ~45 px below e; a vertical centre seam;
* gas: a rounded half-face piece plus two cartridge ellipses that extend ~150 px beyond a
  and c.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.masks.config import MASK_TYPES

#: Canonical template anchors a..f (x, y), the tool's surgical template.
TEMPLATE_ANCHORS: np.ndarray = np.array(
    [[21.0, 97.0], [307.0, 22.0], [600.0, 99.0],
     [25.0, 322.0], [295.0, 470.0], [600.0, 323.0]])
TEMPLATE_ANCHORS.setflags(write=False)
TEMPLATE_SIZE: tuple[int, int] = (518, 620)  # (height, width)
#: Horizontal centre line of the template (mid of a and c).
CENTRE_U: float = 310.5


def quad_bezier(p0, p1, p2, n: int) -> np.ndarray:
    """n points of the quadratic Bezier p0 -> p2 with control p1 (both ends included)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def bezier_through(p0, mid, p2, n: int) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 passing through ``mid`` at t = 0.5."""
    p0, mid, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, mid, p2))
    return quad_bezier(p0, 2 * mid - (p0 + p2) / 2, p2, n)


def catmull_rom(points, n_per_segment: int, closed: bool) -> np.ndarray:
    """Centripetal-free (uniform) Catmull-Rom spline through ``points`` (K, 2)."""
    pts = np.asarray(points, dtype=np.float64)
    if closed:
        ext = np.concatenate([pts[-1:], pts, pts[:2]])
        n_seg = len(pts)
    else:
        ext = np.concatenate([2 * pts[:1] - pts[1:2], pts, 2 * pts[-1:] - pts[-2:-1]])
        n_seg = len(pts) - 1
    t = np.linspace(0.0, 1.0, n_per_segment, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    out = []
    for i in range(n_seg):
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
    if not closed:
        out.append(pts[-1:])
    return np.concatenate(out)


def _mirror(points) -> np.ndarray:
    """Mirror (x, y) points about the template centre line, reversing their order."""
    pts = np.asarray(points, dtype=np.float64)[::-1].copy()
    pts[:, 0] = 2 * CENTRE_U - pts[:, 0]
    return pts


def _symmetric_closed(right_half) -> np.ndarray:
    """A closed control polygon from its right half (top centre -> bottom centre)."""
    right = np.asarray(right_half, dtype=np.float64)
    left = _mirror(right[1:-1])
    return np.concatenate([right, left])


def _surgical_outline() -> np.ndarray:
    a, c = (21.0, 97.0), (600.0, 99.0)
    top = bezier_through(a, (307.0, 13.0), c, 24)
    right = np.array([[601.0, 150.0], [601.0, 253.0], [600.0, 323.0]])
    bottom = catmull_rom([[600.0, 323.0], [575.0, 405.0], [480.0, 474.0], [310.0, 504.0],
                          [140.0, 474.0], [46.0, 405.0], [25.0, 322.0]], 6, closed=False)
    left = np.array([[22.0, 253.0], [21.5, 150.0]])
    return np.concatenate([top, right, bottom[1:], left])


def _cloth_outline() -> np.ndarray:
    half = [[310.5, 4.0], [420.0, 28.0], [545.0, 70.0], [612.0, 105.0], [618.0, 215.0],
            [610.0, 330.0], [560.0, 430.0], [450.0, 490.0], [310.5, 512.0]]
    return catmull_rom(_symmetric_closed(half), 5, closed=True)


def _n95_outline() -> np.ndarray:
    half = [[310.5, 2.0], [450.0, 22.0], [570.0, 72.0], [625.0, 160.0], [630.0, 265.0],
            [610.0, 365.0], [540.0, 460.0], [430.0, 510.0], [310.5, 518.0]]
    return catmull_rom(_symmetric_closed(half), 5, closed=True)


KN95_CHIN_TIP: tuple[float, float] = (307.0, 516.0)


def _kn95_outline() -> np.ndarray:
    # Broad top peaked at the nose, straight-ish sides, V chin (sharp tip at the bottom).
    top_right = bezier_through((307.0, 2.0), (460.0, 40.0), (612.0, 75.0), 10)
    side = np.array([[616.0, 200.0], [608.0, 330.0]])
    chin_right = bezier_through((608.0, 330.0), (470.0, 445.0), KN95_CHIN_TIP, 10)
    right = np.concatenate([top_right, side, chin_right[1:]])
    left = _mirror(right)
    left[:, 0] -= 2 * CENTRE_U - 2 * 307.0  # mirror about x = 307 (the seam), not 310.5
    return np.concatenate([right, left[1:-1]])


def _gas_outlines() -> list[np.ndarray]:
    half = [[310.5, -10.0], [430.0, 12.0], [548.0, 80.0], [612.0, 180.0], [605.0, 320.0],
            [545.0, 430.0], [430.0, 505.0], [310.5, 528.0]]
    face = catmull_rom(_symmetric_closed(half), 5, closed=True)
    return [face, ellipse_points(GAS_CARTRIDGES[0]), ellipse_points(GAS_CARTRIDGES[1])]


#: Gas-mask cartridges: ((cx, cy), (semi-axis x, semi-axis y), angle_deg).
GAS_CARTRIDGES: tuple[tuple, tuple] = (
    ((-20.0, 340.0), (125.0, 150.0), -12.0),
    ((641.0, 340.0), (125.0, 150.0), 12.0),
)
#: Gas-mask exhalation valve: centre and radius.
GAS_VALVE: tuple[tuple[float, float], float] = ((310.5, 395.0), 62.0)


def ellipse_points(ellipse: tuple, n: int = 40) -> np.ndarray:
    (cx, cy), (rx, ry), angle = ellipse
    th = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    rot = np.deg2rad(angle)
    x, y = rx * np.cos(th), ry * np.sin(th)
    return np.stack([cx + x * np.cos(rot) - y * np.sin(rot),
                     cy + x * np.sin(rot) + y * np.cos(rot)], axis=1)


def _build_outlines() -> dict[str, tuple[np.ndarray, ...]]:
    outlines = {
        "surgical": (_surgical_outline(),),
        "cloth": (_cloth_outline(),),
        "n95": (_n95_outline(),),
        "kn95": (_kn95_outline(),),
        "gas": tuple(_gas_outlines()),
    }
    assert set(outlines) == set(MASK_TYPES)
    for polys in outlines.values():
        for p in polys:
            p.setflags(write=False)
    return outlines


#: Outline polygons (template space) per mask type; the mask body is their union.
OUTLINES: dict[str, tuple[np.ndarray, ...]] = _build_outlines()


#: All outline points of each type in one (N, 2) array.
ALL_OUTLINE_POINTS: dict[str, np.ndarray] = {
    t: np.concatenate(polys) for t, polys in OUTLINES.items()}


def outline_bbox(mask_type: str) -> tuple[float, float, float, float]:
    pts = np.concatenate(OUTLINES[mask_type])
    return (float(pts[:, 0].min()), float(pts[:, 1].min()),
            float(pts[:, 0].max()), float(pts[:, 1].max()))


def pleat_curves(n_pleats: int, n_points: int = 16) -> list[np.ndarray]:
    """Surgical pleat fold lines (template space): curves spanning the mask width, bowed
    like the top edge near the top and flatter lower down."""
    if n_pleats <= 0:
        return []
    u = np.linspace(-20.0, 640.0, n_points)
    x = (u - CENTRE_U) / 290.0
    curves = []
    for i in range(n_pleats):
        frac = (i + 1) / (n_pleats + 1)
        base = 70.0 + frac * 330.0     # fold height at the centre
        bow = 70.0 * (1.0 - frac)      # how much lower the ends sit
        curves.append(np.stack([u, base + bow * x * x], axis=1))
    return curves


def vertical_seam(top_y: float, bottom_y: float, x: float = CENTRE_U, bulge: float = 0.0,
                  n: int = 12) -> np.ndarray:
    """A near-vertical seam (template space) from (x, top_y) to (x, bottom_y)."""
    return bezier_through((x, top_y), (x + bulge, (top_y + bottom_y) / 2), (x, bottom_y), n)
