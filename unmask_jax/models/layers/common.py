"""Small pieces every layer module shares: type aliases, the pix2pix weight initialiser,
LeakyReLU, int-or-pair arguments and the optional bias of a convolution module."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
PaddingLike = int | str | Sequence[tuple[int, int]]

DIMS = ("NHWC", "HWIO", "NHWC")  # lax dimension numbers of every convolution here


def normal_init(stddev: float = 0.02, mean: float = 0.0) -> Initializer:
    """N(mean, stddev) initialiser (pix2pix ``init_type='normal'``, gain 0.02)."""

    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        # Drawn flat and reshaped: same values as drawing with ``shape`` directly, but XLA
        # CPU compiles the 1-D threefry faster than the 4-D one.
        flat = jax.random.normal(key, (math.prod(shape),), dtype)
        return (mean + stddev * flat).reshape(shape)

    return init


def leaky_relu(x: Array, negative_slope: float) -> Array:
    """LeakyReLU with an explicit slope (torch and Flax default to 0.01, pix2pix uses 0.2)."""
    return jnp.where(x >= 0, x, negative_slope * x)


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    """``v`` as an (h, w) pair of ints (an int applies to both axes)."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return (int(v[0]), int(v[1]))


def add_bias(module: nn.Module, y: Array) -> Array:
    """Adds the module's ``bias`` param (``features`` long) when ``use_bias``."""
    if not module.use_bias:
        return y
    bias = module.param("bias", module.bias_init, (module.features,), module.param_dtype)
    return y + bias.astype(module.dtype)
