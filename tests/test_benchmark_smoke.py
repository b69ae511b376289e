"""benchmarks/ganmasker_vs_torch.py without timing anything: its config and the torch SSIM
that its PyTorch step uses (must follow unmask_jax.losses.ssim, i.e. dm_pix)."""
import os
import sys

import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import ganmasker_vs_torch as bench  # noqa: E402

from unmask_jax import losses  # noqa: E402


def test_config_defaults_and_overrides():
    c = bench.build_config(bench.parse_args([]))
    assert c.model.segmenter_kwargs.base_width == 32
    assert c.model.generator_kwargs.base_width == 32
    assert (c.model.discriminator_kwargs.ndf, c.model.discriminator_kwargs.n_layers) == (64, 3)
    assert c.loss.terms.perceptual.weight == 0.0 and c.loss.update_order == "sequential"
    assert c.loss.d_scale == bench.D_SCALE and c.optim.lr == bench.LR
    assert c.loss.terms.smooth_l1.weight == bench.SMOOTH_L1_WEIGHT
    assert c.loss.terms.ssim.weight == bench.SSIM_WEIGHT
    c = bench.build_config(bench.parse_args(["--size", "64", "--mseg-width", "4", "--ndf", "8",
                                             "--d-layers", "2", "--funet-width", "4"]))
    assert c.data.resolution == 64 and c.model.discriminator_kwargs.n_layers == 2


def test_torch_ssim_matches_losses_ssim():
    masked, target, _ = bench._masked_faces(np, 2, 32, seed=0)
    noisy = np.clip(target + np.random.default_rng(1).normal(0, 0.3, target.shape), -1, 1)
    for a, b in ((noisy.astype(np.float32), target), (masked, target), (target, target)):
        ours = float(losses.ssim_loss(jnp.asarray(a), jnp.asarray(b)))
        nchw = lambda v: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2)))  # noqa
        ref = 1.0 - float(bench._ssim_torch(torch, nchw(a), nchw(b)))
        assert abs(ours - ref) < 1e-5, (ours, ref)
