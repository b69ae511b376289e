"""Image-quality metrics with pinned conventions (evaluation.md), and the classical baselines.

All metrics take uint8 RGB images (N, H, W, 3) -- the composited output as a user would save
it -- and return one value per image; tables report the mean over images.

* PSNR: per image, data range 255; ``psnr_mask`` uses the MSE over mask pixels only.
* SSIM: Wang et al. -- Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid filtering, mean
  over channels, on [0, 1] images (the same numbers as ``dm_pix.ssim(max_val=1.0)`` and
  scikit-image's ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``; tested).
  ``ssim_mask`` is SSIM on the bounding box of the mask map (grown to at least 11 px).
"""
from __future__ import annotations

import cv2
import numpy as np

SSIM_WINDOW = 11


def psnr(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-image PSNR in dB (range 255). ``mask`` (N, H, W[, 1]) restricts the MSE to mask
    pixels. Identical images give +inf."""
    d = (np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2
    if mask is None:
        mse = d.reshape(d.shape[0], -1).mean(axis=1)
    else:
        m = np.asarray(mask, np.float64).reshape(d.shape[0], d.shape[1], d.shape[2], 1)
        m = np.broadcast_to(m, d.shape)
        mse = (d * m).reshape(d.shape[0], -1).sum(1) / np.maximum(
            m.reshape(d.shape[0], -1).sum(1), 1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = 1.5) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-0.5 * (r / sigma) ** 2)
    return w / w.sum()


def _ssim_one(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of one (H, W, C) pair in [0, 1]: Gaussian-weighted statistics, valid region."""
    w = _gaussian_window()
    half = SSIM_WINDOW // 2
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def blur(a):  # filtering, then cropping the border == 'valid' filtering
        return cv2.sepFilter2D(a, cv2.CV_64F, w, w, borderType=cv2.BORDER_REFLECT)[
            half:-half, half:-half]

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image SSIM of uint8 images (N, H, W, 3); each side must be >= 11 px."""
    x = np.asarray(x, np.float64) / 255.0
    y = np.asarray(y, np.float64) / 255.0
    if min(x.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px, got {x.shape}")
    return np.asarray([_ssim_one(a, b) for a, b in zip(x, y)])


def _grow_span(lo: int, hi: int, size: int, min_size: int) -> tuple[int, int]:
    """[lo, hi) grown about its centre to >= min(min_size, size), shifted to lie in [0, size)."""
    want = min(max(hi - lo, min_size), size)
    grow = want - (hi - lo)
    lo -= (grow + 1) // 2
    hi += grow // 2
    if lo < 0:  # at the top/left border: shift the whole window inwards
        hi, lo = hi - lo, 0
    if hi > size:  # at the bottom/right border
        lo, hi = lo - (hi - size), size
    return max(lo, 0), hi


def mask_box(mask: np.ndarray, min_size: int = SSIM_WINDOW) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) bounding box of a (H, W[, 1]) mask, grown to >= min_size per side.

    The box contains the mask, lies inside the image and, where the image side is at least
    ``min_size``, measures at least ``min_size`` on that side even at a border or corner (it
    grows about the mask's centre and is shifted inwards where it would leave the image).
    An empty mask gives the whole image.
    """
    m = np.asarray(mask).reshape(mask.shape[0], mask.shape[1]) > 0
    h, w = m.shape
    if not m.any():
        return 0, h, 0, w
    ys, xs = np.nonzero(m)
    y0, y1 = _grow_span(int(ys.min()), int(ys.max()) + 1, h, min_size)
    x0, x1 = _grow_span(int(xs.min()), int(xs.max()) + 1, w, min_size)
    return y0, y1, x0, x1


def ssim_in_mask_box(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = []
    for xi, yi, mi in zip(x, y, mask):
        y0, y1, x0, x1 = mask_box(mi)
        out.append(ssim(xi[None, y0:y1, x0:x1], yi[None, y0:y1, x0:x1])[0])
    return np.asarray(out)


def telea_inpaint(masked: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """OpenCV Telea inpainting of the mask region, the classical baseline."""
    out = []
    for img, m in zip(masked, mask):
        m8 = (np.asarray(m).reshape(img.shape[0], img.shape[1]) > 0).astype(np.uint8)
        out.append(cv2.inpaint(np.ascontiguousarray(img), m8, radius, cv2.INPAINT_TELEA))
    return np.stack(out)


def image_metrics(output: np.ndarray, target: np.ndarray, mask: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """All per-image metrics of one batch (uint8 images, mask in {0, 1})."""
    return {
        "psnr": psnr(output, target),
        "ssim": ssim(output, target),
        "psnr_mask": psnr(output, target, mask),
        "ssim_mask": ssim_in_mask_box(output, target, mask),
    }


def mask_metrics(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5
                 ) -> dict[str, np.ndarray]:
    """Segmentation metrics per image of a predicted mask map (probabilities or {0, 1},
    (N, H, W[, 1])) against the true map: ``dice`` = 2|P & T| / (|P| + |T|) (1 when both are
    empty) and ``pixel_accuracy`` = share of pixels where the thresholded prediction equals
    the truth."""
    n = pred.shape[0]
    p = (np.asarray(pred).reshape(n, -1) >= threshold)
    t = (np.asarray(truth).reshape(n, -1) >= 0.5)
    inter = np.sum(p & t, axis=1).astype(np.float64)
    total = (np.sum(p, axis=1) + np.sum(t, axis=1)).astype(np.float64)
    dice = np.where(total > 0, 2.0 * inter / np.maximum(total, 1.0), 1.0)
    return {"dice": dice, "pixel_accuracy": np.mean(p == t, axis=1)}
