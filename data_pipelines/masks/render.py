"""Renders a procedural mask onto a face image and returns the binary mask map.

Steps (all outside-the-ROI pixels are untouched):

1. anchors a..f from the 68 landmarks (``anchors.mask_anchors``), b moved by
   ``bridge_frac``, a/c/d/f spread by ``width_scale`` about the b-e axis;
2. homography template -> face: least squares (``cv2.findHomography``, method 0) from the
   template anchors [a,b,c,f,e,d] to the face anchors; when it is degenerate or folds the
   mask over the horizon, a least-squares affine map instead;
3. outline polygons warped as point sets and rasterised at image resolution with
   anti-aliasing (``cv2.fillPoly`` LINE_AA, 1/16 px vertices) inside the mask's bounding
   box (ROI) only -> coverage alpha; ear loops (when ``params.straps``) likewise;
4. appearance painted in template space (``paint.paint_mask``) and warped into the ROI;
   brightness matched to the face (tool: V scaled by 1 + (V_face - V_mask) / 255);
5. alpha compositing; the mask map is every pixel with alpha > 0 (body or ear loop), and
   the output equals the input exactly wherever the map is 0.
"""
from __future__ import annotations

import cv2
import numpy as np

from data_pipelines.masks import anchors as anchors_mod
from data_pipelines.masks import paint, shapes
from data_pipelines.masks.config import MaskParams, MaskSynthesisConfig, sample_mask_params

_SHIFT = 4
_ONE = 1 << _SHIFT
_ROI_PAD = 2
#: Vertices further than this (pixels) from the ROI origin mean a degenerate warp; such a
#: mask is skipped (empty map) rather than risking fixed-point overflow in cv2 drawing.
_MAX_COORD = 16384.0


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    return np.ascontiguousarray(img)


def spread_anchors(anchors: np.ndarray, width_scale: float) -> np.ndarray:
    """Move a, c, d, f away from (scale > 1) or towards the line through b and e."""
    out = np.asarray(anchors, dtype=np.float64).copy()
    if width_scale == 1.0:
        return out
    b, e = out[1], out[4]
    axis = e - b
    norm = float(np.hypot(*axis))
    if norm < 1e-9:
        return out
    axis /= norm
    for i in (0, 2, 3, 5):
        proj = b + float((out[i] - b) @ axis) * axis
        out[i] = proj + width_scale * (out[i] - proj)
    return out


def _affine_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    design = np.concatenate([src, np.ones((len(src), 1))], axis=1)
    sol, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return np.concatenate([sol.T, [[0.0, 0.0, 1.0]]], axis=0)


def anchor_homography(face_anchors: np.ndarray, mask_type: str) -> np.ndarray:
    """3x3 template -> image map for ``mask_type`` (least-squares homography, or a
    least-squares affine map when the homography is unusable on the mask's outline)."""
    order = list(anchors_mod.HOMOGRAPHY_ORDER)
    src = shapes.TEMPLATE_ANCHORS[order].astype(np.float64)
    dst = np.asarray(face_anchors, dtype=np.float64)[order]
    hom = None
    try:
        hom, _ = cv2.findHomography(src, dst, 0)
    except cv2.error:
        hom = None
    if hom is not None and np.all(np.isfinite(hom)):
        pts = shapes.ALL_OUTLINE_POINTS[mask_type]
        w = pts @ hom[2, :2] + hom[2, 2]
        # Same side of the horizon everywhere and only mild perspective.
        if np.all(w > 0) or np.all(w < 0):
            wa = np.abs(w)
            if wa.max() < 3.0 * wa.min():
                return hom
    return _affine_lstsq(src, dst)


def _warp_points(hom: np.ndarray, pts: np.ndarray) -> np.ndarray:
    homog = pts @ hom[:, :2].T + hom[:, 2]
    return homog[:, :2] / homog[:, 2:3]


def _poly_area(pts: np.ndarray) -> float:
    return abs(float(cv2.contourArea(pts.astype(np.float32))))


def strap_curves(face_anchors: np.ndarray, landmarks68: np.ndarray) -> list[np.ndarray]:
    """Ear loops (image space): from a and d towards the image-left ear, from c and f
    towards the image-right ear; each a quadratic curve."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    geo = anchors_mod.eye_geometry(lm)
    face_width = float(np.hypot(*(lm[16] - lm[0])))
    nose = max(abs(geo["nose_length"]), 0.05 * face_width)
    curves = []
    for top, bottom, jaw_i, out_sign in ((0, 3, 0, -1.0), (2, 5, 16, 1.0)):
        outward = out_sign * geo["eye_dir"]
        ear = lm[jaw_i] + outward * 0.07 * face_width + geo["down"] * 0.35 * nose
        a = face_anchors[top]
        d = face_anchors[bottom]
        ctrl_top = (a + ear) / 2 - geo["down"] * 0.12 * face_width
        ctrl_bottom = (d + ear) / 2 + outward * 0.05 * face_width
        curves.append(shapes.quad_bezier(a, ctrl_top, ear, 10))
        curves.append(shapes.quad_bezier(d, ctrl_bottom, ear, 10))
    return curves


def _strap_colour(params: MaskParams) -> np.ndarray:
    if params.mask_type == "surgical":
        return np.array([236.0, 236.0, 236.0], np.float32)
    return np.asarray(params.colour, np.float32) * 0.85


def _value_channel(rgb: np.ndarray) -> np.ndarray:
    """HSV V = max(R, G, B) (split + max: much faster than numpy's .max(axis=2))."""
    r, g, b = cv2.split(rgb)
    return cv2.max(cv2.max(r, g), b)


def _face_mean_v(image: np.ndarray, landmarks68: np.ndarray, roi: tuple[int, int, int, int],
                 roi_map: np.ndarray) -> float | None:
    """Mean V over the convex hull of the landmarks minus the mask map."""
    h, w = image.shape[:2]
    lm = np.asarray(landmarks68, dtype=np.float64)
    fx0 = max(0, int(np.floor(lm[:, 0].min())))
    fy0 = max(0, int(np.floor(lm[:, 1].min())))
    fx1 = min(w, int(np.ceil(lm[:, 0].max())) + 1)
    fy1 = min(h, int(np.ceil(lm[:, 1].max())) + 1)
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    hull = cv2.convexHull(np.round((lm - (fx0, fy0)) * _ONE).astype(np.int32))
    inside = np.zeros((fy1 - fy0, fx1 - fx0), np.uint8)
    cv2.fillConvexPoly(inside, hull, 1, cv2.LINE_8, _SHIFT)
    rx0, ry0, rx1, ry1 = roi
    ox0, oy0 = max(fx0, rx0), max(fy0, ry0)
    ox1, oy1 = min(fx1, rx1), min(fy1, ry1)
    if ox1 > ox0 and oy1 > oy0:
        sub = inside[oy0 - fy0:oy1 - fy0, ox0 - fx0:ox1 - fx0]
        sub[roi_map[oy0 - ry0:oy1 - ry0, ox0 - rx0:ox1 - rx0] > 0] = 0
    step = max(1, max(inside.shape) // 80)       # a strided estimate is plenty
    inside = np.ascontiguousarray(inside[::step, ::step])
    if cv2.countNonZero(inside) == 0:
        return None
    face = image[fy0:fy1:step, fx0:fx1:step]
    value = np.maximum(np.maximum(face[..., 0], face[..., 1]), face[..., 2])
    return float(cv2.mean(value, mask=inside)[0])


def render_mask(image: np.ndarray, landmarks68: np.ndarray, params: MaskParams
                ) -> tuple[np.ndarray, np.ndarray]:
    """Draw mask ``params`` on ``image`` (uint8 (H, W, 3) RGB) at ``landmarks68`` (float
    (68, 2) x, y pixels). Returns (masked uint8 (H, W, 3), mask_map uint8 (H, W) in {0, 1}).

    ``masked`` equals ``image`` exactly wherever ``mask_map`` is 0. A pure function of its
    arguments (pattern randomness comes from ``params.texture_seed``)."""
    img = _check_image(image)
    lm = anchors_mod.check_landmarks(landmarks68)
    h, w = img.shape[:2]
    masked = img.copy()
    mask_map = np.zeros((h, w), np.uint8)

    face_anchors = anchors_mod.mask_anchors(lm, params.bridge_frac)
    face_anchors = spread_anchors(face_anchors, params.width_scale)
    hom = anchor_homography(face_anchors, params.mask_type)
    polys = [_warp_points(hom, p) for p in shapes.OUTLINES[params.mask_type]]
    straps = strap_curves(face_anchors, lm) if params.straps else []

    every = np.concatenate(polys + straps)
    if not np.all(np.isfinite(every)):
        return masked, mask_map
    rx0 = max(0, int(np.floor(every[:, 0].min())) - _ROI_PAD)
    ry0 = max(0, int(np.floor(every[:, 1].min())) - _ROI_PAD)
    rx1 = min(w, int(np.ceil(every[:, 0].max())) + _ROI_PAD + 1)
    ry1 = min(h, int(np.ceil(every[:, 1].max())) + _ROI_PAD + 1)
    if rx1 <= rx0 or ry1 <= ry0:
        return masked, mask_map
    rw, rh = rx1 - rx0, ry1 - ry0
    offset = np.array([rx0, ry0], np.float64)

    if np.abs(every - offset).max() > _MAX_COORD:
        return masked, mask_map
    body = np.zeros((rh, rw), np.uint8)
    for poly in polys:
        fixed = np.round((poly - offset) * _ONE).astype(np.int32)
        cv2.fillPoly(body, [fixed], 255, cv2.LINE_AA, _SHIFT)
    strap = None
    if straps:
        strap = np.zeros((rh, rw), np.uint8)
        face_width = float(np.hypot(*(lm[16] - lm[0])))
        thick = max(1, int(round(0.012 * face_width)))
        curves = [np.round((c - offset) * _ONE).astype(np.int32) for c in straps]
        cv2.polylines(strap, curves, False, 255, thick, cv2.LINE_AA, _SHIFT)
    roi_map = (body > 0).view(np.uint8)
    if strap is not None:
        roi_map |= (strap > 0).view(np.uint8)
    if not cv2.countNonZero(roi_map):
        return masked, mask_map

    # Appearance: paint in template space at about the output scale, warp into the ROI.
    tmpl_area = _poly_area(shapes.OUTLINES[params.mask_type][0])
    img_area = _poly_area(polys[0])
    scale = float(np.clip(np.sqrt(img_area / max(tmpl_area, 1e-9)), 0.02, 4.0))
    far_side = 0
    if anchors_mod.face_tilt(lm, params.tilt_threshold_deg) != "frontal":
        # The far half of a turned face is foreshortened: shorter a-b than b-c or v.v.
        left = np.hypot(*(face_anchors[1] - face_anchors[0]))
        right = np.hypot(*(face_anchors[2] - face_anchors[1]))
        far_side = -1 if left < right else 1
    canvas, origin, cscale = paint.paint_mask(params, scale, far_side)
    to_template = np.array([[1.0 / cscale, 0.0, origin[0]], [0.0, 1.0 / cscale, origin[1]],
                            [0.0, 0.0, 1.0]])
    shift = np.array([[1.0, 0.0, -rx0], [0.0, 1.0, -ry0], [0.0, 0.0, 1.0]])
    canvas_to_roi = shift @ hom @ to_template
    canvas8 = cv2.convertScaleAbs(canvas)  # round + saturate (values are >= 0)
    colour8 = cv2.warpPerspective(canvas8, canvas_to_roi, (rw, rh), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)

    src = img[ry0:ry1, rx0:rx1]
    strap_rgb = _strap_colour(params)
    gain = 1.0
    if params.match_brightness:
        solid = (body > 127).view(np.uint8)
        if cv2.countNonZero(solid):
            mask_v = cv2.mean(_value_channel(colour8), mask=solid)[0]
            face_v = _face_mean_v(img, lm, (rx0, ry0, rx1, ry1), roi_map)
            if face_v is not None:
                gain = 1.0 + (face_v - mask_v) / 255.0
    if gain != 1.0:  # scale V (= all channels: H and S are unchanged by scaling RGB)
        colour8 = cv2.convertScaleAbs(colour8, alpha=max(gain, 0.0))
    strap_rgb = np.clip(np.rint(strap_rgb * max(gain, 0.0)), 0, 255)

    # Alpha compositing: blendLinear computes (w1 * a + w2 * b) / (w1 + w2); where alpha is
    # 0 it returns src. The map-0 pixels are copied back from src anyway, so the output
    # equals the input exactly outside the map whatever the rounding.
    out = src
    if strap is not None:
        sa = strap.astype(np.float32) * np.float32(1.0 / 255.0)
        strap_img = paint.solid(src.shape[:2], strap_rgb)
        out = cv2.blendLinear(strap_img, out, sa, 1.0 - sa)
    ba = body.astype(np.float32) * np.float32(1.0 / 255.0)
    out = cv2.blendLinear(colour8, out, ba, 1.0 - ba)
    cv2.copyTo(src, (roi_map == 0).view(np.uint8), out)
    masked[ry0:ry1, rx0:rx1] = out
    mask_map[ry0:ry1, rx0:rx1] = roi_map
    return masked, mask_map


def synthesize_mask(image: np.ndarray, landmarks68: np.ndarray, rng: np.random.Generator,
                    cfg: MaskSynthesisConfig | None = None
                    ) -> tuple[np.ndarray, np.ndarray, MaskParams]:
    """Sample MaskParams from ``rng`` and render them: (masked, mask_map, params)."""
    params = sample_mask_params(rng, cfg or MaskSynthesisConfig())
    masked, mask_map = render_mask(image, landmarks68, params)
    return masked, mask_map, params
