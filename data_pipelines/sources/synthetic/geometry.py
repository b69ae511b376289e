"""Canonical face geometry: every point set of one face, with depths, and its landmarks.

Everything is built in a canonical face frame (x right, y down; cheek half-width ~1, eyes at
y ~ -0.2, chin at y ~ 1.1). A small yaw moves each point by ``z * sin(yaw)`` (``z`` = depth
on a rounded head), which squeezes the far side of the face. One similarity transform
(roll, scale, shift) then maps every point to pixels (:meth:`_Bank.transform`), so drawing
and landmarks agree exactly.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

_DEPTH = 0.8                    # depth of the head's front surface (yaw model)

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
