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
    from skimage import metrics as skimage_metrics
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


BORDER_CASES = {
    # name: (rows, cols) of the mask in a 64 x 64 image
    "top": (slice(0, 3), slice(30, 34)),
    "bottom": (slice(60, 64), slice(30, 34)),  # issue 11 item 6: a box 8 px high
    "left": (slice(30, 33), slice(0, 2)),
    "right": (slice(30, 33), slice(62, 64)),
    "top_left": (slice(0, 2), slice(0, 2)),
    "top_right": (slice(0, 4), slice(61, 64)),
    "bottom_left": (slice(63, 64), slice(0, 5)),
    "bottom_right": (slice(59, 64), slice(60, 64)),
}


@pytest.mark.parametrize("case", sorted(BORDER_CASES))
@pytest.mark.parametrize("size", [64, 11, 12, 16])
def test_mask_box_at_borders_and_corners(case, size):
    rows, cols = BORDER_CASES[case]
    full = np.zeros((64, 64, 1))
    full[rows, cols] = 1
    # Same relative position in a smaller image: keep the border the mask touches.
    ys, xs = np.nonzero(full[..., 0])
    ys = np.clip(np.where(ys >= 32, ys - (64 - size), ys), 0, size - 1)
    xs = np.clip(np.where(xs >= 32, xs - (64 - size), xs), 0, size - 1)
    m = np.zeros((size, size, 1))
    m[ys, xs] = 1
    y0, y1, x0, x1 = metrics.mask_box(m)
    assert 0 <= y0 < y1 <= size and 0 <= x0 < x1 <= size
    assert y1 - y0 >= 11 and x1 - x0 >= 11, (y0, y1, x0, x1)
    assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1
    img = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    assert np.isfinite(metrics.ssim_in_mask_box(img, img[:, ::-1], m[None])).all()


def test_mask_box_keeps_interior_boxes_and_large_masks():
    m = np.zeros((64, 64))
    m[20:40, 5:50] = 1
    assert metrics.mask_box(m) == (20, 40, 5, 50)  # already >= 11: unchanged
    m = np.zeros((64, 64))
    m[60:64, 10:12] = 1
    assert metrics.mask_box(m) == (53, 64, 5, 16)  # shifted inwards, not cut to 4 rows
    tiny = np.ones((8, 8))
    assert metrics.mask_box(tiny) == (0, 8, 0, 8)  # image smaller than the window: all of it


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
