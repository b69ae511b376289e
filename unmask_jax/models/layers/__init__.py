"""PyTorch-compatible building blocks for the Flax (Linen) GAN models.

Every layer here is NHWC and matches a PyTorch layer numerically, so that weights can be
exported to / imported from PyTorch by transposes only (see ``unmask_jax.export``). One
idea per module; everything public is re-exported here (``layers.Conv``, ...):

- :mod:`.conv`: :class:`Conv` (``torch.nn.Conv2d``), plain form :func:`conv2d_xla`.
- :mod:`.conv_transpose`: :class:`ConvTranspose` (``torch.nn.ConvTranspose2d``), plain form
  :func:`conv_transpose_xla`.
- :mod:`.norms`: :class:`BatchNorm`, :class:`InstanceNorm`, :func:`apply_norm`,
  :func:`check_norm`.
- :mod:`.padding`: torch-style padding (:func:`torch_padding`); :mod:`.common`:
  :func:`normal_init`, :func:`leaky_relu`.

All layers take ``dtype`` (compute dtype) and ``param_dtype`` (storage dtype). Normalisation
statistics are always computed in float32. Other forms of the same maths that a platform
runs faster live in :mod:`unmask_jax.backends`, never here.
"""

from unmask_jax.models.layers.common import (
    Array, Dtype, Initializer, PaddingLike, leaky_relu, normal_init)
from unmask_jax.models.layers.conv import Conv, conv2d_xla
from unmask_jax.models.layers.conv_transpose import ConvTranspose, conv_transpose_xla
from unmask_jax.models.layers.norms import BatchNorm, InstanceNorm, apply_norm, check_norm
from unmask_jax.models.layers.padding import torch_padding

__all__ = [
    "Array", "BatchNorm", "Conv", "ConvTranspose", "Dtype", "Initializer", "InstanceNorm",
    "PaddingLike", "apply_norm", "check_norm", "conv2d_xla", "conv_transpose_xla",
    "leaky_relu", "normal_init", "torch_padding",
]
