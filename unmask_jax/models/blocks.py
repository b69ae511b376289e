"""Attention and normalisation building blocks shared by several networks (Flax Linen, NHWC).

- :class:`SqueezeExcitation` / :func:`squeeze_excitation`: Hu et al. 2018, "Squeeze-and-
  Excitation Networks": global average pool -> FC(C / r) -> ReLU -> FC(C) -> sigmoid ->
  channel-wise scale of the input.
- :class:`CBAM` / :func:`cbam`: Woo et al. 2018, "CBAM: Convolutional Block Attention
  Module": channel attention (average- and max-pooled descriptors through one shared
  two-layer MLP, summed, sigmoid) followed by spatial attention (channel-wise mean and max
  maps concatenated in that order, one k x k convolution, sigmoid).

The fully connected layers are 1x1 :class:`~unmask_jax.models.layers.Conv` layers applied to
the (N, 1, 1, C) pooled descriptor: numerically the same as ``nn.Linear`` and exported to
PyTorch as ``nn.Conv2d(C, C', 1)`` by the generic kernel transpose of
``unmask_jax.export.keymaps``. Both MLP layers have a bias (as ``nn.Linear`` in the reference
implementations); the spatial convolution of CBAM has none (the paper's equation
``sigma(f7x7([AvgPool(F); MaxPool(F)]))`` has no bias and no normalisation).

Reduction ratio: the hidden width is ``max(C // reduction, 1)``. Both papers use r = 16 as
their default, which is taken here; networks built from these blocks may pass another.

Flat names. Each block exists twice: as a Module (its layers nest under the module's name)
and as a function that must be called inside another module's compact method and creates
its layers *directly in that module*, named ``prefix + <layer>``. The export key maps of
``unmask_jax.export.keymaps`` only walk top-level submodules, so the networks that are
exported to PyTorch call the functions with a prefix (e.g. ``enc_0_cbam_``). Layer names
(after the prefix): SE ``fc_0``, ``fc_1``; CBAM ``mlp_0``, ``mlp_1``, ``spatial``.

Outputs are in the compute ``dtype``; pooling and the sigmoid gates are computed in float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unmask_jax.models.layers import Conv

Array = jax.Array
Dtype = Any


def hidden_width(channels: int, reduction: int) -> int:
    """Hidden width of an SE / CBAM bottleneck MLP: ``max(channels // reduction, 1)``."""
    if reduction < 1:
        raise ValueError(f"reduction must be >= 1, got {reduction}")
    return max(channels // reduction, 1)


def _fc(features: int, name: str, conv_impl: str, dtype: Dtype, param_dtype: Dtype) -> Conv:
    """A fully connected layer as a 1x1 convolution with bias."""
    return Conv(features, 1, 1, 0, use_bias=True, impl=conv_impl, dtype=dtype,
                param_dtype=param_dtype, name=name)


def squeeze_excitation(x: Array, *, reduction: int = 16, prefix: str = "",
                       conv_impl: str = "auto", dtype: Dtype = jnp.float32,
                       param_dtype: Dtype = jnp.float32) -> Array:
    """SE block on ``x`` (N, H, W, C); layers ``prefix + 'fc_0'`` (C -> C // r) and
    ``prefix + 'fc_1'`` (-> C) are created in the calling module (call it inside a compact
    method)."""
    c = x.shape[-1]
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(dtype)
    s = _fc(hidden_width(c, reduction), prefix + "fc_0", conv_impl, dtype, param_dtype)(s)
    s = nn.relu(s)
    s = _fc(c, prefix + "fc_1", conv_impl, dtype, param_dtype)(s)
    gate = jax.nn.sigmoid(s.astype(jnp.float32))
    return (x.astype(jnp.float32) * gate).astype(dtype)


def cbam(x: Array, *, reduction: int = 16, spatial_kernel: int = 7, prefix: str = "",
         conv_impl: str = "auto", dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32) -> Array:
    """CBAM on ``x`` (N, H, W, C): channel then spatial attention. Layers
    ``prefix + 'mlp_0'`` (C -> C // r, bias), ``prefix + 'mlp_1'`` (-> C, bias) and
    ``prefix + 'spatial'`` (2 -> 1, k x k, padding k // 2, no bias) are created in the
    calling module (call it inside a compact method)."""
    if spatial_kernel % 2 != 1:
        raise ValueError(f"spatial_kernel must be odd, got {spatial_kernel}")
    c = x.shape[-1]
    x32 = x.astype(jnp.float32)
    fc0 = _fc(hidden_width(c, reduction), prefix + "mlp_0", conv_impl, dtype, param_dtype)
    fc1 = _fc(c, prefix + "mlp_1", conv_impl, dtype, param_dtype)

    def mlp(d: Array) -> Array:
        return fc1(nn.relu(fc0(d.astype(dtype)))).astype(jnp.float32)

    avg = jnp.mean(x32, axis=(1, 2), keepdims=True)
    mx = jnp.max(x32, axis=(1, 2), keepdims=True)
    x32 = x32 * jax.nn.sigmoid(mlp(avg) + mlp(mx))
    maps = jnp.concatenate([jnp.mean(x32, axis=-1, keepdims=True),
                            jnp.max(x32, axis=-1, keepdims=True)], axis=-1)
    s = Conv(1, spatial_kernel, 1, spatial_kernel // 2, use_bias=False, impl=conv_impl,
             dtype=dtype, param_dtype=param_dtype, name=prefix + "spatial")(maps.astype(dtype))
    return (x32 * jax.nn.sigmoid(s.astype(jnp.float32))).astype(dtype)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018); output shape = input shape.

    Attributes:
      reduction: r; hidden width ``max(C // r, 1)`` (paper default 16).
    Variables: params ``fc_0/{kernel,bias}`` (1, 1, C, C // r), ``fc_1/{kernel,bias}``.
    """

    reduction: int = 16
    conv_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train  # no batch statistics
        return squeeze_excitation(x, reduction=self.reduction, conv_impl=self.conv_impl,
                                  dtype=self.dtype, param_dtype=self.param_dtype)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018); output shape = input shape.

    Attributes:
      reduction: r of the channel-attention MLP; hidden width ``max(C // r, 1)``. The
        GANMasker paper gives none; 16 is the CBAM paper's default.
      spatial_kernel: k of the spatial-attention convolution (paper: 7).
    Variables: params ``mlp_0``, ``mlp_1`` (1x1 convs with bias), ``spatial`` (k x k, 2 -> 1,
    no bias).
    """

    reduction: int = 16
    spatial_kernel: int = 7
    conv_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train  # no batch statistics
        return cbam(x, reduction=self.reduction, spatial_kernel=self.spatial_kernel,
                    conv_impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype)
