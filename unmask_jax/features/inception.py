"""The FID Inception-v3 in Flax: the network of pytorch-fid / torch-fidelity, pool3 output.

FID is only comparable across papers when it is computed with one particular network: the
TensorFlow Inception graph ``inception-2015-12-05`` that the original TTUR code used,
ported to PyTorch as ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's release file).
That port is torchvision's Inception-v3 with four changes, all reproduced here:

* the 35x35 blocks (``Mixed_5b/c/d``, "A"), the 17x17 blocks (``Mixed_6b..e``, "C") and the
  first 8x8 block (``Mixed_7b``, "E_1") average-pool their pool branch without counting the
  zero padding (TensorFlow's ``avg_pool`` with SAME padding);
* the last 8x8 block (``Mixed_7c``, "E_2") max-pools its pool branch (3x3, stride 1, pad 1);
* every BatchNorm has eps 1e-3; convs have no bias;
* the classifier has 1008 classes (unused here: FID reads the 2048-d global average pool,
  "pool3").

Input: NHWC images in [-1, 1] (the project's convention; pytorch-fid maps its [0, 1] input
with ``2 * x - 1``, the same values), resized to ``resize_to`` x ``resize_to`` (299 for FID)
with bilinear interpolation, half-pixel centres (``align_corners=False``), no antialiasing:
``F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)``.

Module and parameter names follow the PyTorch keys (``Mixed_6b.branch7x7_2.conv.weight``,
``...bn.running_mean``), so the converter (``weights.convert_fid_inception``) maps paths by
joining them with dots. The network itself accepts any input of at least 75x75 (tests use
75x75 to stay cheap).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

FID_INPUT_SIZE = 299
POOL3_DIM = 2048
BN_EPS = 1e-3


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU."""

    features: int
    kernel: int | Sequence[int]
    stride: int = 1
    padding: int | Sequence[int] = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel), strides=_pair(self.stride),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x: jax.Array) -> jax.Array:
    # 3x3, stride 1, padding 1, padded zeros not counted (TF SAME average pooling).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class BlockA(nn.Module):
    """35x35 block (FIDInceptionA): 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg -> 1x1."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, 1, name="branch1x1")(x)
        b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class BlockB(nn.Module):
    """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3x3/2."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
        bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class BlockC(nn.Module):
    """17x17 block (FIDInceptionC) with factorised 7x7 convolutions."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, 1, name="branch1x1")(x)
        b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class BlockD(nn.Module):
    """17 -> 8 reduction (Mixed_7a)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class BlockE(nn.Module):
    """8x8 block: FIDInceptionE_1 (``max_pool=False``: average pool without padding) or
    FIDInceptionE_2 (``max_pool=True``: max pool 3x3, stride 1, pad 1)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, 1, name="branch1x1")(x)
        b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_same(x)
        bp = BasicConv2d(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(x: jax.Array, size: int) -> jax.Array:
    """NHWC bilinear resize to ``size`` x ``size``: half-pixel centres, no antialiasing
    (PyTorch ``F.interpolate(..., mode='bilinear', align_corners=False)``)."""
    if x.shape[1] == size and x.shape[2] == size:
        return x
    return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear",
                            antialias=False)


class FIDInceptionV3(nn.Module):
    """pool3 (2048-d) features of the FID Inception for NHWC images in [-1, 1].

    ``resize_to``: input side after the bilinear resize (299 for FID; None = no resize).
    """

    resize_to: int | None = FID_INPUT_SIZE

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if self.resize_to:
            x = resize_bilinear(x, self.resize_to)
        x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BlockA(32, name="Mixed_5b")(x)
        x = BlockA(64, name="Mixed_5c")(x)
        x = BlockA(64, name="Mixed_5d")(x)
        x = BlockB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = BlockC(c7, name=name)(x)
        x = BlockD(name="Mixed_7a")(x)
        x = BlockE(max_pool=False, name="Mixed_7b")(x)
        x = BlockE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))
