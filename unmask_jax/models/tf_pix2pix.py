"""The TensorFlow pix2pix-tutorial networks (Sharma et al., systems.md section 4), Flax Linen.

Differences from the canonical PyTorch pix2pix (``pix2pix.py``):
- down block: Conv(k4 s2 'same', no bias) -> BN -> LeakyReLU(0.3) (Keras 2 default slope);
  the first has no BN, the innermost HAS BN (at 1x1; with batch 1 in training its output is
  the BN bias, as in the tutorial);
- up block: ConvT(k4 s2 'same', no bias) -> BN -> Dropout(0.5) on the first three -> ReLU,
  then concat([up, skip]) (up output first);
- last: ConvT(out_channels, bias) -> tanh;
- Keras BatchNormalization: momentum 0.99, epsilon 1e-3, gamma 1 / beta 0, moving variance
  updated with the unbiased batch variance (Keras' fused path);
- Discriminator: down 64 (no BN), 128, 256 -> ZeroPad(1) -> Conv 512 k4 s1 (no bias) -> BN
  -> LeakyReLU(0.3) -> ZeroPad(1) -> Conv 1 k4 s1 (bias); 256x256 -> 30x30 logits.
Kernels N(0, 0.02), biases 0. Keras 'same' padding is used for the stride-2 convolutions
(equal to torch padding 1 for even sizes); k4 s2 'same' transposed convs equal torch p=1.

Parameter counts (tutorial): G with 3 input channels 54,414,979 trainable / 54,425,859
total; D on concat(input, target) = 6 channels 2,768,641 trainable / 2,770,433 total.

Names: ``down_conv_{i}``, ``down_norm_{i}`` (i >= 1), ``up_conv_{i}``, ``up_norm_{i}``,
``last`` (generator); ``down_conv_{i}``, ``down_norm_{i}`` (i = 1, 2), ``conv``, ``norm``,
``last`` (discriminator).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unmask_jax.models.layers import BatchNorm, Conv, ConvTranspose, leaky_relu

Array = jax.Array
Dtype = Any

KERAS_BN_MOMENTUM = 0.99
KERAS_BN_EPSILON = 1e-3
KERAS_LEAKY_SLOPE = 0.3


def _down_block(m: nn.Module, h: Array, i: int, features: int, train: bool,
                kw: dict[str, Any]) -> Array:
    """The tutorial's ``downsample``: Conv k4 s2 'same' (no bias) -> BN (not on the first
    block) -> LeakyReLU. Called inside ``m``'s compact ``__call__``; submodule names
    ``down_conv_{i}`` / ``down_norm_{i}`` (the export key maps rely on them)."""
    h = Conv(features, 4, 2, "SAME", use_bias=False, name=f"down_conv_{i}", **kw)(h)
    if i > 0:
        h = _keras_bn(f"down_norm_{i}", m.bn_momentum, m.bn_epsilon, **kw)(
            h, use_running_average=not train)
    return leaky_relu(h, m.leaky_slope)


def _keras_bn(name: str, momentum: float, epsilon: float, dtype: Dtype,
              param_dtype: Dtype) -> BatchNorm:
    return BatchNorm(
        momentum=momentum,
        epsilon=epsilon,
        unbiased_running_var=True,
        scale_init=nn.initializers.ones,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class TFUnetGenerator(nn.Module):
    """TF pix2pix-tutorial U-Net generator (``num_downs=8`` for 256x256 inputs)."""

    num_downs: int = 8
    ngf: int = 64
    out_channels: int = 3
    use_dropout: bool = True
    dropout_rate: float = 0.5
    num_dropout_blocks: int = 3
    leaky_slope: float = KERAS_LEAKY_SLOPE
    bn_momentum: float = KERAS_BN_MOMENTUM
    bn_epsilon: float = KERAS_BN_EPSILON
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.num_downs < 2:
            raise ValueError(f"num_downs must be >= 2, got {self.num_downs}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        widths = [self.ngf * min(2**i, 8) for i in range(self.num_downs)]
        h = x.astype(self.dtype)
        skips = []
        for i, f in enumerate(widths):
            h = _down_block(self, h, i, f, train, kw)
            skips.append(h)
        up_widths = widths[-2::-1]
        for i, (f, skip) in enumerate(zip(up_widths, skips[-2::-1])):
            h = ConvTranspose(f, 4, 2, 1, use_bias=False, name=f"up_conv_{i}", **kw)(h)
            h = _keras_bn(f"up_norm_{i}", self.bn_momentum, self.bn_epsilon, **kw)(
                h, use_running_average=not train)
            if self.use_dropout and i < self.num_dropout_blocks:
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
            h = nn.relu(h)
            h = jnp.concatenate([h, skip], axis=-1)
        h = ConvTranspose(self.out_channels, 4, 2, 1, use_bias=True, name="last", **kw)(h)
        return jnp.tanh(h).astype(jnp.float32)


class TFPatchGANDiscriminator(nn.Module):
    """TF pix2pix-tutorial discriminator on concat(input, target); logits out."""

    ndf: int = 64
    leaky_slope: float = KERAS_LEAKY_SLOPE
    bn_momentum: float = KERAS_BN_MOMENTUM
    bn_epsilon: float = KERAS_BN_EPSILON
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = x.astype(self.dtype)
        for i, f in enumerate([self.ndf, self.ndf * 2, self.ndf * 4]):
            h = _down_block(self, h, i, f, train, kw)
        h = Conv(self.ndf * 8, 4, 1, 1, use_bias=False, name="conv", **kw)(h)
        h = _keras_bn("norm", self.bn_momentum, self.bn_epsilon, **kw)(
            h, use_running_average=not train)
        h = leaky_relu(h, self.leaky_slope)
        h = Conv(1, 4, 1, 1, use_bias=True, name="last", **kw)(h)
        return h.astype(jnp.float32)
