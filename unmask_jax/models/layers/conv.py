"""``torch.nn.Conv2d`` in NHWC: :func:`conv2d_xla` and the :class:`Conv` module.

Kernel layout (kH, kW, in, out); torch weight = ``kernel.transpose(3, 2, 0, 1)``.

The plain form is one ``lax.conv_general_dilated`` with the padding built in. A platform
whose measured forms apply (:mod:`unmask_jax.backends`; on the CPU an im2col GEMM or a
pre-padded convolution per batch chunk) computes the same numbers another way.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from unmask_jax import backends
from unmask_jax.models.layers.common import (
    DIMS, Array, Dtype, Initializer, PaddingLike, add_bias, normal_init, pair)
from unmask_jax.models.layers.padding import resolved_padding


def conv2d_xla(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
) -> Array:
    """NHWC convolution with torch-style ``padding``, kernel (kH, kW, in, out), as one
    ``lax.conv_general_dilated`` with the padding built in."""
    strides, dilation = pair(strides), pair(dilation)
    pads = resolved_padding(padding, x.shape[1:3], kernel.shape[:2], strides, dilation)
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=pads, rhs_dilation=dilation,
        dimension_numbers=DIMS)


class Conv(nn.Module):
    """2-D convolution equivalent to ``torch.nn.Conv2d`` (NHWC, kernel (kH, kW, in, out)).

    ``padding`` is torch-style: an int p means ((p, p), (p, p)); 'SAME'/'VALID' strings and
    explicit ((top, bottom), (left, right)) pairs are also accepted. Computes in ``dtype``
    with the kernel stored in ``param_dtype``; the form is :func:`conv2d_xla` or the
    platform's (:func:`unmask_jax.backends.forms`), the same numbers up to float rounding.
    """

    features: int
    kernel_size: int | Sequence[int] = 4
    strides: int | Sequence[int] = 2
    padding: PaddingLike = 1
    dilation: int | Sequence[int] = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = normal_init(0.02)
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = pair(self.kernel_size)
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype
        )
        y = backends.forms().conv2d(conv2d_xla, x.astype(self.dtype),
                                    kernel.astype(self.dtype), self.strides, self.padding,
                                    self.dilation)
        return add_bias(self, y)
