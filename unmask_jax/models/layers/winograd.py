"""A 3x3, stride-1 convolution in Winograd's minimal-filtering form F(2x2, 3x3).

Each 2x2 block of outputs is computed from a 4x4 input tile as
``Y = A^T [(G K G^T) * (B^T D B)] A`` (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016): after the tile transforms, the convolution is 16 independent
GEMMs of (tiles, in) x (in, out), 4 multiplications per output pixel and channel pair
instead of 9. Its kernel gradient, by automatic differentiation, is the same 16 GEMMs
transposed, (in, tiles) x (tiles, out), on transformed tiles 4x the input's size rather
than the 9x of im2col.

On XLA CPU (jax 0.10.2, 2 cores) that kernel gradient makes one 3x3 layer's forward +
backward 25-45% faster at batch 4 (``impl='conv/conv:winograd'``; ``benchmarks/
conv_forms.py --cases winograd``), but a whole network (GANMasker's FU-Net, its stage-2
train step) measured no faster, so the CPU 'auto' rule does not use it
(``benchmarks/README.md``); it is an explicit ``impl`` to measure elsewhere. Same numbers
as the direct convolution up to float rounding (float32: ~1e-7 relative on outputs and
kernel gradients of small layers, ~1e-5 on kernel gradients summed over a large batch).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from unmask_jax.models.layers.common import Array, PaddingLike, pair
from unmask_jax.models.layers.padding import pre_pad

# G (4x3): the kernel transform, K -> G K G^T.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def supports(kernel_hw: Sequence[int], strides: Sequence[int], dilation: Sequence[int]
             ) -> bool:
    """Whether a convolution of this geometry has a Winograd F(2x2, 3x3) form."""
    return tuple(kernel_hw) == (3, 3) and tuple(strides) == (1, 1) and \
        tuple(dilation) == (1, 1)


def _input_transform(d: list[Array]) -> list[Array]:
    """B^T applied along one axis to the four taps d[0..3] of a 4-tap window."""
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _output_transform(m: list[Array]) -> list[Array]:
    """A^T applied along one axis to the four transformed taps m[0..3]."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def input_tiles(xp: Array) -> Array:
    """(16, n * th * tw, c): B^T D B of every 4x4 tile D at stride 2 of the padded input
    ``xp`` (n, 2 th + 2, 2 tw + 2, c). Rows are transformed first (one pass), then
    columns: on XLA CPU faster than 16 strided gathers."""
    n, hp, wp, c = xp.shape
    th, tw = (hp - 2) // 2, (wp - 2) // 2
    pairs = xp.reshape(n, th + 1, 2, wp, c)  # rows 2i + r
    rows = [pairs[:, :th, 0], pairs[:, :th, 1], pairs[:, 1:, 0], pairs[:, 1:, 1]]
    r = jnp.stack(_input_transform(rows)).reshape(4, n, th, tw + 1, 2, c)
    cols = [r[:, :, :, :tw, 0], r[:, :, :, :tw, 1], r[:, :, :, 1:, 0], r[:, :, :, 1:, 1]]
    return jnp.stack(_input_transform(cols), axis=1).reshape(16, n * th * tw, c)


def _image_from_tiles(m: Array) -> Array:
    """(n, 2 th, 2 tw, out) from the 16 transformed products ``m`` (4, 4, n, th, tw, out):
    A^T M A of every tile, the 2x2 blocks laid side by side."""
    rows = _output_transform([m[0], m[1], m[2], m[3]])  # each (4, n, th, tw, out)
    y = jnp.stack([jnp.stack(_output_transform([r[0], r[1], r[2], r[3]]), axis=3)
                   for r in rows], axis=2)  # (n, th, 2, tw, 2, out)
    _, _, n, th, tw, cout = m.shape
    return y.reshape(n, 2 * th, 2 * tw, cout)


def _tiles_from_image(g: Array) -> Array:
    """The adjoint of :func:`_image_from_tiles`: A dY A^T of every 2x2 block dY of the
    output gradient ``g`` (n, 2 th, 2 tw, out), as (4, 4, n, th, tw, out); rows first,
    then columns (the kernel gradient's GEMMs read this)."""
    n, h, w, cout = g.shape
    pairs = g.reshape(n, h // 2, 2, w, cout)
    r0, r1 = pairs[:, :, 0], pairs[:, :, 1]
    r = jnp.stack([r0, r0 + r1, r0 - r1, -r1]).reshape(4, n, h // 2, w // 2, 2, cout)
    c0, c1 = r[..., 0, :], r[..., 1, :]
    return jnp.stack([c0, c0 + c1, c0 - c1, -c1], axis=1)


@jax.custom_vjp
def _to_image(m: Array) -> Array:
    return _image_from_tiles(m)


_to_image.defvjp(lambda m: (_image_from_tiles(m), None),
                 lambda _, g: (_tiles_from_image(g),))


def conv2d_winograd(
    x: Array,
    kernel: Array,
    strides: int | Sequence[int] = 1,
    padding: PaddingLike = 0,
    dilation: int | Sequence[int] = 1,
) -> Array:
    """NHWC convolution with torch-style ``padding``, kernel (3, 3, in, out), stride 1,
    dilation 1, in the F(2x2, 3x3) form (see the module docstring). Odd output sizes are
    computed on one extra zero row / column and cropped."""
    if not supports(kernel.shape[:2], pair(strides), pair(dilation)):
        raise ValueError(
            f"the 'winograd' convolution form is for 3x3 kernels with stride 1 and "
            f"dilation 1; got kernel {tuple(kernel.shape[:2])}, stride {pair(strides)}, "
            f"dilation {pair(dilation)}")
    xp = pre_pad(x, padding, (3, 3), (1, 1), (1, 1))
    n, hp, wp, c = xp.shape
    ho, wo = hp - 2, wp - 2
    xp = jnp.pad(xp, ((0, 0), (0, ho % 2), (0, wo % 2), (0, 0)))
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    g = jnp.asarray(_G, kernel.dtype)
    cout = kernel.shape[-1]
    u = jnp.einsum("ai,ijco,bj->abco", g, kernel, g).reshape(16, c, cout)
    m = lax.dot_general(input_tiles(xp), u, (((2,), (1,)), ((0,), (0,))))
    return _to_image(m.reshape(4, 4, n, th, tw, cout))[:, :ho, :wo]
