"""``torch.nn.ConvTranspose2d`` in NHWC (any kernel, stride, padding, output_padding;
dilation 1, groups 1): three implementations and the :class:`ConvTranspose` module that
picks one.

Kernel layout (kH, kW, out, in) (the layout of Flax ``ConvTranspose(transpose_kernel=True)``
and of Keras ``Conv2DTranspose``); torch weight (in, out, kH, kW) =
``kernel.transpose(3, 2, 0, 1)`` -- no spatial flip.

- :func:`conv_transpose_xla`: ``lax.conv_transpose`` (what ``impl='auto'`` runs off the
  CPU platform);
- :func:`conv_transpose_subpixel`: one stride-1 convolution producing ``stride**2`` phases
  that are interleaved (depth-to-space) and cropped;
- :func:`conv_transpose_gemm`: one GEMM + col2im (what PyTorch does).

The last two are the CPU-measured forms (see :mod:`~unmask_jax.models.layers.dispatch`):
on XLA CPU the gradient of ``lax.conv_transpose`` is many times slower than PyTorch's
(``benchmarks/README.md``).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from unmask_jax.models.layers import dispatch
from unmask_jax.models.layers.common import (
    DIMS, Array, Dtype, Initializer, add_bias, normal_init, pair)
from unmask_jax.models.layers.conv import conv2d
from unmask_jax.models.layers.weight_matmul import weight_matmul


def _phase_kernel(x: Array, kernel: Array, strides: int | Sequence[int],
                  output_padding: int | Sequence[int]
                  ) -> tuple[tuple[int, int], tuple[int, int], Array]:
    """Checks a transposed convolution's arguments and returns (strides, taps per phase
    (T_h, T_w) = ceil(k / s), kernel zero-padded at the high end to (s*T) taps per axis)."""
    sh, sw = pair(strides)
    oph, opw = pair(output_padding)
    kh, kw, _, cin = kernel.shape
    if x.shape[-1] != cin:
        raise ValueError(f"input has {x.shape[-1]} channels, kernel expects {cin}")
    if not (0 <= oph < max(sh, 1) and 0 <= opw < max(sw, 1)):
        raise ValueError("output_padding must be smaller than the stride")
    th, tw = math.ceil(kh / sh), math.ceil(kw / sw)
    k = jnp.pad(kernel, ((0, sh * th - kh), (0, sw * tw - kw), (0, 0), (0, 0)))
    return (sh, sw), (th, tw), k


def _interleave_and_crop(y: Array, in_hw: Sequence[int], kernel_hw: Sequence[int],
                         padding: int | Sequence[int], output_padding: int | Sequence[int]
                         ) -> Array:
    """Phases (b, u, v, s_h, s_w, c) -> the transposed-convolution output: depth-to-space
    interleave to (b, u*s_h, v*s_w, c) (length (n - 1) * s + k per axis and more), then
    torch's crop [p, (n - 1) * s + k - p + output_padding)."""
    b, u, v, sh, sw, c = y.shape
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(b, u * sh, v * sw, c)
    (ph, pw), (oph, opw) = pair(padding), pair(output_padding)
    full_h, full_w = ((n - 1) * s + k for n, s, k in zip(in_hw, (sh, sw), kernel_hw))
    return y[:, ph : full_h - ph + oph, pw : full_w - pw + opw, :]


def conv_transpose_subpixel(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int],
    padding: int | Sequence[int],
    output_padding: int | Sequence[int] = 0,
) -> Array:
    """``torch.nn.functional.conv_transpose2d`` in sub-pixel form (NHWC, no bias).

    Args:
      x: (B, H, W, Cin).
      kernel: (kH, kW, Cout, Cin); torch weight (Cin, Cout, kH, kW) is
        ``kernel.transpose(3, 2, 0, 1)``.
      strides, padding, output_padding: torch semantics (ints or (h, w) pairs),
        output size (H - 1) * s - 2 p + k + output_padding. Dilation 1, groups 1.

    For each axis with stride s and kernel k, let T = ceil(k / s). The kernel is zero-padded
    to s*T taps and split into s phases of T taps; the un-cropped output at position
    s*u + r is sum_t xpad[u + t] * w[r + s*(T-1-t)] with xpad = x padded by T-1 on both sides.
    All phases are computed by ONE stride-1 VALID convolution with s_h*s_w*Cout output
    channels, interleaved (depth-to-space) and then cropped by [p, L - p + output_padding),
    L = (H - 1) * s + k.
    """
    (sh, sw), (th, tw), k = _phase_kernel(x, kernel, strides, output_padding)
    cout, cin = kernel.shape[2:]
    # k[s*j + r] -> (j, r); the stride-1 conv tap t uses j = T-1-t (flip j).
    k = k.reshape(th, sh, tw, sw, cout, cin)[::-1, :, ::-1, :]
    # -> (t_h, t_w, cin, r_h, r_w, cout) -> HWIO with O = (r_h, r_w, cout).
    k = k.transpose(0, 2, 5, 1, 3, 4).reshape(th, tw, cin, sh * sw * cout)
    b, h, w, _ = x.shape
    y = conv2d(x, k.astype(x.dtype), 1, ((th - 1, th - 1), (tw - 1, tw - 1)))
    u, v = h + th - 1, w + tw - 1
    return _interleave_and_crop(y.reshape(b, u, v, sh, sw, cout), x.shape[1:3],
                                kernel.shape[:2], padding, output_padding)


def conv_transpose_gemm(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int],
    padding: int | Sequence[int],
    output_padding: int | Sequence[int] = 0,
) -> Array:
    """Same as :func:`conv_transpose_subpixel`, computed as one GEMM plus col2im (what
    PyTorch does): ``z = x @ W`` with W viewed as (Cin, kH*kW*Cout), then each kernel tap's
    slice of ``z`` is added into its output phase at its shift. Faster on XLA CPU than the
    sub-pixel convolution when the input is spatially small and the kernel large (the
    U-Net's inner blocks: 1x1 .. 16x16 with 512-1024 channels), slower for large inputs
    (the col2im adds touch kH*kW/stride^2 times the output)."""
    (sh, sw), (th, tw), k = _phase_kernel(x, kernel, strides, output_padding)
    cout, cin = kernel.shape[2:]
    b, h, w, _ = x.shape
    # z[b, i, j, a, c, o] = sum_ci x[b, i, j, ci] * k[a, c, o, ci]: one GEMM against the
    # kernel viewed as (kH*kW*out, in), its stored layout.
    z = weight_matmul(x.reshape(b * h * w, cin), k.astype(x.dtype).reshape(-1, cin), True)
    # Tap a = s * j + r lands in phase r at phase position i + j.
    z = z.reshape(b, h, w, th, sh, tw, sw, cout)
    y = None  # phases (b, h + th - 1, w + tw - 1, sh, sw, cout)
    for jh in range(th):
        for jw in range(tw):
            part = jnp.pad(z[:, :, :, jh, :, jw, :, :],
                           ((0, 0), (jh, th - 1 - jh), (jw, tw - 1 - jw), (0, 0), (0, 0), (0, 0)))
            y = part if y is None else y + part
    return _interleave_and_crop(y, x.shape[1:3], kernel.shape[:2], padding, output_padding)


def conv_transpose_xla(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int],
    padding: int | Sequence[int],
    output_padding: int | Sequence[int] = 0,
) -> Array:
    """Same as :func:`conv_transpose_subpixel` with ``lax.conv_transpose``."""
    sh, sw = pair(strides)
    ph, pw = pair(padding)
    oph, opw = pair(output_padding)
    kh, kw = kernel.shape[:2]
    pads = ((kh - 1 - ph, kh - 1 - ph + oph), (kw - 1 - pw, kw - 1 - pw + opw))
    return lax.conv_transpose(
        x, kernel.astype(x.dtype), (sh, sw), pads, dimension_numbers=DIMS, transpose_kernel=True
    )


class ConvTranspose(nn.Module):
    """``torch.nn.ConvTranspose2d`` (NHWC). Kernel param (kH, kW, out, in).

    ``impl``: 'subpixel' (:func:`conv_transpose_subpixel`), 'gemm'
    (:func:`conv_transpose_gemm`), 'xla' (:func:`conv_transpose_xla`) or 'auto' (default).
    'auto' on the CPU platform: 'gemm' when the input has at most ``auto_gemm_max_pixels``
    pixels or the output few channels, else 'subpixel/gemm' (the sub-pixel form forward,
    the GEMM form's gradients:
    :func:`~unmask_jax.models.layers.dispatch.cpu_conv_transpose_impl`); on other
    platforms: 'xla' (see :mod:`~unmask_jax.models.layers.dispatch`). ``split_batch`` as
    in :class:`Conv` (applies to 'subpixel'). All give the same result up to float
    rounding.
    """

    features: int
    kernel_size: int | Sequence[int] = 4
    strides: int | Sequence[int] = 2
    padding: int | Sequence[int] = 1
    output_padding: int | Sequence[int] = 0
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
            "kernel", self.kernel_init, (kh, kw, self.features, x.shape[-1]), self.param_dtype
        )
        impl = self.impl
        if impl == dispatch.AUTO:
            if dispatch.cpu_tuned():
                impl = dispatch.cpu_conv_transpose_impl(
                    x.shape[1] * x.shape[2], self.features, self.auto_gemm_max_pixels)
            else:
                impl = "xla"
        fns = {"subpixel": conv_transpose_subpixel, "gemm": conv_transpose_gemm,
               "xla": conv_transpose_xla}
        y = dispatch.run_impl(self, fns, impl, "subpixel", x,
                              (kernel.astype(self.dtype), self.strides, self.padding,
                               self.output_padding))
        return add_bias(self, y)
