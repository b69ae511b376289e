"""``torch.nn.Conv2d`` in NHWC: three implementations of the product and the
:class:`Conv` module that picks one.

Kernel layout (kH, kW, in, out); torch weight = ``kernel.transpose(3, 2, 0, 1)``.

- :func:`conv2d_xla`: ``lax.conv_general_dilated`` with the padding built in (what
  ``impl='auto'`` runs off the CPU platform);
- :func:`conv2d`: a VALID convolution on an explicitly zero-padded input;
- :func:`conv2d_gemm`: im2col + one GEMM;
- :func:`~unmask_jax.models.layers.winograd.conv2d_winograd`: Winograd F(2x2, 3x3) (3x3,
  stride 1), an explicit ``impl`` only.

:func:`conv2d` and :func:`conv2d_gemm` are the CPU rule's forms (see
:mod:`~unmask_jax.models.layers.dispatch`).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from unmask_jax.models.layers import dispatch
from unmask_jax.models.layers.common import (
    DIMS, Array, Dtype, Initializer, PaddingLike, add_bias, normal_init, pair)
from unmask_jax.models.layers.padding import out_size, pre_pad, resolved_padding
from unmask_jax.models.layers.weight_matmul import weight_matmul
from unmask_jax.models.layers.winograd import conv2d_winograd


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


def conv2d(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
) -> Array:
    """NHWC convolution with torch-style ``padding``, kernel (kH, kW, in, out).

    The padding is applied with an explicit ``jnp.pad`` followed by a VALID convolution:
    on XLA CPU the kernel gradient of a convolution with built-in padding can be many times
    slower than the same computation on a pre-padded input (``benchmarks/README.md``).
    """
    strides, dilation = pair(strides), pair(dilation)
    x = pre_pad(x, padding, kernel.shape[:2], strides, dilation)
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding="VALID", rhs_dilation=dilation,
        dimension_numbers=DIMS)


def conv2d_gemm(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
) -> Array:
    """:func:`conv2d` as im2col + one GEMM (kernel (kH, kW, in, out) viewed as
    (kH*kW*in, out)). Faster on XLA CPU for spatially small inputs with many channels,
    where the convolution's kernel gradient is slow; the patches cost kH*kW/stride^2 times
    the input in memory. Taps that only ever read padding (a dilation as large as the
    input) are left out: they add exact zeros."""
    sh, sw = pair(strides)
    dh, dw = pair(dilation)
    kh, kw, cin, cout = kernel.shape
    (pt, _), (pl, _) = resolved_padding(padding, x.shape[1:3], (kh, kw), (sh, sw), (dh, dw))
    n_h, n_w = x.shape[1:3]
    x = pre_pad(x, padding, (kh, kw), (sh, sw), (dh, dw))
    b, h, w, _ = x.shape
    ho = (h - (kh - 1) * dh - 1) // sh + 1
    wo = (w - (kw - 1) * dw - 1) // sw + 1

    def reads_input(tap: int, d: int, s: int, out: int, lo: int, n: int) -> bool:
        """Whether some output position of this tap reads an input (not padding) pixel."""
        first = tap * d - lo
        return first + (out - 1) * s >= 0 and first < n

    # Taps that read only padding (large dilations on small inputs) add exact zeros: left
    # out of the patches and of the kernel.
    taps = [(i, j) for i in range(kh) for j in range(kw)
            if reads_input(i, dh, sh, ho, pt, n_h) and reads_input(j, dw, sw, wo, pl, n_w)]
    if not taps:
        return jnp.zeros((b, ho, wo, cout), x.dtype)
    patches = [
        lax.slice(x, (0, i * dh, j * dw, 0),
                  (b, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, cin),
                  (1, sh, sw, 1))
        for i, j in taps
    ]
    cols = jnp.concatenate(patches, axis=-1)  # (b, ho, wo, taps*cin), tap-major
    if len(taps) == kh * kw:
        weights = kernel.reshape(kh * kw * cin, cout)
    else:
        weights = jnp.concatenate([kernel[i, j] for i, j in taps], axis=0)
    return weight_matmul(cols.reshape(b * ho * wo, len(taps) * cin),
                         weights).reshape(b, ho, wo, cout)


#: The forms a ``Conv`` (and ``SNConv``) can run, by ``impl`` name.
CONV_FORMS = {"conv": conv2d, "gemm": conv2d_gemm, "xla": conv2d_xla,
              "winograd": conv2d_winograd}


def conv_impl(impl: str, x_shape: Sequence[int], kernel_hw: tuple[int, int],
              strides: int | Sequence[int], padding: PaddingLike,
              dilation: int | Sequence[int], auto_gemm_max_pixels: int) -> str:
    """What a convolution of this geometry runs for ``impl``: explicit names are kept;
    'auto' is :func:`~unmask_jax.models.layers.dispatch.cpu_conv_impl` on the CPU platform,
    'xla' elsewhere."""
    if impl != dispatch.AUTO:
        return impl
    if not dispatch.cpu_tuned():
        return "xla"
    strides, dilation = pair(strides), pair(dilation)
    pads = resolved_padding(padding, x_shape[1:3], kernel_hw, strides, dilation)
    out_pixels = math.prod(out_size(n, k, s, p, d) for n, k, s, p, d in zip(
        x_shape[1:3], kernel_hw, strides, pads, dilation))
    return dispatch.cpu_conv_impl(out_pixels, auto_gemm_max_pixels)


class Conv(nn.Module):
    """2-D convolution equivalent to ``torch.nn.Conv2d`` (NHWC, kernel (kH, kW, in, out)).

    ``padding`` is torch-style: an int p means ((p, p), (p, p)); 'SAME'/'VALID' strings and
    explicit ((top, bottom), (left, right)) pairs are also accepted.

    ``impl``: 'xla' (:func:`conv2d_xla`), 'conv' (:func:`conv2d`), 'gemm'
    (:func:`conv2d_gemm`), 'winograd' (:func:`conv2d_winograd`, 3x3 stride 1 only), a mix
    of them ('FORWARD/GRADS' or 'FORWARD/X_GRADS:KERNEL_GRADS', e.g. 'conv/conv:winograd',
    see :func:`~unmask_jax.models.layers.dispatch.run_impl`) or 'auto' (default). 'auto' on
    the CPU platform: 'gemm' when the output has at most ``auto_gemm_max_pixels`` pixels per
    image (the U-Net's small inner blocks, where the im2col GEMM's gradients are faster on
    XLA CPU), else 'conv'; on other platforms: 'xla' (see
    :mod:`~unmask_jax.models.layers.dispatch`). ``split_batch``: run 'conv' per image chunk
    (:func:`batch_chunked`); None (default) = on the CPU platform only. Same numbers up to
    float rounding.
    """

    features: int
    kernel_size: int | Sequence[int] = 4
    strides: int | Sequence[int] = 2
    padding: PaddingLike = 1
    dilation: int | Sequence[int] = 1
    use_bias: bool = True
    impl: str = "auto"
    auto_gemm_max_pixels: int = 256
    split_batch: bool | None = None
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
        impl = conv_impl(self.impl, x.shape, (kh, kw), self.strides, self.padding,
                         self.dilation, self.auto_gemm_max_pixels)
        y = dispatch.run_impl(self, CONV_FORMS, impl, "conv", x,
                              (kernel.astype(self.dtype), self.strides, self.padding,
                               self.dilation))
        return add_bias(self, y)
