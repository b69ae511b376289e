"""ArcFace face-recognition backbones in Flax: InsightFace IResNet-50/100 and pSp's IR-SE50.

Both take 112x112 RGB faces in [-1, 1] (InsightFace's ``(img / 255 - 0.5) / 0.5``), NHWC,
and return a 512-d embedding.

* :class:`IResNet` follows InsightFace ``arcface_torch/backbones/iresnet.py``: stem conv3x3
  -> BN -> PReLU; stages of ``IBasicBlock`` (BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride)
  -> BN, plus a conv1x1(stride) + BN shortcut where shape changes) at widths 64/128/256/512,
  each stage starting with stride 2; then BN -> flatten in NCHW order -> dropout -> Linear
  (512*7*7 -> 512) -> BatchNorm1d ("features"). Depth 50 = (3, 4, 14, 3) blocks, 100 =
  (3, 13, 30, 3). All BN eps 1e-5 (``bn_eps``; some older exports used 2e-5).
* :class:`IRSE` follows pSp ``models/encoders/model_irse.py`` ``Backbone(112, 50, 'ir_se')``:
  ``input_layer`` conv3x3 -> BN -> PReLU; ``body`` of ``bottleneck_IR_SE`` units (BN ->
  conv3x3 -> PReLU -> conv3x3(stride) -> BN -> SE(reduction 16), plus a shortcut that is a
  1x1 max pool (subsampling) when widths agree, else conv1x1 + BN); ``output_layer`` BN ->
  dropout -> flatten (NCHW) -> Linear -> BatchNorm1d; the embedding is L2-normalised as in
  pSp. Blocks (3, 4, 14, 3) for 50 layers.

PReLU is per channel (Flax's ``nn.PReLU`` has one scalar, so a local module is used). The
IR-SE units (:class:`BottleneckIRSE`, :class:`SEModule`, :class:`PReLU`, :func:`irse_units`)
live in :mod:`unmask_jax.models.irse`, shared with UnVeilify's pSp encoder. The
networks accept other input sizes divisible by 16 (the fc input grows with the final map);
tests use that to keep the CPU cost low.

``dtype`` (both networks): the compute dtype of the convolutions, the fc layer and the
activations (e.g. ``jnp.bfloat16``). Parameters and BatchNorm statistics stay float32, and
each BatchNorm normalises in float32 (Flax promotes against the float32 running statistics)
before casting its output to ``dtype``; the last BatchNorm (the embedding) outputs float32,
and so does IR-SE's L2 normalisation. The default float32 gives the original results bit for
bit.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

# The IR-SE pieces are shared with the pSp encoder of UnVeilify (unmask_jax.models.unveilify).
from unmask_jax.models.irse import (  # noqa: F401  (re-exported)
    IRSE_LAYERS, STAGE_WIDTHS, BottleneckIRSE, PReLU, SEModule, irse_units)

IRESNET_LAYERS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _bn(name: str, train: bool, eps: float, affine: bool = True,
        dtype: Any = jnp.float32) -> nn.BatchNorm:
    # torch momentum 0.1 == Flax momentum 0.9. The statistics are float32 and so is the
    # normalisation (x - mean promotes to float32); ``dtype`` is the output's dtype.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=eps,
                        use_scale=affine, use_bias=affine, dtype=dtype,
                        param_dtype=jnp.float32, name=name)


def _conv(features: int, k: int, stride: int, name: str,
          dtype: Any = jnp.float32) -> nn.Conv:
    pad = k // 2
    return nn.Conv(features, (k, k), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                   param_dtype=jnp.float32, name=name)


def _flatten_nchw(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class IBasicBlock(nn.Module):
    planes: int
    stride: int
    downsample: bool
    bn_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dt = self.dtype
        out = _bn("bn1", train, self.bn_eps, dtype=dt)(x)
        out = _conv(self.planes, 3, 1, "conv1", dt)(out)
        out = _bn("bn2", train, self.bn_eps, dtype=dt)(out)
        out = PReLU(self.planes, name="prelu")(out)
        out = _conv(self.planes, 3, self.stride, "conv2", dt)(out)
        out = _bn("bn3", train, self.bn_eps, dtype=dt)(out)
        identity = x
        if self.downsample:
            identity = _conv(self.planes, 1, self.stride, "downsample_conv", dt)(x)
            identity = _bn("downsample_bn", train, self.bn_eps, dtype=dt)(identity)
        return out + identity


class IResNet(nn.Module):
    """InsightFace IResNet; ``layers`` blocks per stage, e.g. ``IRESNET_LAYERS[50]``."""

    layers: Sequence[int] = IRESNET_LAYERS[50]
    num_features: int = 512
    dropout: float = 0.0
    bn_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.shape[1] % 16 or x.shape[2] % 16:
            raise ValueError(f"IResNet input must be divisible by 16, got {x.shape[1:3]}")
        dt = self.dtype
        x = _conv(64, 3, 1, "conv1", dt)(x.astype(dt))
        x = _bn("bn1", train, self.bn_eps, dtype=dt)(x)
        x = PReLU(64, name="prelu")(x)
        inplanes = 64
        for s, (n, planes) in enumerate(zip(self.layers, STAGE_WIDTHS), start=1):
            for b in range(n):
                stride = 2 if b == 0 else 1
                down = b == 0 and (stride != 1 or inplanes != planes)
                x = IBasicBlock(planes, stride, down, self.bn_eps, dtype=dt,
                                name=f"layer{s}_{b}")(x, train)
                inplanes = planes
        x = _bn("bn2", train, self.bn_eps, dtype=dt)(x)
        x = _flatten_nchw(x)
        x = nn.Dropout(self.dropout, deterministic=not train or self.dropout == 0.0)(x)
        x = nn.Dense(self.num_features, dtype=dt, param_dtype=jnp.float32, name="fc")(x)
        # The embedding: normalised in float32 and returned in float32.
        return _bn("features", train, self.bn_eps, dtype=jnp.float32)(x)


class IRSE(nn.Module):
    """pSp IR-SE backbone (``mode='ir_se'``); returns the L2-normalised 512-d embedding."""

    num_layers: int = 50
    drop_ratio: float = 0.6
    affine: bool = True
    normalize: bool = True
    units: Sequence[tuple[int, int, int]] | None = None  # overrides num_layers (tests)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.shape[1] % 16 or x.shape[2] % 16:
            raise ValueError(f"IRSE input must be divisible by 16, got {x.shape[1:3]}")
        dt = self.dtype
        x = _conv(64, 3, 1, "input_conv", dt)(x.astype(dt))
        x = _bn("input_bn", train, 1e-5, dtype=dt)(x)
        x = PReLU(64, name="input_prelu")(x)
        units = self.units if self.units is not None else irse_units(self.num_layers)
        for i, (in_c, depth, stride) in enumerate(units):
            x = BottleneckIRSE(in_c, depth, stride, dtype=dt, name=f"body_{i}")(x, train)
        x = _bn("output_bn2d", train, 1e-5, dtype=dt)(x)
        x = nn.Dropout(self.drop_ratio, deterministic=not train)(x)
        x = _flatten_nchw(x)
        x = nn.Dense(512, dtype=dt, param_dtype=jnp.float32, name="output_fc")(x)
        # The embedding: normalised in float32 and returned in float32.
        x = _bn("output_bn1d", train, 1e-5, affine=self.affine, dtype=jnp.float32)(x)
        if self.normalize:
            x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        return x


def make_arcface(kind: str, dtype: Any = jnp.float32) -> nn.Module:
    """``arcface_iresnet50`` | ``arcface_iresnet100`` | ``irse50`` -> the Flax module, computing
    in ``dtype`` (float32 parameters; see the module docstring)."""
    if kind == "arcface_iresnet50":
        return IResNet(IRESNET_LAYERS[50], dtype=dtype)
    if kind == "arcface_iresnet100":
        return IResNet(IRESNET_LAYERS[100], dtype=dtype)
    if kind == "irse50":
        return IRSE(50, dtype=dtype)
    raise ValueError(f"unknown ArcFace kind {kind!r}")
