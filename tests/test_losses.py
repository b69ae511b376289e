"""Tests for unmask_jax.losses against torch.nn.functional references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unmask_jax import losses


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {
        "logits": rng.standard_normal((2, 30, 30, 1)).astype(np.float32) * 3,
        "fake": rng.standard_normal((2, 30, 30, 1)).astype(np.float32) * 3,
        "a": rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32),
        "b": rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32) * 1.5,
        "w": rng.uniform(0, 1, (2, 16, 16, 1)).astype(np.float32),
    }


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(x))


@pytest.mark.parametrize("target_real", [True, False])
def test_gan_losses_match_torch(data, target_real):
    z = data["logits"]
    target = torch.full(z.shape, 1.0 if target_real else 0.0)
    ref_bce = F.binary_cross_entropy_with_logits(_t(z), target).item()
    ref_mse = F.mse_loss(_t(z), target).item()
    got_bce = losses.gan_loss(jnp.asarray(z), target_real, "vanilla")
    got_mse = losses.gan_loss(jnp.asarray(z), target_real, "lsgan")
    assert got_bce.dtype == jnp.float32
    np.testing.assert_allclose(got_bce, ref_bce, rtol=1e-5)
    np.testing.assert_allclose(got_mse, ref_mse, rtol=1e-5)


@pytest.mark.parametrize("kind,scale", [("vanilla", 0.5), ("vanilla", 1.0), ("lsgan", 0.5)])
def test_discriminator_and_generator_losses(data, kind, scale):
    real, fake = data["logits"], data["fake"]
    fn = F.binary_cross_entropy_with_logits if kind == "vanilla" else F.mse_loss
    ones, zeros = torch.ones(real.shape), torch.zeros(real.shape)
    ref_d = scale * (fn(_t(real), ones) + fn(_t(fake), zeros)).item()
    ref_g = fn(_t(fake), ones).item()
    np.testing.assert_allclose(
        losses.discriminator_loss(jnp.asarray(real), jnp.asarray(fake), kind, scale), ref_d,
        rtol=1e-5)
    np.testing.assert_allclose(losses.generator_gan_loss(jnp.asarray(fake), kind), ref_g,
                               rtol=1e-5)


def test_unknown_gan_kind():
    with pytest.raises(ValueError, match="hinge"):
        losses.gan_loss(jnp.zeros((1,)), True, "hinge")


def test_reconstruction_losses_match_torch(data):
    a, b, w = data["a"], data["b"], data["w"]
    np.testing.assert_allclose(losses.l1_loss(a, b), F.l1_loss(_t(a), _t(b)).item(), rtol=1e-5)
    np.testing.assert_allclose(losses.mse_loss(a, b), F.mse_loss(_t(a), _t(b)).item(), rtol=1e-5)
    weighted = (torch.abs(_t(a) - _t(b)) * _t(w)).mean().item()
    np.testing.assert_allclose(losses.l1_loss(a, b, weight_map=w), weighted, rtol=1e-5)
    for beta in (1.0, 0.5, 0.0):
        np.testing.assert_allclose(
            losses.smooth_l1_loss(a, b, beta=beta),
            F.smooth_l1_loss(_t(a), _t(b), beta=beta).item(), rtol=1e-5)


def test_ssim_loss(data):
    a, b = jnp.asarray(data["a"]), jnp.asarray(data["b"])
    assert abs(float(losses.ssim_loss(a, a))) < 1e-6
    loss = float(losses.ssim_loss(a, jnp.clip(b, -1, 1)))
    assert 0.5 < loss <= 2.0  # independent noise images: SSIM near 0
    slightly = jnp.clip(a + 0.05, -1, 1)
    small = float(losses.ssim_loss(a, slightly))
    assert 0 < small < loss
    # Per-image SSIM values.
    assert losses.ssim(a, a).shape == (2,)


def test_ssim_matches_dm_pix_values_and_gradients():
    """losses.ssim (shifted slices over (C, H, W)) against dm_pix's vmapped 1-D convolutions,
    on a non-square, odd-sized batch, values and input gradients."""
    import dm_pix
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.uniform(-1, 1, (3, 40, 37, 3)), jnp.float32)
    b = jnp.clip(a + jnp.asarray(rng.normal(0, 0.3, a.shape), jnp.float32), -1, 1)

    def ref(p, t):
        return dm_pix.ssim((p + 1) * 0.5, (t + 1) * 0.5, max_val=1.0)

    np.testing.assert_allclose(losses.ssim(a, b), ref(a, b), atol=1e-6)
    g = jax.grad(lambda p: jnp.sum(losses.ssim(p, b)))(a)
    g_ref = jax.grad(lambda p: jnp.sum(ref(p, b)))(a)
    scale = float(jnp.max(jnp.abs(g_ref)))
    assert scale > 0
    np.testing.assert_allclose(g / scale, g_ref / scale, atol=1e-5)


def test_losses_differentiable(data):
    a, b = jnp.asarray(data["a"]), jnp.asarray(data["b"])

    def total(p):
        return (losses.l1_loss(p, b) + losses.smooth_l1_loss(p, b) + losses.ssim_loss(p, b)
                + losses.generator_gan_loss(p[..., :1]))

    g = jax.jit(jax.grad(total))(a)
    assert g.shape == a.shape and bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.max(jnp.abs(g))) > 0
