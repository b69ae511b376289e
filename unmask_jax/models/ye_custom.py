"""Ye et al. Train C "customized GAN" generator (paper 001, systems.md section 2), Flax
Linen, NHWC.

The paper (after Din et al. 2020) keeps the pix2pix U-Net but: reduces the skip-connected
layers from 7 to 5; adds 4 dilated convolutions with rates 2, 4, 8, 16 in sequence; adds a
squeeze-and-excitation block after each of the first three encoders; uses instance instead
of batch normalisation; takes the 4-channel input (masked face + binary mask map). It gives
no widths, kernel sizes, placement of the dilated stack, SE reduction or activations. The
choices made here (all configurable where it matters):

- U-Net: 5 down levels d = 0 .. 4, each pix2pix-style (LeakyReLU(0.2) before the conv,
  except at d = 0; Conv k4 s2 p1); widths ``ngf * min(2**d, 8)`` = 64, 128, 256, 512, 512.
  Every level's output is a skip (5 skip connections); 256x256 -> 8x8 at the bottom.
- InstanceNorm after the down conv of levels 1 .. 4 and after the up conv of levels
  1 .. 4: ``torch.nn.InstanceNorm2d`` defaults, eps 1e-5 and ``affine=False`` (no
  parameters; pix2pix's ``norm_layer=InstanceNorm2d`` is the same). Level 0 has no norm,
  as in pix2pix. With instance norm every convolution has a bias (pix2pix's rule
  ``use_bias = norm_layer == InstanceNorm2d``). Unlike pix2pix's innermost level, level 4
  is normalised too: its output is >= 2x2 here (8x8 at 256), never 1x1.
- SE (Hu et al., reduction ``se_reduction`` = 16) on the outputs of encoders 0, 1, 2,
  i.e. on the tensor that is both the skip and the next encoder's input: global average
  pool -> 1x1 conv C -> max(1, C // r) (bias) -> ReLU -> 1x1 conv -> C (bias) -> sigmoid ->
  channel scale (the 1x1 convs are the paper's FC layers): the shared
  ``unmask_jax.models.blocks.squeeze_excitation`` in its flat-name form (prefix
  ``se_{d}_``), so the generic PyTorch export (top-level 4-D kernels) applies.
- Dilated stack (DeepFill-style bottleneck) at the lowest resolution, between the innermost
  encoder and the innermost decoder: for each rate r in ``dilation_rates`` (2, 4, 8, 16):
  LeakyReLU(0.2) -> Conv 3x3, dilation r, padding r (bias) -> InstanceNorm, width
  ``dilated_channels`` (256). The innermost decoder sees concat(skip_4, stack output).
  Caveat: at 256x256 the bottom is 8x8, so taps at offsets >= 8 fall in the zero padding:
  the rate-8 and rate-16 convolutions see only their centre tap (1x1 convolutions in
  effect). This is what "at the lowest resolution" with 5 downs implies; a config may pass
  other ``dilation_rates``.
- Up level d = 4 .. 0: concat(skip_d, u) -> ReLU -> ConvTranspose k4 s2 p1 -> (d > 0)
  InstanceNorm [-> Dropout(0.5) on d = 4, 3, 2, the "first three decoders" of the
  paper's pix2pix, when ``use_dropout``]; d = 0 outputs ``out_channels`` then tanh.
  Default ``use_dropout=False``.
- Input channels are taken from the input (4 for Train C). Kernels N(0, 0.02), biases 0.

Parameter counts (any resolution; 4 input channels): default (ngf 64, dilated 256)
21,717,343; ``ngf=16, dilated_channels=64`` 1,359,994.

Submodule names (flat, for the export key map ``unmask_jax.export.keymaps``):
``down_conv_{d}``, ``down_norm_{d}`` (d >= 1), ``se_{d}_fc_0`` / ``se_{d}_fc_1`` (d < 3),
``dilated_conv_{i}``, ``dilated_norm_{i}``, ``up_conv_{d}``, ``up_norm_{d}`` (d >= 1).
The PyTorch twin is ``unmask_jax.export.torch_modules.YeUnetC``.

Call: ``module.apply(variables, x, train, rngs={"dropout": key})`` (no batch statistics).
Outputs are float32 whatever the compute ``dtype``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unmask_jax.models.blocks import squeeze_excitation
from unmask_jax.models.layers import Conv, ConvTranspose, InstanceNorm, leaky_relu

Array = jax.Array
Dtype = Any

YE_NUM_DOWNS = 5
YE_SE_LEVELS = (0, 1, 2)
YE_DROPOUT_LEVELS = (4, 3, 2)


def ye_level_channels(level: int, ngf: int) -> int:
    """Channels produced by the down convolution of level ``level`` (pix2pix widths)."""
    return ngf * min(2**level, 8)


class YeUnetC(nn.Module):
    """Ye Train C generator (see module docstring).

    Attributes:
      ngf: width of the outermost level (levels: ngf * 1, 2, 4, 8, 8).
      dilated_channels: width of the dilated 3x3 convolutions.
      dilation_rates: the dilated stack, in order (the paper: 2, 4, 8, 16).
      se_reduction: squeeze-and-excitation reduction ratio r.
      out_channels: output image channels (tanh output in [-1, 1]).
      use_dropout: Dropout(dropout_rate) after the up norm of levels 4, 3, 2 in training.
      in_epsilon: InstanceNorm epsilon (torch 1e-5).
    """

    ngf: int = 64
    dilated_channels: int = 256
    dilation_rates: Sequence[int] = (2, 4, 8, 16)
    se_reduction: int = 16
    out_channels: int = 3
    use_dropout: bool = False
    dropout_rate: float = 0.5
    in_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        n = YE_NUM_DOWNS
        if min(x.shape[1:3]) < 2**n or x.shape[1] % 2**n or x.shape[2] % 2**n:
            raise ValueError(f"YeUnetC needs H and W divisible by {2**n}, got {x.shape[1:3]}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def norm(h: Array, name: str) -> Array:
            return InstanceNorm(epsilon=self.in_epsilon, affine=False, name=name, **kw)(h)

        h = x.astype(self.dtype)
        skips = []
        for d in range(n):
            if d > 0:
                h = leaky_relu(h, 0.2)
            h = Conv(ye_level_channels(d, self.ngf), 4, 2, 1, name=f"down_conv_{d}", **kw)(h)
            if d > 0:
                h = norm(h, f"down_norm_{d}")
            if d in YE_SE_LEVELS:
                h = squeeze_excitation(h, reduction=self.se_reduction, prefix=f"se_{d}_", **kw)
            skips.append(h)

        u = h
        for i, rate in enumerate(self.dilation_rates):
            u = leaky_relu(u, 0.2)
            u = Conv(self.dilated_channels, 3, 1, int(rate), dilation=int(rate),
                     name=f"dilated_conv_{i}", **kw)(u)
            u = norm(u, f"dilated_norm_{i}")

        for d in range(n - 1, -1, -1):
            u = nn.relu(jnp.concatenate([skips[d], u], axis=-1))
            features = self.out_channels if d == 0 else ye_level_channels(d - 1, self.ngf)
            u = ConvTranspose(features, 4, 2, 1, name=f"up_conv_{d}", **kw)(u)
            if d > 0:
                u = norm(u, f"up_norm_{d}")
                if self.use_dropout and d in YE_DROPOUT_LEVELS:
                    u = nn.Dropout(self.dropout_rate, deterministic=not train)(u)
        return jnp.tanh(u).astype(jnp.float32)
