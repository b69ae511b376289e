"""pix2pix networks (canonical PyTorch pix2pix layout), Flax Linen, NHWC.

- :class:`UnetGenerator`: ``UnetGenerator(input_nc, output_nc, num_downs, ngf,
  norm_layer=BatchNorm2d, use_dropout)`` of the canonical PyTorch pix2pix (systems.md
  section 0). ``num_downs=8`` is ``unet_256``, ``7`` is ``unet_128``.
- :class:`PatchGANDiscriminator`: ``NLayerDiscriminator(input_nc, ndf, n_layers)``
  (``basic`` = 70x70 PatchGAN with n_layers 3); the caller concatenates
  (condition, image) on the channel axis.

Submodule names are flat and indexed by U-Net level d (0 = outermost, num_downs - 1 =
innermost) so that the mapping to the torch state dict is mechanical
(``unmask_jax.export.keymaps``):

  down_conv_{d}  Conv k4 s2 p1 (no bias when a norm follows; canonical: no bias at all)
  down_norm_{d}  BatchNorm, levels 1 .. num_downs - 2
  up_conv_{d}    ConvTranspose k4 s2 p1 (bias only at level 0)
  up_norm_{d}    BatchNorm, levels 1 .. num_downs - 1

Note on the canonical code: its down path starts with an in-place LeakyReLU, so the skip
tensor it concatenates is LeakyReLU(x) rather than x. The concatenation always feeds the
parent's ReLU, and relu(leaky_relu(x)) == relu(x), so ``concat([x, block(x)])`` as written
here is exactly equivalent (values and gradients).

Call: ``module.apply(variables, x, train, rngs={"dropout": key}, mutable=["batch_stats"])``.
Outputs are float32 whatever the compute ``dtype``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unmask_jax.models.layers import Conv, ConvTranspose, apply_norm, check_norm, leaky_relu

Array = jax.Array
Dtype = Any


def unet_inner_channels(level: int, ngf: int) -> int:
    """Channels produced by the down convolution of U-Net level ``level``."""
    return ngf * min(2**level, 8)


def unet_dropout_levels(num_downs: int) -> range:
    """Levels whose up block has dropout: the num_downs - 5 blocks above the innermost."""
    return range(4, num_downs - 1)


class UnetGenerator(nn.Module):
    """Canonical pix2pix U-Net generator (see module docstring).

    Attributes:
      num_downs: number of downsamplings (8 for 256x256 inputs, 7 for 128x128); >= 5.
      ngf: filters of the outermost level.
      out_channels: output image channels (tanh output in [-1, 1]).
      use_dropout: Dropout(0.5) after the up norm of levels 4 .. num_downs - 2.
      norm: 'batch' (canonical) or 'instance' (``norm_layer=InstanceNorm2d``: affine False,
        all convs get biases, as in the canonical code).
      bn_momentum: Flax-convention BN momentum (0.9 == torch 0.1).
    """

    num_downs: int = 8
    ngf: int = 64
    out_channels: int = 3
    use_dropout: bool = True
    dropout_rate: float = 0.5
    norm: str = "batch"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.num_downs < 5:
            raise ValueError(f"num_downs must be >= 5, got {self.num_downs}")
        check_norm(self.norm)
        n = self.num_downs
        bias = self.norm == "instance"  # canonical: use_bias = norm_layer == InstanceNorm2d
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        def norm(h: Array, name: str) -> Array:
            return apply_norm(self.norm, h, train, name=name, momentum=self.bn_momentum,
                              epsilon=self.bn_epsilon, **kw)

        def conv(h: Array, d: int, use_bias: bool) -> Array:
            return Conv(unet_inner_channels(d, self.ngf), 4, 2, 1, use_bias=use_bias,
                        name=f"down_conv_{d}", **kw)(h)

        def convt(h: Array, d: int, features: int, use_bias: bool) -> Array:
            return ConvTranspose(features, 4, 2, 1, use_bias=use_bias, name=f"up_conv_{d}",
                                 **kw)(h)

        h = x.astype(self.dtype)
        skips = []
        for d in range(n):
            if d > 0:
                h = leaky_relu(h, 0.2)
            h = conv(h, d, use_bias=bias)
            if 0 < d < n - 1:
                h = norm(h, f"down_norm_{d}")
            skips.append(h)

        dropout_levels = unet_dropout_levels(n)
        u = skips[-1]
        for d in range(n - 1, 0, -1):
            if d < n - 1:
                u = jnp.concatenate([skips[d], u], axis=-1)
            u = nn.relu(u)
            u = convt(u, d, unet_inner_channels(d - 1, self.ngf), use_bias=bias)
            u = norm(u, f"up_norm_{d}")
            if self.use_dropout and d in dropout_levels:
                u = nn.Dropout(self.dropout_rate, deterministic=not train)(u)
        u = jnp.concatenate([skips[0], u], axis=-1)
        u = convt(nn.relu(u), 0, self.out_channels, use_bias=True)
        return jnp.tanh(u).astype(jnp.float32)


class PatchGANDiscriminator(nn.Module):
    """Canonical pix2pix ``NLayerDiscriminator`` (PatchGAN), logits out (no sigmoid).

    Layers: conv_0 (k4 s2 p1, bias) -> LReLU(0.2); conv_i (k4 s2 p1) -> norm_i -> LReLU for
    i = 1 .. n_layers - 1; conv_{n_layers} (k4 s1 p1) -> norm_{n_layers} -> LReLU;
    conv_{n_layers + 1} (k4 s1 p1, 1 channel, bias). 256x256 input -> 30x30x1 (n_layers 3).
    """

    ndf: int = 64
    n_layers: int = 3
    norm: str = "batch"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        check_norm(self.norm)
        bias = self.norm == "instance"  # canonical: use_bias = norm_layer == InstanceNorm2d
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = Conv(self.ndf, 4, 2, 1, use_bias=True, name="conv_0", **kw)(x.astype(self.dtype))
        h = leaky_relu(h, 0.2)
        for i in range(1, self.n_layers + 1):
            stride = 2 if i < self.n_layers else 1
            h = Conv(self.ndf * min(2**i, 8), 4, stride, 1, use_bias=bias, name=f"conv_{i}",
                     **kw)(h)
            h = apply_norm(self.norm, h, train, name=f"norm_{i}", momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, **kw)
            h = leaky_relu(h, 0.2)
        h = Conv(1, 4, 1, 1, use_bias=True, name=f"conv_{self.n_layers + 1}", **kw)(h)
        return h.astype(jnp.float32)
