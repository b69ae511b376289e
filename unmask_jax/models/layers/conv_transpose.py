"""``torch.nn.ConvTranspose2d`` in NHWC (any kernel, stride, padding, output_padding;
dilation 1, groups 1): :func:`conv_transpose_xla` and the :class:`ConvTranspose` module.

Kernel layout (kH, kW, out, in) (the layout of Flax ``ConvTranspose(transpose_kernel=True)``
and of Keras ``Conv2DTranspose``); torch weight (in, out, kH, kW) =
``kernel.transpose(3, 2, 0, 1)`` -- no spatial flip.

The plain form is ``lax.conv_transpose``. A platform whose measured forms apply
(:mod:`unmask_jax.backends`; on the CPU a GEMM + col2im or a sub-pixel convolution, since
XLA CPU's gradient of ``lax.conv_transpose`` is many times slower than PyTorch's) computes
the same numbers another way.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from unmask_jax import backends
from unmask_jax.models.layers.common import (
    DIMS, Array, Dtype, Initializer, add_bias, normal_init, pair)


def conv_transpose_xla(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int],
    padding: int | Sequence[int],
    output_padding: int | Sequence[int] = 0,
) -> Array:
    """``torch.nn.functional.conv_transpose2d`` (NHWC, no bias) as ``lax.conv_transpose``.

    Args:
      x: (B, H, W, Cin).
      kernel: (kH, kW, Cout, Cin); torch weight (Cin, Cout, kH, kW) is
        ``kernel.transpose(3, 2, 0, 1)``.
      strides, padding, output_padding: torch semantics (ints or (h, w) pairs), output
        size (H - 1) * s - 2 p + k + output_padding. Dilation 1, groups 1.
    """
    sh, sw = pair(strides)
    ph, pw = pair(padding)
    oph, opw = pair(output_padding)
    kh, kw = kernel.shape[:2]
    pads = ((kh - 1 - ph, kh - 1 - ph + oph), (kw - 1 - pw, kw - 1 - pw + opw))
    return lax.conv_transpose(
        x, kernel.astype(x.dtype), (sh, sw), pads, dimension_numbers=DIMS, transpose_kernel=True
    )


class ConvTranspose(nn.Module):
    """``torch.nn.ConvTranspose2d`` (NHWC). Kernel param (kH, kW, out, in). Computes in
    ``dtype``; the form is :func:`conv_transpose_xla` or the platform's
    (:func:`unmask_jax.backends.forms`), the same numbers up to float rounding."""

    features: int
    kernel_size: int | Sequence[int] = 4
    strides: int | Sequence[int] = 2
    padding: int | Sequence[int] = 1
    output_padding: int | Sequence[int] = 0
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = normal_init(0.02)
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kh, kw = pair(self.kernel_size)
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, self.features, x.shape[-1]), self.param_dtype
        )
        y = backends.forms().conv_transpose(conv_transpose_xla, x.astype(self.dtype),
                                            kernel.astype(self.dtype), self.strides,
                                            self.padding, self.output_padding)
        return add_bias(self, y)
