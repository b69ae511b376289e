"""Evaluation metrics against known pairs and reference implementations."""
import numpy as np
import pytest

from unmask_jax import metrics


def _pair(seed=0, shape=(2, 48, 48, 3), noise=40):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-noise, noise + 1, shape), 0, 255).astype(np.uint8)
    return a, b


def test_psnr_known_value():
    a = np.full((1, 16, 16, 3), 100, np.uint8)
    b = a + 10  # MSE 100 -> 10 log10(255^2 / 100)
    np.testing.assert_allclose(metrics.psnr(a, b), [10 * np.log10(255 ** 2 / 100)], rtol=1e-12)


def test_psnr_is_mean_of_per_image_values_not_pooled():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    b = a.copy()
    b[0] += 1
    b[1] += 20
    per = metrics.psnr(a, b)
    np.testing.assert_allclose(per, [10 * np.log10(255 ** 2), 10 * np.log10(255 ** 2 / 400)])


def test_psnr_mask_uses_mask_pixels_only():
    a = np.zeros((1, 8, 8, 3), np.uint8)
    b = a.copy()
    b[0, :4] = 50  # error only in the top half
    mask = np.zeros((1, 8, 8, 1))
    mask[0, :4] = 1
    np.testing.assert_allclose(metrics.psnr(a, b, mask), [10 * np.log10(255 ** 2 / 2500)])
    assert metrics.psnr(a, b)[0] > metrics.psnr(a, b, mask)[0]


def test_ssim_matches_scikit_image_and_dm_pix():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    import dm_pix
    import jax.numpy as jnp
    a, b = _pair()
    ours = metrics.ssim(a, b)
    ref = [skimage_metrics.structural_similarity(
        x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    pix = dm_pix.ssim(jnp.asarray(a / 255.0, jnp.float32), jnp.asarray(b / 255.0, jnp.float32),
                      max_val=1.0)
    np.testing.assert_allclose(ours, np.asarray(pix), atol=2e-6)


def test_ssim_identical_is_one_and_rejects_tiny_images():
    a, _ = _pair()
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0)
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(a[:, :8, :8], a[:, :8, :8])


def test_mask_box_grows_to_window():
    m = np.zeros((32, 32, 1))
    m[10:12, 20:22] = 1
    y0, y1, x0, x1 = metrics.mask_box(m)
    assert y1 - y0 >= 11 and x1 - x0 >= 11
    assert y0 <= 10 and y1 >= 12 and x0 <= 20 and x1 >= 22
    assert metrics.mask_box(np.zeros((32, 32))) == (0, 32, 0, 32)


def test_telea_fills_mask_and_keeps_rest():
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[..., 0] = np.arange(32, dtype=np.uint8)[None, :] * 8
    masked = img.copy()
    mask = np.zeros((1, 32, 32, 1))
    mask[0, 12:20, 12:20] = 1
    masked[0, 12:20, 12:20] = 255
    out = metrics.telea_inpaint(masked, mask)
    np.testing.assert_array_equal(out[0][mask[0, ..., 0] == 0], masked[0][mask[0, ..., 0] == 0])
    assert metrics.psnr(out, img, mask)[0] > metrics.psnr(masked, img, mask)[0] + 5
