"""Loss functions for the GAN systems (pure, differentiable, float32 in and out).

Adversarial losses act on discriminator logits; reconstruction losses on images. All
reductions are means over every element (PyTorch's ``reduction='mean'``).

- ``gan_loss(logits, target_real, kind)``: 'vanilla' = BCE-with-logits against 1/0,
  'lsgan' = MSE against 1/0 (pix2pix ``GANLoss``).
- ``discriminator_loss(real_logits, fake_logits, kind, scale)``: scale * (real + fake);
  0.5 in pix2pix, 1.0 in the TF tutorial.
- ``generator_gan_loss(fake_logits, kind)``: the generator's adversarial term.
- ``l1_loss``, ``mse_loss``, ``smooth_l1_loss`` (torch ``SmoothL1Loss(beta)``),
  ``ssim_loss`` (1 - SSIM of images in [-1, 1] mapped to [0, 1], the metric's conventions).
- ``bce_loss`` (torch ``BCELoss`` on probabilities, or ``BCEWithLogitsLoss``), ``dice_loss``
  (1 - soft Dice over each image, mean over the batch) for mask maps in [0, 1].

Named, weighted terms that configs select are assembled in :mod:`unmask_jax.loss_terms`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array

GAN_KINDS = ("vanilla", "lsgan")


def _f32(x: Array) -> Array:
    return jnp.asarray(x, jnp.float32)


def gan_loss(logits: Array, target_real: bool, kind: str = "vanilla") -> Array:
    """Adversarial loss of ``logits`` against an all-real (1) or all-fake (0) target."""
    logits = _f32(logits)
    target = jnp.full_like(logits, 1.0 if target_real else 0.0)
    if kind == "vanilla":
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))
    if kind == "lsgan":
        return jnp.mean(jnp.square(logits - target))
    raise ValueError(f"unknown GAN loss kind {kind!r}; choices: {GAN_KINDS}")


def discriminator_loss(
    real_logits: Array, fake_logits: Array, kind: str = "vanilla", scale: float = 0.5
) -> Array:
    """``scale * (loss(real, 1) + loss(fake, 0))``; pix2pix scale 0.5, TF tutorial 1.0."""
    return scale * (gan_loss(real_logits, True, kind) + gan_loss(fake_logits, False, kind))


def generator_gan_loss(fake_logits: Array, kind: str = "vanilla") -> Array:
    """Generator adversarial loss: the fake logits against the real target."""
    return gan_loss(fake_logits, True, kind)


def l1_loss(pred: Array, target: Array, weight_map: Array | None = None) -> Array:
    """Mean absolute error; with ``weight_map`` (broadcastable to pred) mean(w * |d|)."""
    err = jnp.abs(_f32(pred) - _f32(target))
    if weight_map is not None:
        err = err * _f32(weight_map)
    return jnp.mean(err)


def mse_loss(pred: Array, target: Array) -> Array:
    """Mean squared error."""
    return jnp.mean(jnp.square(_f32(pred) - _f32(target)))


def smooth_l1_loss(pred: Array, target: Array, beta: float = 1.0) -> Array:
    """torch ``smooth_l1_loss``: 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta; beta 0 = L1."""
    d = jnp.abs(_f32(pred) - _f32(target))
    if beta == 0.0:
        return jnp.mean(d)
    return jnp.mean(jnp.where(d < beta, 0.5 * jnp.square(d) / beta, d - 0.5 * beta))


SSIM_FILTER_SIZE, SSIM_FILTER_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
_SSIM_EPS = float(np.finfo(np.float32).eps) ** 2  # the smallest variance (dm_pix's)


def _gaussian_taps(size: int = SSIM_FILTER_SIZE, sigma: float = SSIM_FILTER_SIGMA
                   ) -> tuple[float, ...]:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return tuple(float(t) for t in (taps / taps.sum()).astype(np.float32))


def _blur_valid(z: Array, taps: tuple[float, ...]) -> Array:
    """The separable filter ``taps`` over the last two axes, 'valid' (each axis shrinks by
    len(taps) - 1), as sums of shifted slices."""
    k = len(taps)
    h, w = z.shape[-2] - k + 1, z.shape[-1] - k + 1
    z = sum(t * z[..., i:i + h, :] for i, t in enumerate(taps))
    return sum(t * z[..., i:i + w] for i, t in enumerate(taps))


def ssim(pred: Array, target: Array) -> Array:
    """Per-image SSIM of NHWC images in [-1, 1] (mapped to [0, 1]); Gaussian 11, sigma 1.5,
    K1 0.01, K2 0.03, 'valid' windows, variances clipped as in ``dm_pix.ssim``, which the
    tests compare it with. Returns shape (B,).

    The images are moved to (B, C, H, W) and filtered with shifted slices, so that width,
    not the 3 channels, is the arrays' fastest axis (a TPU pads that axis to 128 lanes).
    dm_pix filters with vmapped 1-D float32 convolutions at the highest precision: 11.5 M of
    the 111.4 M cycles the TPU compiler estimates for GANMasker's step at 8 per chip on v5e,
    against 3.4 M this way (docs/scale.md, "Efficiency").
    """
    a = jnp.moveaxis((_f32(pred) + 1.0) * 0.5, -1, -3)
    b = jnp.moveaxis((_f32(target) + 1.0) * 0.5, -1, -3)
    taps = _gaussian_taps()
    mu_a, mu_b = _blur_valid(a, taps), _blur_valid(b, taps)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = jnp.maximum(_SSIM_EPS, _blur_valid(a * a, taps) - mu_aa)
    var_b = jnp.maximum(_SSIM_EPS, _blur_valid(b * b, taps) - mu_bb)
    cov = _blur_valid(a * b, taps) - mu_ab
    cov = jnp.sign(cov) * jnp.minimum(jnp.sqrt(var_a * var_b), jnp.abs(cov))
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    ssim_map = ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
    return jnp.mean(ssim_map, axis=(-3, -2, -1))


def ssim_loss(pred: Array, target: Array) -> Array:
    """``1 - mean SSIM`` of NHWC images in [-1, 1]."""
    return 1.0 - jnp.mean(ssim(pred, target))


def bce_loss(pred: Array, target: Array, from_logits: bool = False) -> Array:
    """Binary cross-entropy, mean over elements. ``pred`` are probabilities (torch
    ``BCELoss``: log clamped at -100) or, with ``from_logits``, logits."""
    pred, target = _f32(pred), _f32(target)
    if from_logits:
        return jnp.mean(optax.sigmoid_binary_cross_entropy(pred, target))
    log_p = jnp.maximum(jnp.log(pred), -100.0)
    log_1mp = jnp.maximum(jnp.log1p(-pred), -100.0)
    return -jnp.mean(target * log_p + (1.0 - target) * log_1mp)


def dice_coefficient(pred: Array, target: Array, smooth: float = 1.0) -> Array:
    """Soft Dice per image, shape (B,): (2 sum(p t) + s) / (sum p + sum t + s)."""
    p = _f32(pred).reshape(pred.shape[0], -1)
    t = _f32(target).reshape(target.shape[0], -1)
    return (2.0 * jnp.sum(p * t, axis=1) + smooth) / (
        jnp.sum(p, axis=1) + jnp.sum(t, axis=1) + smooth)


def dice_loss(pred: Array, target: Array, smooth: float = 1.0) -> Array:
    """``1 - mean soft Dice`` of mask maps in [0, 1]."""
    return 1.0 - jnp.mean(dice_coefficient(pred, target, smooth))
