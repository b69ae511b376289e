"""PyTorch-compatible building blocks for the Flax (Linen) GAN models.

Every layer here is NHWC and matches a PyTorch layer numerically, so that weights can be
exported to / imported from PyTorch by transposes only (see ``unmask_jax.export``):

- :class:`Conv`: ``torch.nn.Conv2d`` with explicit torch-style padding. Kernel layout
  (kH, kW, in, out); torch weight = ``kernel.transpose(3, 2, 0, 1)``. Computed either as a
  convolution on an explicitly padded input (:func:`conv2d`) or, for spatially small
  outputs, as im2col + one GEMM (:func:`conv2d_gemm`).
- :class:`ConvTranspose`: ``torch.nn.ConvTranspose2d`` (any kernel, stride, padding,
  output_padding; dilation 1, groups 1). Kernel layout (kH, kW, out, in) (the layout of
  Flax ``ConvTranspose(transpose_kernel=True)`` and of Keras ``Conv2DTranspose``); torch
  weight (in, out, kH, kW) = ``kernel.transpose(3, 2, 0, 1)`` -- no spatial flip. Computed
  in *sub-pixel* form (:func:`conv_transpose_subpixel`: one stride-1 convolution producing
  ``stride**2`` phases that are interleaved (depth-to-space) and cropped) or, for spatially
  small inputs, as one GEMM + col2im (:func:`conv_transpose_gemm`), never with
  ``lax.conv_transpose`` by default: on XLA CPU its gradient is ~10-20x slower than
  PyTorch's.

- :class:`BatchNorm`: torch / Keras semantics. ``momentum`` is in the Flax convention
  (running = momentum * running + (1 - momentum) * batch; torch momentum 0.1 == 0.9 here).
  The running variance is updated with the unbiased batch variance (n / (n - 1)) like
  ``torch.nn.BatchNorm2d`` and Keras' fused batch norm (n = 1 falls back to the biased
  value, as TensorFlow does; torch raises there). Variables: params ``scale``/``bias``,
  batch_stats ``mean``/``var`` (same names as ``flax.linen.BatchNorm``).
- :class:`InstanceNorm`: ``torch.nn.InstanceNorm2d`` (eps 1e-5, affine configurable, no
  running statistics).

Measured on XLA CPU (jax 0.10.2; see ``benchmarks/compare_torch.py --breakdown``): the
kernel gradient of a convolution with built-in padding, and of any convolution on a small
(<= 16x16) input with 512+ channels, is several times slower than the same product done
by a GEMM, and convolutions scale worse than linearly with the batch. The
``impl='auto'`` defaults pick the faster form per layer shape, and on the CPU backend the
large convolutions run per batch chunk (``split_batch``). All forms give the same numbers
up to float rounding (tests compare them with PyTorch and lax).

All layers take ``dtype`` (compute dtype) and ``param_dtype`` (storage dtype). Normalisation
statistics are always computed in float32.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
PaddingLike = int | str | Sequence[tuple[int, int]]

_DIMS = ("NHWC", "HWIO", "NHWC")


def normal_init(stddev: float = 0.02, mean: float = 0.0) -> Initializer:
    """N(mean, stddev) initialiser (pix2pix ``init_type='normal'``, gain 0.02)."""

    def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
        # Drawn flat and reshaped: same values as drawing with ``shape`` directly, but XLA
        # CPU compiles the 1-D threefry several times faster than the 4-D one.
        flat = jax.random.normal(key, (math.prod(shape),), dtype)
        return (mean + stddev * flat).reshape(shape)

    return init


def leaky_relu(x: Array, negative_slope: float) -> Array:
    """LeakyReLU with an explicit slope (torch and Flax default to 0.01, pix2pix uses 0.2)."""
    return jnp.where(x >= 0, x, negative_slope * x)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return (int(v[0]), int(v[1]))


def torch_padding(padding: PaddingLike) -> str | tuple[tuple[int, int], tuple[int, int]]:
    """Convert torch-style padding (int or (ph, pw)) to lax padding ((ph, ph), (pw, pw)).

    Strings ('SAME', 'VALID') and explicit pairs of pairs are passed through.
    """
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple(padding)
    if len(pads) == 2 and all(isinstance(p, int) for p in pads):
        return ((pads[0], pads[0]), (pads[1], pads[1]))
    if len(pads) == 2 and all(len(p) == 2 for p in pads):
        return (tuple(pads[0]), tuple(pads[1]))  # type: ignore[return-value]
    raise ValueError(f"unsupported padding {padding!r}")


def _resolved_padding(padding: PaddingLike, spatial: Sequence[int], kernel: Sequence[int],
                      strides: Sequence[int], dilation: Sequence[int]
                      ) -> tuple[tuple[int, int], ...]:
    """Explicit ((lo, hi), (lo, hi)) padding for torch-style ints or 'SAME'/'VALID'."""
    pads = torch_padding(padding)
    if isinstance(pads, str):
        eff = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
        pads = lax.padtype_to_pads(tuple(spatial), eff, tuple(strides), pads)
    return tuple((int(lo), int(hi)) for lo, hi in pads)


def _out_size(n: int, k: int, s: int, pad: tuple[int, int], d: int) -> int:
    return (n + pad[0] + pad[1] - (k - 1) * d - 1) // s + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def weight_matmul(a: Array, w: Array, w_transposed: bool = False) -> Array:
    """``a @ w`` (w: (K, N)) or, with ``w_transposed``, ``a @ w.T`` (w: (N, K)), for a
    small activation matrix ``a`` (M, K) and a large weight, with the forward and both
    backward products arranged so that the weight is only ever read in its stored layout.

    XLA CPU's GEMMs take their operands in (M, K) x (K, N) form and otherwise copy the
    operand into it. Left to autodiff, the input gradient ``dy @ w.T`` (and, for a
    transposed convolution's (kH, kW, out, in) kernel, the forward product too) transposes
    the whole weight every step: 16-32 MB per inner U-Net layer (measured: 8x8x1024 -> 512
    transposed convolution forward 30 ms with the copy, 8-12 ms without). Here only the
    small activation-sized operands are transposed.
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



def _pre_pad(x: Array, padding: PaddingLike, kernel_hw: Sequence[int],
             strides: tuple[int, int], dilation: tuple[int, int]) -> Array:
    """``x`` (NHWC) explicitly zero-padded by the torch-style / 'SAME' / 'VALID' padding."""
    pads = _resolved_padding(padding, x.shape[1:3], kernel_hw, strides, dilation)
    if any(p != 0 for pair in pads for p in pair):
        x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    return x


def conv2d(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
) -> Array:
    """NHWC convolution with torch-style ``padding``, kernel (kH, kW, in, out).

    The padding is applied with an explicit ``jnp.pad`` followed by a VALID convolution:
    on XLA CPU the kernel gradient of a convolution with built-in padding can be ~30x
    slower (measured 1.37 s vs 0.04 s for a 64x64x128 -> 256 2x2 conv) than the same
    computation on a pre-padded input.
    """
    strides, dilation = _pair(strides), _pair(dilation)
    x = _pre_pad(x, padding, kernel.shape[:2], strides, dilation)
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding="VALID", rhs_dilation=dilation,
        dimension_numbers=_DIMS)


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
    the input in memory."""
    sh, sw = _pair(strides)
    dh, dw = _pair(dilation)
    kh, kw, cin, cout = kernel.shape
    x = _pre_pad(x, padding, (kh, kw), (sh, sw), (dh, dw))
    b, h, w, _ = x.shape
    ho = (h - (kh - 1) * dh - 1) // sh + 1
    wo = (w - (kw - 1) * dw - 1) // sw + 1
    patches = [
        lax.slice(x, (0, i * dh, j * dw, 0),
                  (b, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, cin),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ]
    cols = jnp.concatenate(patches, axis=-1)  # (b, ho, wo, kh*kw*cin), tap-major
    return weight_matmul(cols.reshape(b * ho * wo, kh * kw * cin),
                         kernel.reshape(kh * kw * cin, cout)).reshape(b, ho, wo, cout)


def batch_chunked(fn: Callable[..., Array], x: Array, *args: Any,
                  max_chunks: int = 8) -> Array:
    """``fn(x, *args)`` applied to at most ``max_chunks`` batch chunks, concatenated.

    XLA CPU's convolutions (forward and gradients) scale worse than linearly with the batch
    (measured 2x slower than PyTorch at batch 4 for 128x128x64 -> 128, at parity at
    batch 1); running the images separately restores linear scaling.
    """
    b = x.shape[0]
    chunks = min(b, max_chunks)
    if chunks <= 1:
        return fn(x, *args)
    size = -(-b // chunks)
    return jnp.concatenate([fn(x[i:i + size], *args) for i in range(0, b, size)], axis=0)


def _split_on_cpu(setting: bool | None) -> bool:
    return jax.default_backend() == "cpu" if setting is None else bool(setting)


def _run_impl(module: nn.Module, fns: dict[str, Callable[..., Array]], impl: str,
              chunked_impl: str, x: Array, args: tuple[Any, ...]) -> Array:
    """``fns[impl](x, *args)`` in the module's compute dtype; ``chunked_impl`` runs per batch
    chunk when the module's ``split_batch`` says so (see :func:`batch_chunked`)."""
    if impl not in fns:
        raise ValueError(f"unknown {type(module).__name__} impl {module.impl!r}; choose from "
                         f"{sorted(fns) + ['auto']}")
    x = x.astype(module.dtype)
    if impl == chunked_impl and _split_on_cpu(module.split_batch):
        return batch_chunked(fns[impl], x, *args)
    return fns[impl](x, *args)


def _add_bias(module: nn.Module, y: Array) -> Array:
    """Adds the module's ``bias`` param (``features`` long) when ``use_bias``."""
    if not module.use_bias:
        return y
    bias = module.param("bias", module.bias_init, (module.features,), module.param_dtype)
    return y + bias.astype(module.dtype)


class Conv(nn.Module):
    """2-D convolution equivalent to ``torch.nn.Conv2d`` (NHWC, kernel (kH, kW, in, out)).

    ``padding`` is torch-style: an int p means ((p, p), (p, p)); 'SAME'/'VALID' strings and
    explicit ((top, bottom), (left, right)) pairs are also accepted.

    ``impl``: 'conv' (:func:`conv2d`), 'gemm' (:func:`conv2d_gemm`) or 'auto' (default:
    'gemm' when the output has at most ``auto_gemm_max_pixels`` pixels per image, else
    'conv'; on XLA CPU the im2col GEMM's gradients are up to ~10x faster for the U-Net's
    small inner blocks). ``split_batch``: run 'conv' per image chunk (:func:`batch_chunked`);
    None (default) = on the CPU backend only. Same numbers up to float rounding.
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
        kh, kw = _pair(self.kernel_size)
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype
        )
        impl = self.impl
        if impl == "auto":
            out_pixels = math.prod(
                _out_size(n, k, s, p, d) for n, k, s, p, d in zip(
                    x.shape[1:3], (kh, kw), _pair(self.strides),
                    _resolved_padding(self.padding, x.shape[1:3], (kh, kw),
                                      _pair(self.strides), _pair(self.dilation)),
                    _pair(self.dilation)))
            impl = "gemm" if out_pixels <= self.auto_gemm_max_pixels else "conv"
        y = _run_impl(self, {"conv": conv2d, "gemm": conv2d_gemm}, impl, "conv", x,
                      (kernel.astype(self.dtype), self.strides, self.padding, self.dilation))
        return _add_bias(self, y)


def _phase_kernel(x: Array, kernel: Array, strides: int | Sequence[int],
                  output_padding: int | Sequence[int]
                  ) -> tuple[tuple[int, int], tuple[int, int], Array]:
    """Checks a transposed convolution's arguments and returns (strides, taps per phase
    (T_h, T_w) = ceil(k / s), kernel zero-padded at the high end to (s*T) taps per axis)."""
    sh, sw = _pair(strides)
    oph, opw = _pair(output_padding)
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
    (ph, pw), (oph, opw) = _pair(padding), _pair(output_padding)
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
    slice of ``z`` is added into its output phase at its shift. Faster than the sub-pixel
    convolution when the input is spatially small and the kernel large (the U-Net's inner
    blocks: 1x1 .. 16x16 with 512-1024 channels), slower for large inputs (the col2im adds
    touch kH*kW/stride^2 times the output)."""
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
    """Same as :func:`conv_transpose_subpixel` with ``lax.conv_transpose`` (reference)."""
    sh, sw = _pair(strides)
    ph, pw = _pair(padding)
    oph, opw = _pair(output_padding)
    kh, kw = kernel.shape[:2]
    pads = ((kh - 1 - ph, kh - 1 - ph + oph), (kw - 1 - pw, kw - 1 - pw + opw))
    return lax.conv_transpose(
        x, kernel.astype(x.dtype), (sh, sw), pads, dimension_numbers=_DIMS, transpose_kernel=True
    )


class ConvTranspose(nn.Module):
    """``torch.nn.ConvTranspose2d`` (NHWC). Kernel param (kH, kW, out, in).

    ``impl``: 'subpixel' (:func:`conv_transpose_subpixel`), 'gemm'
    (:func:`conv_transpose_gemm`), 'auto' (default: 'gemm' when the input has at most
    ``auto_gemm_max_pixels`` pixels, else 'subpixel'; measured on XLA CPU) or 'xla'
    (``lax.conv_transpose``: identical numbers, ~10-20x slower gradients on XLA CPU).
    ``split_batch`` as in :class:`Conv` (applies to 'subpixel'). All give the same result
    up to float rounding.
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
        kh, kw = _pair(self.kernel_size)
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, self.features, x.shape[-1]), self.param_dtype
        )
        impl = self.impl
        if impl == "auto":
            small = x.shape[1] * x.shape[2] <= self.auto_gemm_max_pixels
            impl = "gemm" if small else "subpixel"
        fns = {"subpixel": conv_transpose_subpixel, "gemm": conv_transpose_gemm,
               "xla": conv_transpose_xla}
        y = _run_impl(self, fns, impl, "subpixel", x,
                      (kernel.astype(self.dtype), self.strides, self.padding,
                       self.output_padding))
        return _add_bias(self, y)


class BatchNorm(nn.Module):
    """BatchNorm over all but the last axis with torch/Keras running-statistics semantics.

    Attributes:
      momentum: Flax convention, running = momentum * running + (1 - momentum) * batch.
        torch ``momentum=0.1`` is 0.9 here; Keras ``momentum=0.99`` is 0.99.
      epsilon: torch 1e-5, Keras 1e-3.
      unbiased_running_var: update ``var`` with the unbiased batch variance (torch, Keras
        fused); normalisation always uses the biased one.
      axis_name: optional mapped axis name for cross-replica statistics (shard_map / pmap);
        not needed under global-view ``jax.jit`` where the batch axis is already global.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    unbiased_running_var: bool = True
    axis_name: str | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scale_init: Initializer = normal_init(0.02, mean=1.0)
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool) -> Array:
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x32 = x.astype(jnp.float32)
        axes = tuple(range(x.ndim - 1))
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean = jnp.mean(x32, axis=axes)
            if self.axis_name is not None:
                mean = lax.pmean(mean, self.axis_name)
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if self.axis_name is not None:
                var = lax.pmean(var, self.axis_name)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                if self.axis_name is not None:
                    n = n * lax.psum(1, self.axis_name)
                # n / (n - 1); n = 1 falls back to the biased value (TensorFlow's rule).
                factor = n / jnp.maximum(n - 1, 1)
                unbiased = var * factor if self.unbiased_running_var else var
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * lax.stop_gradient(mean)
                ra_var.value = m * ra_var.value + (1.0 - m) * lax.stop_gradient(unbiased)
        mul = lax.rsqrt(var + self.epsilon)
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
            mul = mul * scale.astype(jnp.float32)
        y = (x32 - mean) * mul
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (c,), self.param_dtype).astype(jnp.float32)
        return y.astype(self.dtype)


class InstanceNorm(nn.Module):
    """``torch.nn.InstanceNorm2d``: per-sample, per-channel normalisation over H, W.

    eps 1e-5, biased variance, ``affine=False`` by default (torch's default); with
    ``affine=True`` params ``scale`` (init 1) and ``bias`` (init 0). No running statistics.
    """

    epsilon: float = 1e-5
    affine: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        x32 = x.astype(jnp.float32)
        axes = tuple(range(1, x.ndim - 1))
        mean = jnp.mean(x32, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
        y = (x32 - mean) * lax.rsqrt(var + self.epsilon)
        if self.affine:
            scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
            bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
            y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


def apply_norm(
    kind: str,
    x: Array,
    train: bool,
    *,
    name: str,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    unbiased_running_var: bool = True,
    scale_init: Initializer = normal_init(0.02, mean=1.0),
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> Array:
    """Apply a normalisation by name inside a compact method (creates a submodule ``name``).

    'batch' -> :class:`BatchNorm` (running statistics when not ``train``), 'instance' ->
    :class:`InstanceNorm` (affine False, as pix2pix's ``InstanceNorm2d``), 'none' -> identity.
    """
    if kind == "batch":
        return BatchNorm(
            momentum=momentum,
            epsilon=epsilon,
            unbiased_running_var=unbiased_running_var,
            scale_init=scale_init,
            dtype=dtype,
            param_dtype=param_dtype,
            name=name,
        )(x, use_running_average=not train)
    if kind == "instance":
        return InstanceNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)(x)
    if kind == "none":
        return x
    raise ValueError(f"unknown norm {kind!r}; use 'batch', 'instance' or 'none'")


def check_norm(kind: str) -> None:
    """Raise ValueError for an unsupported norm name."""
    if kind not in ("batch", "instance", "none"):
        raise ValueError(f"unknown norm {kind!r}; use 'batch', 'instance' or 'none'")
