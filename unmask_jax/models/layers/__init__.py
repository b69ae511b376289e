"""PyTorch-compatible building blocks for the Flax (Linen) GAN models.

Every layer here is NHWC and matches a PyTorch layer numerically, so that weights can be
exported to / imported from PyTorch by transposes only (see ``unmask_jax.export``). One
idea per module; everything public is re-exported here (``layers.Conv``, ...):

- :mod:`.conv`: :class:`Conv` (``torch.nn.Conv2d``) and its implementations
  :func:`conv2d_xla`, :func:`conv2d` (explicit pre-padding), :func:`conv2d_gemm`
  (im2col + GEMM).
- :mod:`.winograd`: :func:`conv2d_winograd`, the Winograd F(2x2, 3x3) form of a 3x3
  stride-1 convolution (an explicit ``impl``; not in the CPU 'auto' rule).
- :mod:`.conv_transpose`: :class:`ConvTranspose` (``torch.nn.ConvTranspose2d``) and its
  implementations :func:`conv_transpose_xla`, :func:`conv_transpose_subpixel`,
  :func:`conv_transpose_gemm` (GEMM + col2im).
- :mod:`.dispatch`: which implementation ``impl='auto'`` / ``split_batch=None`` pick, per
  backend platform (CPU-measured forms on 'cpu', XLA's own convolutions elsewhere);
  :func:`set_platform` / :func:`use_platform` override the platform; ``dispatch.jit``
  compiles a program for one of XLA CPU's convolution libraries (YNNPACK, XLA's default, or
  Eigen) and traces its layers for it.
- :mod:`.weight_matmul`: :func:`weight_matmul`, a GEMM whose gradients read a large weight
  in its stored layout (custom VJP).
- :mod:`.chunking`: :func:`batch_chunked`.
- :mod:`.norms`: :class:`BatchNorm`, :class:`InstanceNorm`, :func:`apply_norm`,
  :func:`check_norm`.
- :mod:`.padding`: torch-style padding (:func:`torch_padding`); :mod:`.common`:
  :func:`normal_init`, :func:`leaky_relu`.

All layers take ``dtype`` (compute dtype) and ``param_dtype`` (storage dtype). Normalisation
statistics are always computed in float32. Speed figures behind the CPU choices:
``benchmarks/README.md``.
"""

from unmask_jax.models.layers.chunking import batch_chunked
from unmask_jax.models.layers.common import (
    Array, Dtype, Initializer, PaddingLike, leaky_relu, normal_init)
from unmask_jax.models.layers.conv import Conv, conv2d, conv2d_gemm, conv2d_xla
from unmask_jax.models.layers.conv_transpose import (
    ConvTranspose, conv_transpose_gemm, conv_transpose_subpixel, conv_transpose_xla)
from unmask_jax.models.layers.dispatch import set_platform, use_platform
from unmask_jax.models.layers.norms import BatchNorm, InstanceNorm, apply_norm, check_norm
from unmask_jax.models.layers.padding import torch_padding
from unmask_jax.models.layers.weight_matmul import weight_matmul
from unmask_jax.models.layers.winograd import conv2d_winograd

__all__ = [
    "Array", "BatchNorm", "Conv", "ConvTranspose", "Dtype", "Initializer", "InstanceNorm",
    "PaddingLike", "apply_norm", "batch_chunked", "check_norm", "conv2d", "conv2d_gemm",
    "conv2d_winograd", "conv2d_xla", "conv_transpose_gemm", "conv_transpose_subpixel",
    "conv_transpose_xla", "leaky_relu", "normal_init", "set_platform", "torch_padding",
    "use_platform", "weight_matmul",
]
