"""The CPU forms of the layers: the products and their gradients in the forms measured
faster on XLA CPU than the plain XLA ops (figures and the commands that
measure them: ``benchmarks/README.md``). Same numbers as the plain forms up to float
rounding; the rule that picks among them is :class:`unmask_jax.backends.cpu.CpuForms`.

- :func:`conv2d`: a VALID convolution on an explicitly zero-padded input (the kernel
  gradient of a convolution with built-in padding is many times slower on XLA CPU);
- :func:`conv2d_gemm`: im2col + one GEMM (:func:`weight_matmul`: the weight is never
  transposed);
- :func:`conv_transpose_subpixel`: one stride-1 convolution producing ``stride**2`` phases,
  interleaved (depth-to-space) and cropped; :func:`conv_transpose_gemm`: one GEMM + col2im
  (what PyTorch does);
- :func:`batch_chunked`: a form applied per batch chunk (XLA CPU's convolutions scale
  worse than linearly with the batch);
- :func:`forward_with_grads_of`: one form forward, another's gradients (custom VJP).

Kernel layouts as the layers': ``Conv`` (kH, kW, in, out), ``ConvTranspose`` (kH, kW, out,
in).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from unmask_jax.models.layers.common import DIMS, Array, PaddingLike, pair
from unmask_jax.models.layers.padding import pre_pad, resolved_padding


# -- GEMMs that read a large weight in its stored layout ------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def weight_matmul(a: Array, w: Array, w_transposed: bool = False) -> Array:
    """``a @ w`` (w: (K, N)) or, with ``w_transposed``, ``a @ w.T`` (w: (N, K)), for a
    small activation matrix ``a`` (M, K) and a large weight, with the forward and both
    backward products arranged so that the weight is only ever read in its stored layout.

    XLA CPU's GEMMs take their operands in (M, K) x (K, N) form and otherwise copy the
    operand into it. Left to autodiff, the input gradient ``dy @ w.T`` (and, for a
    transposed convolution's (kH, kW, out, in) kernel, the forward product too) transposes
    the whole weight every step: 16-32 MB per inner U-Net layer (what that copy costs:
    ``benchmarks/README.md``). Here only the small activation-sized operands are
    transposed.
    """
    return jnp.dot(w, a.T).T if w_transposed else jnp.dot(a, w)


def _weight_matmul_fwd(a, w, w_transposed):
    return weight_matmul(a, w, w_transposed), (a, w)


def _weight_matmul_bwd(w_transposed, res, dy):
    a, w = res
    if w_transposed:  # y = a @ w.T, w (N, K)
        return jnp.dot(dy, w), jnp.dot(dy.T, a)
    return jnp.dot(w, dy.T).T, jnp.dot(a.T, dy)  # y = a @ w, w (K, N)


weight_matmul.defvjp(_weight_matmul_fwd, _weight_matmul_bwd)


# -- batch chunking --------------------------------------------------------------------------

def batch_chunked(fn: Callable[..., Array], x: Array, *args: Any,
                  max_chunks: int = 8) -> Array:
    """``fn(x, *args)`` applied to at most ``max_chunks`` batch chunks, concatenated.

    XLA CPU's convolutions (forward and gradients) scale worse than linearly with the
    batch; running the images separately restores linear scaling (figures:
    ``benchmarks/README.md``). Same numbers as ``fn(x, *args)`` for per-image ``fn``.
    """
    b = x.shape[0]
    chunks = min(b, max_chunks)
    if chunks <= 1:
        return fn(x, *args)
    size = -(-b // chunks)
    return jnp.concatenate([fn(x[i:i + size], *args) for i in range(0, b, size)], axis=0)


# -- convolutions ----------------------------------------------------------------------------

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


# -- transposed convolutions -----------------------------------------------------------------

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


# -- one form forward, another's gradients ---------------------------------------------------

def forward_with_grads_of(forward: Callable[..., Array], grads_of: Callable[..., Array],
                          x: Array, kernel: Array, static: tuple[Any, ...]) -> Array:
    """``forward(x, kernel, *static)``, differentiated as ``grads_of`` (the same function of
    x and kernel in another form): each form where XLA runs it fastest."""

    @jax.custom_vjp
    def f(x: Array, kernel: Array) -> Array:
        return forward(x, kernel, *static)

    def f_fwd(x: Array, kernel: Array):
        return forward(x, kernel, *static), (x, kernel)

    def f_bwd(res, g: Array):
        x, kernel = res
        _, vjp = jax.vjp(lambda a, k: grads_of(a, k, *static), x, kernel)
        return vjp(g)

    f.defvjp(f_fwd, f_bwd)
    return f(x, kernel)
