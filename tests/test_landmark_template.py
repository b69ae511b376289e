"""Tests for data_pipelines.landmarks.template: the mean face, 5-point fitting, templates."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.landmarks import template as tpl

M = tpl.MEAN_FACE_68.astype(np.float64)


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    th = np.deg2rad(angle_deg)
    c, s = np.cos(th), np.sin(th)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def test_mean_face_shape_and_dtype():
    assert tpl.MEAN_FACE_68.shape == (68, 2)
    assert tpl.MEAN_FACE_68.dtype == np.float32
    assert np.all(np.isfinite(M))
    assert M.min() >= 0.0 and M.max() <= 1.0
    with pytest.raises(ValueError):
        tpl.MEAN_FACE_68[0, 0] = 1.0  # read-only


def test_mean_face_is_mirror_symmetric():
    mirrored = M[tpl.MIRROR_INDEX].copy()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    np.testing.assert_allclose(mirrored, M, atol=1e-6)
    np.testing.assert_allclose(M[list(tpl.MIDLINE_INDICES), 0], 0.5, atol=1e-6)
    # The mirror map is an involution.
    np.testing.assert_array_equal(tpl.MIRROR_INDEX[tpl.MIRROR_INDEX], np.arange(68))


def test_mean_face_ordering():
    jaw = M[0:17]
    assert np.all(np.diff(jaw[:, 0]) > 0), "jaw runs left to right"
    assert np.all(np.diff(jaw[:9, 1]) > 0) and np.all(np.diff(jaw[8:, 1]) < 0)
    assert np.argmax(jaw[:, 1]) == 8, "chin is the lowest jaw point"
    assert np.all(np.diff(M[17:27, 0]) > 0), "brows left to right"
    assert np.all(np.diff(M[27:31, 1]) > 0), "nose bridge runs down"
    assert np.all(np.diff(M[31:36, 0]) > 0)
    # Vertical order: brows < eyes < nose tip < nose base < mouth < chin.
    assert M[17:27, 1].max() < M[36:48, 1].min()
    assert M[36:48, 1].max() < M[30, 1] < M[31:36, 1].min()
    assert M[31:36, 1].max() < M[48:68, 1].min()
    assert M[48:68, 1].max() < M[8, 1]
    # Left eye left of right eye; inner corners inside outer corners.
    assert M[36, 0] < M[39, 0] < M[42, 0] < M[45, 0]
    # Upper lids above lower lids; inner lips inside outer lips.
    assert M[37, 1] < M[41, 1] and M[44, 1] < M[46, 1]
    assert M[51, 1] < M[62, 1] < M[66, 1] < M[57, 1]
    assert M[48, 0] < M[60, 0] and M[64, 0] < M[54, 0]


def test_five_points_from_mean_face():
    p5 = tpl.five_points_from_68(tpl.MEAN_FACE_68)
    assert p5.shape == (5, 2)
    np.testing.assert_allclose(p5[0], M[36:42].mean(0), atol=1e-6)
    np.testing.assert_allclose(p5[1], M[42:48].mean(0), atol=1e-6)
    np.testing.assert_allclose(p5[2], M[30], atol=1e-6)
    np.testing.assert_allclose(p5[3], M[48], atol=1e-6)
    np.testing.assert_allclose(p5[4], M[54], atol=1e-6)


@pytest.mark.parametrize("scale,angle,tx,ty", [
    (1.0, 0.0, 0.0, 0.0), (150.0, 12.0, 40.0, 30.0), (80.0, -35.0, 200.0, 5.0),
    (300.0, 170.0, 512.0, 512.0)])
def test_fit_recovers_known_similarity(scale, angle, tx, ty):
    mat = _similarity(scale, angle, tx, ty)
    target68 = tpl.apply_affine(mat, M)
    fitted = tpl.fit_68_from_5(tpl.five_points_from_68(target68))
    assert fitted.shape == (68, 2) and fitted.dtype == np.float32
    err = np.abs(fitted.astype(np.float64) - target68).max()
    assert err < 1e-4 * max(1.0, scale / 100.0), err  # float32 output rounding only


def test_fit_similarity_matrix_and_least_squares():
    mat = _similarity(2.5, 30.0, 7.0, -3.0)
    src = np.random.default_rng(0).normal(size=(10, 2))
    np.testing.assert_allclose(tpl.fit_similarity(src, tpl.apply_affine(mat, src)), mat,
                               atol=1e-9)
    # Noisy targets: the fit still lands close, and is never a reflection.
    noisy = tpl.apply_affine(mat, src) + np.random.default_rng(1).normal(0, 0.01, (10, 2))
    fit = tpl.fit_similarity(src, noisy)
    assert np.linalg.det(fit[:, :2]) > 0
    np.testing.assert_allclose(fit, mat, atol=0.05)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="points5"):
        tpl.fit_68_from_5(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        tpl.fit_68_from_5(np.full((5, 2), np.nan))


def test_celeba_aligned_fit_is_close_to_the_five_points():
    lm = tpl.celeba_aligned_landmarks()
    err = np.linalg.norm(tpl.five_points_from_68(lm) - tpl.CELEBA_ALIGNED_5, axis=1)
    assert err.max() < 3.0, err  # anatomically consistent mean face
    assert 0 < lm[:, 0].min() and lm[:, 0].max() < 178
    assert 0 < lm[:, 1].min() and lm[:, 1].max() < 218


def test_template_landmarks_box():
    lm = tpl.template_landmarks(256, 200, face_box=(0.25, 0.3, 0.75, 0.9))
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    np.testing.assert_allclose(lm[:, 0].min(), 0.25 * 200 - 0.5, atol=1e-4)
    np.testing.assert_allclose(lm[:, 0].max(), 0.75 * 200 - 0.5, atol=1e-4)
    np.testing.assert_allclose(lm[8, 1], 0.9 * 256 - 0.5, atol=1e-4)
    default = tpl.template_landmarks(128, 128)
    assert default[:, 0].min() > 0 and default[:, 0].max() < 127
    assert default[:, 1].min() > 0 and default[:, 1].max() < 127
    # The face is centred horizontally.
    np.testing.assert_allclose(default[27:31, 0], 63.5, atol=1e-4)
    with pytest.raises(ValueError):
        tpl.template_landmarks(128, 128, face_box=(0.5, 0.5, 0.4, 0.9))
