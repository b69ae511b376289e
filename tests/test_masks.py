"""Tests for data_pipelines.masks: anchors, tilt, config, sampling and rendering."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from data_pipelines.landmarks.template import MEAN_FACE_68, MIRROR_INDEX, template_landmarks
from data_pipelines.masks import (
    MASK_TYPES,
    TEXTURES,
    MaskParams,
    MaskSynthesisConfig,
    example_rng,
    face_tilt,
    face_tilt_angle,
    mask_anchors,
    render_mask,
    sample_mask_params,
    synthesize_mask,
)
from data_pipelines.masks import anchors as anchors_mod
from data_pipelines.masks import paint

# ---------------------------------------------------------------------------------------
# Synthetic faces.
# ---------------------------------------------------------------------------------------


def _rotate(lm: np.ndarray, degrees: float, scale: float = 1.0, shift=(0.0, 0.0)) -> np.ndarray:
    th = np.deg2rad(degrees)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    centre = lm.mean(axis=0)
    return ((lm - centre) @ rot.T * scale + centre + np.asarray(shift)).astype(np.float32)


def _yawed(lm: np.ndarray, mirror: bool = False) -> np.ndarray:
    """A crude turned face: one half compressed, the midline features pushed sideways."""
    y = lm.astype(np.float64).copy()
    mid = y[27, 0]
    width = y[16, 0] - y[0, 0]
    right = y[:, 0] > mid
    y[right, 0] = mid + (y[right, 0] - mid) * 0.6
    y[~right, 0] = mid + (y[~right, 0] - mid) * 1.1
    for i in list(range(27, 36)) + list(range(48, 68)):
        y[i, 0] += width * 0.12 * (1 - abs(y[i, 0] - mid) / width)
    y[27:31, 0] += np.array([0.0, 0.04, 0.08, 0.12]) * width
    if mirror:  # flip x and relabel left <-> right so the iBUG convention still holds
        y[:, 0] = 2 * mid - y[:, 0]
        y = y[MIRROR_INDEX]
    return y.astype(np.float32)


def _faces(size: int) -> dict[str, np.ndarray]:
    base = template_landmarks(size, size)
    return {
        "frontal": base,
        "rotated": _rotate(base, 15.0, 0.85, (3.0, 5.0)),
        "rotated_neg_small": _rotate(base, -25.0, 0.7),
        "yaw_right": _yawed(base),
        "yaw_left": _yawed(base, mirror=True),
    }


def _face_image(size: int, lm: np.ndarray, seed: int = 0) -> np.ndarray:
    """Gradient + noise background, a skin ellipse, and the landmarks drawn in."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.stack([80 + 100 * xx, 100 + 80 * yy, 150 - 60 * xx], axis=-1)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    hull = cv2.convexHull(np.round(lm).astype(np.int32))
    cv2.fillConvexPoly(img, hull, (205, 160, 135), cv2.LINE_AA)
    pts = np.round(lm).astype(np.int32)
    cv2.polylines(img, [pts[36:42], pts[42:48], pts[48:60]], True, (60, 30, 30), 1)
    cv2.polylines(img, [pts[17:22], pts[22:27], pts[27:31]], False, (60, 40, 30), 1)
    return img


def _face_box(lm: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = lm.min(axis=0)
    x1, y1 = lm.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def _all_type_cfg(**kw) -> MaskSynthesisConfig:
    return MaskSynthesisConfig(type_probs=(1, 1, 1, 1, 1), **kw)


# ---------------------------------------------------------------------------------------
# Anchors and tilt.
# ---------------------------------------------------------------------------------------


def _dist_to_polyline(p: np.ndarray, poly: np.ndarray) -> float:
    a, b = poly[:-1], poly[1:]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(1) / (ab * ab).sum(1), 0, 1)
    return float(np.min(np.linalg.norm(a + t[:, None] * ab - p, axis=1)))


def test_anchors_on_the_template_face():
    lm = MEAN_FACE_68.astype(np.float64) * 200.0 + 20.0
    anchors, info = mask_anchors(lm, return_info=True)
    a, b, c, d, e, f = anchors
    assert info == {"ac": "jaw", "df": "jaw", "e": "mean"}
    # b: midpoint of 27 and 30.
    np.testing.assert_allclose(b, (lm[27] + lm[30]) / 2, atol=1e-9)
    assert lm[27, 1] < b[1] < lm[30, 1]
    # a, c, d, f, e lie on the jaw; a left of c, d left of f.
    jaw = lm[0:17]
    for p in (a, c, d, f, e):
        assert _dist_to_polyline(p, jaw) < 1e-6
    assert a[0] < b[0] < c[0] and d[0] < e[0] < f[0]
    # a/c at the height of the eyes + nose_length, d/f at the lowest bottom-lip point.
    eye_y = (lm[36:42, 1].mean() + lm[42:48, 1].mean()) / 2
    nose_length = lm[30, 1] - lm[27, 1]
    np.testing.assert_allclose([a[1], c[1]], eye_y + nose_length, atol=1e-9)
    lip_y = lm[list(anchors_mod.BOTTOM_LIP), 1].max()
    np.testing.assert_allclose([d[1], f[1]], lip_y, atol=1e-9)
    # e near the chin (landmark 8), symmetric face -> on the midline.
    face_h = lm[8, 1] - lm[27, 1]
    assert np.linalg.norm(e - lm[8]) < 0.05 * face_h
    np.testing.assert_allclose(e[0], lm[8, 0], atol=1e-6)
    # Symmetry: a/c and d/f mirror each other about the midline.
    np.testing.assert_allclose(a[0] + c[0], 2 * lm[27, 0], atol=1e-6)
    np.testing.assert_allclose(d[0] + f[0], 2 * lm[27, 0], atol=1e-6)


def test_anchors_follow_a_similarity_transform():
    lm = MEAN_FACE_68.astype(np.float64) * 150.0
    th = np.deg2rad(20.0)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = lm @ rot.T * 1.3 + (40.0, 25.0)
    # nose_length is vertical only (spec), so only a/c/d/f depend on the rotation in a
    # non-equivariant way; b is always the 27-30 midpoint and all anchors stay on the jaw.
    anchors = mask_anchors(moved)
    np.testing.assert_allclose(anchors[1], (moved[27] + moved[30]) / 2, atol=1e-9)
    for i in (0, 2, 3, 4, 5):
        assert _dist_to_polyline(anchors[i], moved[0:17]) < 1e-6


def test_bridge_frac_moves_b():
    lm = MEAN_FACE_68.astype(np.float64) * 100.0
    low = mask_anchors(lm, bridge_frac=0.8)[1]
    np.testing.assert_allclose(low, lm[27] + 0.8 * (lm[30] - lm[27]))


def test_anchor_fallbacks():
    lm = MEAN_FACE_68.astype(np.float64) * 100.0
    # Jaw starting below the a/c line: the line misses the polyline -> fitted ellipse.
    short = lm.copy()
    short[0:17, 1] = lm[8, 1] - (lm[8, 1] - lm[0:17, 1]) * 0.35
    anchors, info = mask_anchors(short, return_info=True)
    assert info["ac"] == "ellipse"
    assert anchors[0][0] < anchors[1][0] < anchors[2][0]
    # Degenerate jaw (all points equal): no intersection, no ellipse -> jaw points 0/16,
    # 5/11 and landmark 8.
    flat = lm.copy()
    flat[0:17] = lm[8]
    anchors, info = mask_anchors(flat, return_info=True)
    assert info["ac"] == "jaw_points" and info["df"] == "jaw_points"
    assert info["e"] == "landmark8"
    np.testing.assert_allclose(anchors[[0, 2, 3, 4, 5]], np.repeat(lm[8][None], 5, 0))


def test_tilt_classification():
    faces = _faces(256)
    assert face_tilt(faces["frontal"]) == "frontal"
    # In-plane rotation keeps the nose and lip lines parallel: still frontal.
    assert face_tilt(faces["rotated"]) == "frontal"
    assert face_tilt(_rotate(faces["frontal"], 90.0)) == "frontal"
    assert abs(face_tilt_angle(_rotate(faces["frontal"], 90.0))) < 1e-3
    # A turned face: nose tip pushed sideways relative to the lip line.
    assert face_tilt_angle(faces["yaw_right"]) < -13.0
    assert face_tilt(faces["yaw_right"]) == "right"
    assert face_tilt(faces["yaw_left"]) == "left"
    np.testing.assert_allclose(face_tilt_angle(faces["yaw_left"]),
                               -face_tilt_angle(faces["yaw_right"]), atol=1e-4)


def test_anchors_reject_bad_landmarks():
    with pytest.raises(ValueError, match="68, 2"):
        mask_anchors(np.zeros((5, 2)))
    bad = MEAN_FACE_68.astype(np.float64).copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        mask_anchors(bad)


# ---------------------------------------------------------------------------------------
# Config and sampling.
# ---------------------------------------------------------------------------------------


def test_config_from_dict():
    cfg = MaskSynthesisConfig.from_dict({
        "types": ["surgical", "n95"], "type_probs": [3, 1], "straps_prob": 0.0,
        "blend_weight_range": [0.5, 0.5]})
    assert cfg.types == ("surgical", "n95") and cfg.type_probs == (3, 1)
    assert cfg.blend_weight_range == (0.5, 0.5)
    assert MaskSynthesisConfig.from_dict({}) == MaskSynthesisConfig()
    assert MaskSynthesisConfig.from_dict(cfg.to_dict()) == cfg
    # Default probabilities follow the chosen types.
    assert MaskSynthesisConfig(types=("cloth",)).resolved_type_probs() == (1.0,)
    with pytest.raises(ValueError, match="unknown MaskSynthesisConfig key.*colour_jiter"):
        MaskSynthesisConfig.from_dict({"colour_jiter": 3})
    with pytest.raises(ValueError, match="types"):
        MaskSynthesisConfig.from_dict({"types": ["surgical", "bandana"]})
    with pytest.raises(ValueError, match="type_probs"):
        MaskSynthesisConfig.from_dict({"types": ["surgical", "n95"], "type_probs": [1.0]})
    with pytest.raises(ValueError, match="blend_weight_range"):
        MaskSynthesisConfig(blend_weight_range=(0.7, 0.3))
    with pytest.raises(ValueError, match="mask_type"):
        MaskParams(mask_type="bandana")


def test_sampling_is_deterministic_and_varied():
    cfg = _all_type_cfg()
    a = [sample_mask_params(example_rng(7, i), cfg) for i in range(200)]
    b = [sample_mask_params(example_rng(7, i), cfg) for i in range(200)]
    assert a == b
    assert sample_mask_params(example_rng(7, 0, epoch=1), cfg) != a[0]
    assert {p.mask_type for p in a} == set(MASK_TYPES)
    textures = {p.texture for p in a if p.mask_type == "cloth"}
    assert len(textures) >= 5
    assert all(p.texture == "plain" for p in a if p.mask_type != "cloth")
    assert any(p.valve for p in a) and any(p.straps for p in a)
    assert not any(p.straps for p in a if p.mask_type == "gas")
    assert len({p.pleats for p in a}) == 3
    assert all(0.35 - 1e-9 <= p.bridge_frac <= 0.65 + 1e-9 for p in a)
    assert all(0.95 - 1e-9 <= p.width_scale <= 1.05 + 1e-9 for p in a)
    # Type probabilities are honoured.
    only = MaskSynthesisConfig(types=("surgical", "gas"), type_probs=(1.0, 0.0))
    assert all(sample_mask_params(example_rng(1, i), only).mask_type == "surgical"
               for i in range(50))


def test_no_straps_unless_they_are_in_the_map():
    cfg = MaskSynthesisConfig(straps_prob=1.0, straps_in_map=False)
    assert not any(sample_mask_params(example_rng(0, i), cfg).straps for i in range(50))


# ---------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_type", MASK_TYPES)
def test_every_type_renders_in_place(mask_type):
    size = 160
    for name, lm in _faces(size).items():
        img = _face_image(size, lm)
        cfg = MaskSynthesisConfig(types=(mask_type,), straps_prob=0.0)
        masked, mask_map, params = synthesize_mask(img, lm, example_rng(3, 0), cfg)
        assert params.mask_type == mask_type
        assert masked.shape == img.shape and masked.dtype == np.uint8
        assert mask_map.shape == img.shape[:2] and mask_map.dtype == np.uint8
        assert set(np.unique(mask_map)) == {0, 1}
        x0, y0, x1, y1 = _face_box(lm)
        frac = mask_map.sum() / ((x1 - x0) * (y1 - y0))
        # MaskTheFace geometry covers mid-nose to below the chin across the jaw: about half
        # the tight landmark box; the gas mask's cartridges stick out beyond the face.
        hi = 0.85 if mask_type == "gas" else 0.65
        assert 0.08 < frac < hi, (name, frac)
        # Placement: centroid below the eye line and above the chin, along the face's own
        # downward axis.
        geo = anchors_mod.eye_geometry(lm)
        ys, xs = np.nonzero(mask_map)
        centroid = np.array([xs.mean(), ys.mean()])
        depth = (centroid - geo["eye_mid"]) @ geo["down"]
        chin = (lm[8] - geo["eye_mid"]) @ geo["down"]
        assert 0 < depth < chin, (name, depth, chin)
        # The mask actually changed the pixels it claims.
        assert np.mean(np.any(masked != img, axis=2)[mask_map == 1]) > 0.5


def test_surgical_covers_mouth_and_nose_tip():
    size = 192
    for name, lm in _faces(size).items():
        img = _face_image(size, lm)
        for seed in range(5):
            cfg = MaskSynthesisConfig(types=("surgical",))
            _, mask_map, _ = synthesize_mask(img, lm, example_rng(seed, 1), cfg)
            pts = np.round(lm[[30, *range(48, 68)]]).astype(int)
            assert np.all(mask_map[pts[:, 1], pts[:, 0]] == 1), (name, seed)
            # Eyes stay uncovered.
            eyes = np.round(lm[36:48]).astype(int)
            assert np.all(mask_map[eyes[:, 1], eyes[:, 0]] == 0), (name, seed)


def test_source_unchanged_outside_the_map():
    rng = np.random.default_rng(0)
    cfg = _all_type_cfg(straps_prob=0.5)
    for size in (96, 128, 200):
        faces = list(_faces(size).values())
        # Faces partly outside the image.
        faces.append(_rotate(faces[0], 0.0, 1.3, (size * 0.3, -size * 0.2)))
        faces.append(_rotate(faces[0], 30.0, 0.5, (-size * 0.45, size * 0.4)))
        for fi, lm in enumerate(faces):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for k in range(12):
                masked, mask_map, params = synthesize_mask(img, lm, example_rng(size, fi * 100 + k),
                                                           cfg)
                assert set(np.unique(mask_map)) <= {0, 1}
                outside = mask_map == 0
                np.testing.assert_array_equal(masked[outside], img[outside],
                                              err_msg=f"{size} {fi} {params}")


def test_every_texture_and_option_renders():
    size = 128
    lm = _faces(size)["frontal"]
    img = _face_image(size, lm)
    for i, texture in enumerate(("plain",) + TEXTURES):
        p = MaskParams(mask_type="cloth", texture=texture, colour=(200, 40, 45),
                       colour2=(235, 200, 70), texture_seed=i, seam=bool(i % 2))
        masked, mask_map = render_mask(img, lm, p)
        region = masked[mask_map == 1].astype(np.float64)
        if texture != "plain":
            assert region.std(axis=0).max() > 8.0, texture  # the pattern shows
        np.testing.assert_array_equal(masked[mask_map == 0], img[mask_map == 0])
    for p in (MaskParams(mask_type="n95", valve=True, valve_side=-1),
              MaskParams(mask_type="n95", valve=True, valve_side=1),
              MaskParams(mask_type="surgical", pleats=0),
              MaskParams(mask_type="surgical", pleats=5),
              MaskParams(mask_type="gas", colour2=(200, 80, 140))):
        masked, mask_map = render_mask(img, lm, p)
        assert mask_map.sum() > 0
        np.testing.assert_array_equal(masked[mask_map == 0], img[mask_map == 0])


def test_straps_are_part_of_the_map():
    size = 192
    lm = _faces(size)["frontal"]
    img = _face_image(size, lm)
    plain = MaskParams(mask_type="surgical", straps=False)
    strapped = dataclasses.replace(plain, straps=True)
    _, map_plain = render_mask(img, lm, plain)
    masked, map_strap = render_mask(img, lm, strapped)
    extra = (map_strap == 1) & (map_plain == 0)
    assert extra.sum() > 20                          # loops drawn outside the mask body
    assert np.all(map_strap[map_plain == 1] == 1)    # the body is unchanged
    x_extra = np.nonzero(extra)[1]
    assert x_extra.min() < lm[0, 0] + 3 and x_extra.max() > lm[16, 0] - 3  # towards ears
    np.testing.assert_array_equal(masked[map_strap == 0], img[map_strap == 0])


def test_determinism():
    size = 128
    lm = _faces(size)["rotated"]
    img = _face_image(size, lm)
    cfg = _all_type_cfg()
    first = [synthesize_mask(img, lm, example_rng(11, i), cfg) for i in range(10)]
    again = [synthesize_mask(img, lm, example_rng(11, i), cfg) for i in range(10)]
    for (m1, k1, p1), (m2, k2, p2) in zip(first, again):
        assert p1 == p2
        assert m1.tobytes() == m2.tobytes() and k1.tobytes() == k2.tobytes()
    other = synthesize_mask(img, lm, example_rng(12, 0), cfg)
    assert other[0].tobytes() != first[0][0].tobytes()
    # Re-rendering a cached structure layer gives the same bytes as the first render.
    paint.structure_factors.cache_clear()
    redo = render_mask(img, lm, first[3][2])
    assert redo[0].tobytes() == first[3][0].tobytes()


def test_tilted_face_uses_the_turned_variant():
    size = 160
    faces = _faces(size)
    img = _face_image(size, faces["yaw_right"])
    p = MaskParams(mask_type="surgical", shading=0.3, match_brightness=False)
    masked, mask_map = render_mask(img, faces["yaw_right"], p)
    no_tilt = dataclasses.replace(p, tilt_threshold_deg=90.0)
    masked_frontal, map_frontal = render_mask(img, faces["yaw_right"], no_tilt)
    np.testing.assert_array_equal(mask_map, map_frontal)       # same geometry
    assert np.abs(masked.astype(int) - masked_frontal.astype(int)).sum() > 0  # other shading


def test_brightness_matching_follows_the_face():
    size = 160
    lm = _faces(size)["frontal"]
    p = MaskParams(mask_type="surgical", colour=(238, 240, 242))
    means = []
    for skin in (40, 200):
        img = np.full((size, size, 3), skin, np.uint8)
        masked, mask_map = render_mask(img, lm, p)
        means.append(masked[mask_map == 1].max(axis=1).mean())
    assert means[0] < means[1] - 60
    unmatched = dataclasses.replace(p, match_brightness=False)
    img = np.full((size, size, 3), 40, np.uint8)
    masked, mask_map = render_mask(img, lm, unmatched)
    assert masked[mask_map == 1].max(axis=1).mean() > means[0] + 60


def test_render_edge_cases():
    size = 96
    lm = _faces(size)["frontal"]
    img = _face_image(size, lm)
    # Face entirely outside the image: nothing drawn.
    far = lm + 10 * size
    masked, mask_map = render_mask(img, far, MaskParams())
    assert mask_map.sum() == 0 and masked.tobytes() == img.tobytes()
    # Collapsed landmarks: no crash, invariant holds.
    dot = np.full((68, 2), 40.0, np.float32)
    masked, mask_map = render_mask(img, dot, MaskParams(straps=True))
    np.testing.assert_array_equal(masked[mask_map == 0], img[mask_map == 0])
    with pytest.raises(ValueError, match="uint8"):
        render_mask(img.astype(np.float32), lm, MaskParams())
    with pytest.raises(ValueError, match="68, 2"):
        render_mask(img, lm[:5], MaskParams())


def test_line_intersection_helpers():
    jaw = np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 10.0], [10.0, 0.0]])  # a U shape
    hits = anchors_mod.line_polyline_intersections(np.array([-5.0, 5.0]),
                                                   np.array([1.0, 0.0]), jaw)
    np.testing.assert_allclose(hits, [[0.0, 5.0], [10.0, 5.0]])
    # Through a shared vertex (the apex of a V): reported once.
    vee = np.array([[0.0, 0.0], [5.0, 10.0], [10.0, 0.0]])
    hits = anchors_mod.line_polyline_intersections(np.array([-5.0, 10.0]),
                                                   np.array([1.0, 0.0]), vee)
    np.testing.assert_allclose(hits, [[5.0, 10.0]])
    assert len(anchors_mod.line_polyline_intersections(
        np.array([-5.0, 20.0]), np.array([1.0, 0.0]), jaw)) == 0
    # Rotated ellipse: both hits satisfy the ellipse equation.
    ellipse = ((50.0, 40.0), (60.0, 20.0), 30.0)
    pts = anchors_mod.line_ellipse_intersections(np.array([0.0, 30.0]),
                                                 np.array([1.0, 0.2]) / np.hypot(1, 0.2),
                                                 ellipse)
    assert pts.shape == (2, 2) and pts[0, 0] < pts[1, 0]
    th = np.deg2rad(30.0)
    rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    local = (pts - (50.0, 40.0)) @ rot.T
    np.testing.assert_allclose((local[:, 0] / 30.0) ** 2 + (local[:, 1] / 10.0) ** 2, 1.0)
