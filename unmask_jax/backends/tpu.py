"""TPU: which form each layer runs (:class:`TpuForms`). Every choice is measured on the
compiled program (``--mode=compile --breakdown`` for v5e; ``docs/scale.md``, Efficiency).

- ``Conv`` layers whose output has few channels, at stride 1 without dilation: at most
  :data:`TAPS_MAX_CHANNELS` input x output channels (CBAM's 7 x 7 spatial-attention
  convolution, 2 -> 1), or 1 x 1 with at most :data:`POINTWISE_MAX_OUT` outputs from at
  most :data:`POINTWISE_MAX_IN` inputs (FU-Net's last layer to the image, M-Seg's to the
  mask map). Each output channel is summed as an (N, H, W) map in float32 from the input's
  channels' maps (:func:`conv2d_taps`: shifted slices; for a 1 x 1 kernel, the channels'
  weighted sum). The TPU compiler lays a few-channel NHWC array out with the channels (or
  the batch) in the 128 lanes, 32 to 128 times its size, and runs XLA's convolution and its
  gradients at that width; it lays the (N, H, W) maps out with the width in the lanes.
  GANMasker stage 2 on v5e, 8 per chip: HBM bytes per step 14.53 -> 11.65 GB, estimated
  cycles 103.1 -> 85.0 M. At 16 and more images per chip the trade is mixed (less memory,
  more HBM bytes): a run there compiles with ``model.backend_forms=off`` as well
  (``docs/scale.md``, Efficiency).
- everything else: the plain XLA forms (a space-to-depth form for the few-channel stride-2
  layers and a strided-slice max pool were measured slower and are not here).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from unmask_jax.backends import PlainForms
from unmask_jax.models.layers.common import pair
from unmask_jax.models.layers.padding import resolved_padding

#: ``Conv`` layers with at most this many input x output channels run :func:`conv2d_taps`.
TAPS_MAX_CHANNELS = 4
#: ... and 1 x 1 ``Conv`` layers with at most this many output channels, from at most
#: :data:`POINTWISE_MAX_IN` input channels (a wider input fills the lanes and its sum is a
#: contraction for the matrix unit: UnVeilify's to-RGB layers, 256 and more channels, took
#: 3.9 times the HBM bytes per step as channel sums).
POINTWISE_MAX_OUT = 4
POINTWISE_MAX_IN = 64


def _taps_apply(maps: Sequence[jax.Array], kernel: jax.Array, out_hw: tuple[int, int]
                ) -> list[jax.Array]:
    """sum over (i, j, c) of kernel[i, j, c, o] * maps[c][:, i:i + H, j:j + W], per output
    channel o; maps: C (N, Hp, Wp) float32 arrays, kernel (kH, kW, C, O) float32 -> O
    (N, H, W) maps."""
    kh, kw, cin, cout = kernel.shape
    h, w = out_hw
    outs = []
    for o in range(cout):
        acc = None
        for c in range(cin):
            for i in range(kh):
                for j in range(kw):
                    term = kernel[i, j, c, o] * maps[c][:, i:i + h, j:j + w]
                    acc = term if acc is None else acc + term
        outs.append(acc)
    return outs


@jax.custom_vjp
def _taps(maps: tuple[jax.Array, ...], kernel: jax.Array) -> tuple[jax.Array, ...]:
    """Valid correlation of C padded (N, Hp, Wp) maps with a (kH, kW, C, O) kernel: O
    (N, H, W) maps."""
    kh, kw = kernel.shape[:2]
    hp, wp = maps[0].shape[1:]
    return tuple(_taps_apply(maps, kernel, (hp - kh + 1, wp - kw + 1)))


def _taps_fwd(maps, kernel):
    return _taps(maps, kernel), (maps, kernel)


def _taps_bwd(res, g):
    maps, kernel = res
    kh, kw, cin, cout = kernel.shape
    # Input gradient: the output gradient, padded by kernel - 1, correlated with the flipped
    # kernel (input and output channels swapped): shifted slices again.
    gp = [jnp.pad(go, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1))) for go in g]
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dmaps = _taps_apply(gp, flipped, maps[0].shape[1:])
    # Kernel gradient: one sum over (N, H, W) per tap, in the kernel's (kH, kW, C, O) order.
    h, w = g[0].shape[1:]
    dk = jnp.stack([jnp.sum(g[o] * maps[c][:, i:i + h, j:j + w])
                    for i in range(kh) for j in range(kw) for c in range(cin)
                    for o in range(cout)]).reshape(kernel.shape)
    return tuple(dmaps), dk


_taps.defvjp(_taps_fwd, _taps_bwd)


@jax.custom_vjp
def _pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """1 x 1 convolution of (N, H, W, C) float32 with a (C, O) kernel, each output channel
    summed as an (N, H, W) map."""
    return jnp.stack([sum(kernel[c, o] * x[..., c] for c in range(x.shape[-1]))
                      for o in range(kernel.shape[1])], axis=-1)


def _pointwise_fwd(x, kernel):
    return _pointwise(x, kernel), (x, kernel)


def _pointwise_bwd(res, g):
    x, kernel = res
    dx = jnp.stack([sum(kernel[c, o] * g[..., o] for o in range(kernel.shape[1]))
                    for c in range(x.shape[-1])], axis=-1)
    return dx, jnp.einsum("nhwc,nhwo->co", x, g)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def conv2d_taps(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
    """Stride-1, undilated NHWC convolution summed per output channel as (N, H, W) float32
    maps (shifted slices of the input channels' maps; a 1 x 1 kernel with more than
    :data:`TAPS_MAX_CHANNELS` input x output channels: the weighted sum of the channels):
    :func:`unmask_jax.models.layers.conv2d_xla`'s numbers up to float rounding (float32
    sums in another order); the result in ``x``'s dtype."""
    kh, kw, cin, cout = kernel.shape
    (pt, pb), (pl, pr) = resolved_padding(padding, x.shape[1:3], (kh, kw), (1, 1), (1, 1))
    x32, k32 = x.astype(jnp.float32), kernel.astype(jnp.float32)
    if (kh, kw) == (1, 1) and cin * cout > TAPS_MAX_CHANNELS:  # the channels' weighted sum
        x32 = jnp.pad(x32, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        return _pointwise(x32, k32[0, 0]).astype(x.dtype)
    maps = tuple(jnp.pad(x32[..., c], ((0, 0), (pt, pb), (pl, pr))) for c in range(cin))
    return jnp.stack(_taps(maps, k32), axis=-1).astype(x.dtype)


def takes_taps(kernel_shape, strides, dilation) -> bool:
    """Whether :func:`conv2d_taps` runs this convolution (see the module docstring)."""
    kh, kw, cin, cout = kernel_shape
    few = cin * cout <= TAPS_MAX_CHANNELS or (
        (kh, kw) == (1, 1) and cout <= POINTWISE_MAX_OUT and cin <= POINTWISE_MAX_IN)
    return few and pair(strides) == (1, 1) and pair(dilation) == (1, 1)


class TpuForms(PlainForms):
    """The TPU rule (see the module docstring); every other layer in its plain form."""

    name = "tpu"

    def conv2d(self, plain, x, kernel, strides, padding, dilation):
        if takes_taps(kernel.shape, strides, dilation):
            return conv2d_taps(x, kernel, padding)
        return plain(x, kernel, strides, padding, dilation)


FORMS = TpuForms()

__all__ = ["FORMS", "POINTWISE_MAX_IN", "POINTWISE_MAX_OUT", "TAPS_MAX_CHANNELS", "TpuForms",
           "conv2d_taps", "takes_taps"]
