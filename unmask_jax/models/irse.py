"""IR-SE building blocks shared by the ArcFace IR-SE50 feature network
(:mod:`unmask_jax.features.arcface`) and UnVeilify's pSp encoder
(:mod:`unmask_jax.models.unveilify`), Flax Linen, NHWC.

pSp ``model_irse.py`` / ``helpers.py``: ``bottleneck_IR_SE`` = ``res_layer`` (BN ->
conv3x3 -> PReLU(per channel) -> conv3x3(stride) -> BN -> SE(reduction 16)) plus a shortcut
that is a 1x1 max pool with stride (i.e. subsampling) when the widths agree, else conv1x1
(stride) + BN. Convolutions have no bias. BatchNorm is torch's ``BatchNorm2d`` (momentum 0.1
== 0.9 here, eps 1e-5, running variance updated with the unbiased batch variance; scale
initialised to 1 as in torch).

Variable names (both users rely on them, and so do the converters
``unmask_jax.features.weights`` and ``unmask_jax.export.unveilify``): ``res_bn1``,
``res_conv1``, ``res_prelu`` (``weight``), ``res_conv2``, ``res_bn2``, ``res_se/fc1``,
``res_se/fc2``, ``shortcut_conv``, ``shortcut_bn``.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unmask_jax.models.layers import BatchNorm, Conv
from unmask_jax.models.layers.common import Dtype, Initializer

IRSE_LAYERS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)

def fan_in_init(scale: float, distribution: str = "normal") -> Initializer:
    """``variance_scaling(scale, 'fan_in', distribution)`` for conv (kH, kW, in, out) and
    dense (in, out) kernels (fan in = every axis but the last), i.e. torch's
    ``kaiming_normal_`` (scale 2 / (1 + a^2)) or its default ``kaiming_uniform_(a=sqrt(5))``
    (scale 1 / 3, 'uniform'). Drawn flat and reshaped: XLA CPU compiles the 1-D threefry
    much faster than the 4-D one (the init of a deep network compiles minutes faster)."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[:-1])
        n = math.prod(shape)
        if distribution == "normal":
            flat = jax.random.normal(key, (n,), dtype) * math.sqrt(scale / fan_in)
        elif distribution == "uniform":
            bound = math.sqrt(3.0 * scale / fan_in)
            flat = jax.random.uniform(key, (n,), dtype, -bound, bound)
        else:
            raise ValueError(f"unknown distribution {distribution!r}")
        return flat.reshape(shape)

    return init


#: Default conv initialiser (He normal, fan in): what pSp's encoder init gives
#: (``kaiming_normal_`` with a = 0); pretrained users overwrite it anyway.
HE_NORMAL = fan_in_init(2.0)


class PReLU(nn.Module):
    """Per-channel PReLU (torch ``nn.PReLU(C)``): slope initialised to 0.25."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        slope = self.param("weight", nn.initializers.constant(0.25), (self.features,))
        return jnp.where(x >= 0, x, x * slope.astype(x.dtype))


def torch_bn(name: str, train: bool, x: jax.Array, eps: float = 1e-5,
             dtype: Dtype = jnp.float32) -> jax.Array:
    """``torch.nn.BatchNorm2d`` (affine, weight init 1) inside a compact method."""
    return BatchNorm(momentum=0.9, epsilon=eps, scale_init=nn.initializers.ones, dtype=dtype,
                     name=name)(x, use_running_average=not train)


class SEModule(nn.Module):
    """Squeeze-and-excitation: mean over H, W -> 1x1 conv (C // reduction) -> ReLU -> 1x1
    conv (C) -> sigmoid gate; no biases."""

    channels: int
    reduction: int = 16
    kernel_init: Initializer = HE_NORMAL
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = Conv(self.channels // self.reduction, 1, 1, 0, use_bias=False,
                 kernel_init=self.kernel_init, dtype=self.dtype, name="fc1")(s)
        s = nn.relu(s)
        s = Conv(self.channels, 1, 1, 0, use_bias=False,
                 kernel_init=self.kernel_init, dtype=self.dtype, name="fc2")(s)
        return x * nn.sigmoid(s)


class BottleneckIRSE(nn.Module):
    """pSp ``bottleneck_IR_SE(in_channel, depth, stride)`` (see the module docstring);
    ``kernel_init`` initialises every conv."""

    in_channel: int
    depth: int
    stride: int
    reduction: int = 16
    kernel_init: Initializer = HE_NORMAL
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        ckw = dict(use_bias=False, kernel_init=self.kernel_init, dtype=self.dtype)
        if self.in_channel == self.depth:
            shortcut = x[:, ::self.stride, ::self.stride, :]  # MaxPool2d(1, stride)
        else:
            shortcut = Conv(self.depth, 1, self.stride, 0, name="shortcut_conv", **ckw)(x)
            shortcut = torch_bn("shortcut_bn", train, shortcut, dtype=self.dtype)
        res = torch_bn("res_bn1", train, x, dtype=self.dtype)
        res = Conv(self.depth, 3, 1, 1, name="res_conv1", **ckw)(res)
        res = PReLU(self.depth, name="res_prelu")(res)
        res = Conv(self.depth, 3, self.stride, 1, name="res_conv2", **ckw)(res)
        res = torch_bn("res_bn2", train, res, dtype=self.dtype)
        res = SEModule(self.depth, self.reduction, self.kernel_init, self.dtype,
                       name="res_se")(res)
        return res + shortcut


def irse_units(num_layers: int = 50, blocks: Sequence[int] | None = None,
               widths: Sequence[int] = STAGE_WIDTHS) -> list[tuple[int, int, int]]:
    """pSp ``get_blocks``: (in_channel, depth, stride) for every body unit; each stage starts
    with stride 2. ``blocks`` (units per stage) overrides ``num_layers``; the body input has
    ``widths[0]`` channels."""
    if blocks is None:
        if num_layers not in IRSE_LAYERS:
            raise ValueError(f"num_layers must be one of {sorted(IRSE_LAYERS)}, got {num_layers}")
        blocks = IRSE_LAYERS[num_layers]
    if len(blocks) != 4 or len(widths) != 4 or min(blocks) < 1:
        raise ValueError(f"need 4 stages of >= 1 unit and 4 widths, got blocks={tuple(blocks)} "
                         f"widths={tuple(widths)}")
    units = []
    in_c = widths[0]
    for n, depth in zip(blocks, widths):
        units.append((in_c, depth, 2))
        units += [(depth, depth, 1)] * (n - 1)
        in_c = depth
    return units
