"""GANMasker networks (two-stage face unmasking, systems.md section 5), Flax Linen, NHWC.

The paper (``004_a88b7d81e9fc7174``, Section 3 and Figures 2-3) fixes the block structure
but not the channel widths, the CBAM reduction, the up-sampling mode, the LeakyReLU slope or
the discriminator's layer sizes. Every such choice is a module field, documented below.

- :class:`MSeg` (stage 1, "ganmasker_mseg"): U-Net-like autoencoder producing the binary
  mask map. Input (N, H, W, 3) in [-1, 1]; output (N, H, W, 1) probabilities in [0, 1].
  Encoder: 5 Se-blocks Conv3x3 -> BN -> ReLU -> CBAM -> MaxPool 2 (widths
  ``base_width * 2**i``). Decoder: 4 blocks up-sample x2 -> concat(skip) -> Conv3x3 -> BN ->
  ReLU, the skip being the pre-pool output of the encoder block at that resolution (encoder
  blocks 4, 3, 2, 1), then the last block up-sample x2 -> Conv1x1 -> BN -> sigmoid (no
  skip: the paper's list for the last block has none). H and W must be multiples of 32.
- :class:`FUNet` (stage 2 generator, "ganmasker_funet"): input (N, H, W, 4) = masked face
  (RGB in [-1, 1]) + mask map ([0, 1]), or (N, H, W, 3) for the one-stage ablation (the
  input width is read from the input). Encoder: 5 Ge-blocks (residual attention blocks,
  Fig. 3b as read here: Conv3x3 -> BN -> LeakyReLU -> Conv3x3 -> BN -> CBAM, plus a 1x1
  projection of the block input, summed, LeakyReLU), MaxPool 2 after the first four.
  Bottleneck: 4 dilated blocks BN -> Conv3x3 (dilation = padding = 2, 4, 8, 16) ->
  LeakyReLU at the width of the last Ge-block. Decoder: 5 blocks, the first without
  up-sampling; each concatenates the output of the encoder block at its resolution
  (Ge-blocks 4, 3, 2, 1, 0); blocks 0-3: Conv3x3 -> BN -> LeakyReLU, the last Conv1x1 -> 3
  channels -> tanh (images live in [-1, 1]). The last block has no BN by default
  (``final_norm``): a BatchNorm just before tanh would pin each output channel's batch
  statistics, which an image's colours should not be. The MURF composite
  (G(x) * mask + masked * (1 - mask)) is done by the system, not here. H and W must be
  multiples of 16.
- :class:`SNDiscriminator` ("ganmasker_discriminator"): PatchGAN-like: ``n_layers``
  spectral-normalised Conv k4 s2 p1 (widths ``ndf * min(2**i, 8)``) -> LeakyReLU(0.2), one
  SN Conv k4 s1 p1 (``ndf * min(2**n_layers, 8)``) -> LeakyReLU(0.2), one SN Conv k4 s1 p1
  -> 1 logit map (no sigmoid: LSGAN on raw outputs). Every conv has a bias (no norm layers).
  256x256 -> 30x30 with the defaults. Input channels are read from the input (the system
  passes concat(condition, image)).

Choices (not in the paper):
- widths: ``base_width`` 32 for both generators (32, 64, 128, 256, 512). For FU-Net the
  classic U-Net 64 (... 1024) was rejected: the four 1024-wide dilated bottleneck convs
  alone would hold 38M parameters (70.0M in all at base 64 vs 17.5M at base 32, larger
  than the 54.4M pix2pix U-Net). ``ndf`` 64, ``n_layers`` 3 (the 70x70 PatchGAN's sizes).
- CBAM reduction 16 and spatial kernel 7 (the CBAM paper's defaults); hidden width
  ``max(C // 16, 1)``.
- up-sampling: bilinear x2 with torch's ``align_corners=False`` semantics (``upsample``
  'bilinear'; 'nearest' available). Bilinear is chosen so that the last block's 1x1 conv
  does not produce a mask that is constant over 2x2 blocks.
- LeakyReLU slope 0.2 (generator and discriminator).
- BatchNorm: torch ``BatchNorm2d`` (momentum 0.1 = 0.9 here, eps 1e-5); convs followed by
  BN have no bias, the others have one. Conv kernels N(0, 0.02), BN scale N(1, 0.02).
- Spectral norm: one power iteration per training forward, eps 1e-12 (torch's).

Names are flat (one top-level submodule per layer) so that the export key maps
(``unmask_jax.export.keymaps``) can map them to the twins in
``unmask_jax.export.torch_modules``:
  M-Seg:  ``enc_{i}_conv``, ``enc_{i}_norm``, ``enc_{i}_cbam_{mlp_0,mlp_1,spatial}``,
          ``dec_{j}_conv``, ``dec_{j}_norm`` (j = 0..4).
  FU-Net: ``enc_{i}_conv_0``, ``enc_{i}_norm_0``, ``enc_{i}_conv_1``, ``enc_{i}_norm_1``,
          ``enc_{i}_cbam_*``, ``enc_{i}_proj``; ``mid_{k}_norm``, ``mid_{k}_conv``;
          ``dec_{j}_conv``, ``dec_{j}_norm`` (j = 0..3; ``dec_4_norm`` only with
          ``final_norm``).
  D:      ``conv_{k}`` (SNConv; k = 0 .. n_layers + 1).

Call: ``module.apply(variables, x, train, mutable=["batch_stats"])`` (generators) and
``module.apply(variables, x, train, mutable=["spectral"])`` (discriminator, train mode);
no dropout. Outputs are float32.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from unmask_jax.models.blocks import SNConv, cbam
from unmask_jax.models.layers import BatchNorm, Conv, leaky_relu

Array = jax.Array
Dtype = Any

NUM_LEVELS = 5
DILATION_RATES = (2, 4, 8, 16)
UPSAMPLE_MODES = ("bilinear", "nearest")


def _up_axis(x: Array, axis: int) -> Array:
    """x2 linear up-sampling along ``axis`` with torch's align_corners=False rule (source
    coordinate (o + 0.5) / 2 - 0.5, clamped at the borders). The neighbours are shifted
    slices (their gradients are slices and pads; an index gather's is a scatter-add)."""
    n = x.shape[axis]
    first = lax.slice_in_dim(x, 0, 1, axis=axis)
    last = lax.slice_in_dim(x, n - 1, n, axis=axis)
    prev = jnp.concatenate([first, lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis=axis)
    nxt = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis), last], axis=axis)
    even = 0.25 * prev + 0.75 * x
    odd = 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)


def upsample2x(x: Array, mode: str) -> Array:
    """NHWC x2 up-sampling equal to ``torch.nn.Upsample(scale_factor=2, mode=mode)``
    (``align_corners=False`` for bilinear)."""
    if mode == "nearest":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if mode == "bilinear":
        return _up_axis(_up_axis(x, 1), 2)
    raise ValueError(f"unknown upsample mode {mode!r}; choose from {UPSAMPLE_MODES}")


def _max_pool(x: Array) -> Array:
    """2x2 / stride 2 max pool (``torch.nn.MaxPool2d(2)``)."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def _check_size(x: Array, multiple: int, what: str) -> None:
    h, w = x.shape[1:3]
    if h % multiple or w % multiple:
        raise ValueError(f"{what}: height and width must be multiples of {multiple}, "
                         f"got {h}x{w}")


def _bn(name: str, kw: dict[str, Any]) -> BatchNorm:
    return BatchNorm(name=name, **kw)


def _widths(base_width: int) -> list[int]:
    return [base_width * 2**i for i in range(NUM_LEVELS)]


class MSeg(nn.Module):
    """GANMasker stage 1, mask segmentation (see module docstring).

    Attributes:
      base_width: width of the first Se-block; block i has ``base_width * 2**i``.
      cbam_reduction, cbam_kernel: CBAM reduction ratio and spatial kernel.
      upsample: 'bilinear' (torch align_corners=False) or 'nearest'.
    """

    base_width: int = 32
    cbam_reduction: int = 16
    cbam_kernel: int = 7
    upsample: str = "bilinear"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        _check_size(x, 2**NUM_LEVELS, "MSeg")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ra = not train
        widths = _widths(self.base_width)
        h = x.astype(self.dtype)
        skips = []
        for i, f in enumerate(widths):
            h = Conv(f, 3, 1, 1, use_bias=False, name=f"enc_{i}_conv", **kw)(h)
            h = nn.relu(_bn(f"enc_{i}_norm", kw)(h, use_running_average=ra))
            h = cbam(h, reduction=self.cbam_reduction, spatial_kernel=self.cbam_kernel,
                     prefix=f"enc_{i}_cbam_", **kw)
            skips.append(h)
            h = _max_pool(h)
        for j in range(NUM_LEVELS - 1):
            h = upsample2x(h, self.upsample)
            h = jnp.concatenate([h, skips[NUM_LEVELS - 1 - j]], axis=-1)
            h = Conv(widths[NUM_LEVELS - 2 - j], 3, 1, 1, use_bias=False,
                     name=f"dec_{j}_conv", **kw)(h)
            h = nn.relu(_bn(f"dec_{j}_norm", kw)(h, use_running_average=ra))
        h = upsample2x(h, self.upsample)
        last = NUM_LEVELS - 1
        h = Conv(1, 1, 1, 0, use_bias=False, name=f"dec_{last}_conv", **kw)(h)
        h = _bn(f"dec_{last}_norm", kw)(h, use_running_average=ra)
        return jax.nn.sigmoid(h.astype(jnp.float32))


class FUNet(nn.Module):
    """GANMasker stage 2 generator (see module docstring).

    Attributes:
      base_width: width of the first Ge-block; block i has ``base_width * 2**i``; the
        bottleneck keeps the last width.
      out_channels: output image channels (tanh, [-1, 1]).
      leaky_slope: LeakyReLU slope (0.2).
      cbam_reduction, cbam_kernel: CBAM reduction ratio and spatial kernel.
      dilation_rates: the bottleneck's dilated blocks (paper: 2, 4, 8, 16).
      upsample: 'bilinear' (torch align_corners=False) or 'nearest'.
      final_norm: BatchNorm between the last 1x1 conv and tanh (default off, see the module
        docstring); the last conv has a bias when there is no BN.
    """

    base_width: int = 32
    out_channels: int = 3
    leaky_slope: float = 0.2
    cbam_reduction: int = 16
    cbam_kernel: int = 7
    dilation_rates: Sequence[int] = DILATION_RATES
    upsample: str = "bilinear"
    final_norm: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        _check_size(x, 2**(NUM_LEVELS - 1), "FUNet")
        kw = self.block_kwargs()
        ra = not train
        widths = _widths(self.base_width)
        h = x.astype(self.dtype)
        skips = []
        for i, f in enumerate(widths):
            h = ge_block(h, f, f"enc_{i}_", ra, **kw)
            skips.append(h)
            if i < NUM_LEVELS - 1:
                h = _max_pool(h)
        for k, rate in enumerate(self.dilation_rates):
            h = dilated_block(h, rate, f"mid_{k}_", ra, **kw)
        for j in range(NUM_LEVELS - 1):
            h = decoder_block(h if j == 0 else upsample2x(h, self.upsample),
                              skips[NUM_LEVELS - 1 - j], widths[NUM_LEVELS - 2 - j],
                              f"dec_{j}_", ra, **kw)
        return output_block(upsample2x(h, self.upsample), skips[0], self.out_channels,
                            f"dec_{NUM_LEVELS - 1}_", ra, final_norm=self.final_norm, **kw)

    def block_kwargs(self) -> dict[str, Any]:
        """The keyword arguments :func:`ge_block`, :func:`dilated_block`,
        :func:`decoder_block` and :func:`output_block` take from this module's fields."""
        return dict(leaky_slope=self.leaky_slope, cbam_reduction=self.cbam_reduction,
                    cbam_kernel=self.cbam_kernel, dtype=self.dtype,
                    param_dtype=self.param_dtype)


# FU-Net's blocks as functions that create their layers in the calling module (call them
# inside a compact method), named ``prefix + <layer>`` as in FUNet; benchmarks time them
# one by one (benchmarks/ganmasker_vs_torch.py --breakdown).

def ge_block(h: Array, features: int, prefix: str, use_running_average: bool, *,
             leaky_slope: float, cbam_reduction: int, cbam_kernel: int, dtype: Dtype,
             param_dtype: Dtype) -> Array:
    """FU-Net encoder Ge-block: Conv3x3 -> BN -> LeakyReLU -> Conv3x3 -> BN -> CBAM, plus
    a 1x1 projection of the input, summed, LeakyReLU."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    ra = use_running_average
    r = Conv(features, 3, 1, 1, use_bias=False, name=prefix + "conv_0", **kw)(h)
    r = leaky_relu(_bn(prefix + "norm_0", kw)(r, use_running_average=ra), leaky_slope)
    r = Conv(features, 3, 1, 1, use_bias=False, name=prefix + "conv_1", **kw)(r)
    r = _bn(prefix + "norm_1", kw)(r, use_running_average=ra)
    r = cbam(r, reduction=cbam_reduction, spatial_kernel=cbam_kernel, prefix=prefix + "cbam_",
             **kw)
    p = Conv(features, 1, 1, 0, use_bias=False, name=prefix + "proj", **kw)(h)
    return leaky_relu(r + p, leaky_slope)


def dilated_block(h: Array, rate: int, prefix: str, use_running_average: bool, *,
                  leaky_slope: float, dtype: Dtype, param_dtype: Dtype, **_: Any) -> Array:
    """FU-Net bottleneck block: BN -> Conv3x3 (dilation = padding = rate, bias) ->
    LeakyReLU, at the input's width."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    h = _bn(prefix + "norm", kw)(h, use_running_average=use_running_average)
    h = Conv(h.shape[-1], 3, 1, rate, dilation=rate, use_bias=True, name=prefix + "conv",
             **kw)(h)
    return leaky_relu(h, leaky_slope)


def decoder_block(h: Array, skip: Array, features: int, prefix: str,
                  use_running_average: bool, *, leaky_slope: float, dtype: Dtype,
                  param_dtype: Dtype, **_: Any) -> Array:
    """FU-Net decoder block (after any up-sampling): concat(h, skip) -> Conv3x3 -> BN ->
    LeakyReLU."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    h = jnp.concatenate([h, skip], axis=-1)
    h = Conv(features, 3, 1, 1, use_bias=False, name=prefix + "conv", **kw)(h)
    h = _bn(prefix + "norm", kw)(h, use_running_average=use_running_average)
    return leaky_relu(h, leaky_slope)


def output_block(h: Array, skip: Array, out_channels: int, prefix: str,
                 use_running_average: bool, *, final_norm: bool, dtype: Dtype,
                 param_dtype: Dtype, **_: Any) -> Array:
    """FU-Net last block (after the up-sampling): concat(h, skip) -> Conv1x1 (bias unless
    ``final_norm``) -> [BN] -> tanh, float32."""
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    h = jnp.concatenate([h, skip], axis=-1)
    h = Conv(out_channels, 1, 1, 0, use_bias=not final_norm, name=prefix + "conv", **kw)(h)
    if final_norm:
        h = _bn(prefix + "norm", kw)(h, use_running_average=use_running_average)
    return jnp.tanh(h.astype(jnp.float32))


class SNDiscriminator(nn.Module):
    """GANMasker discriminator: spectral-normalised PatchGAN-like logits (module docstring).

    Attributes:
      ndf: width of the first conv.
      n_layers: number of stride-2 convs (3: 256x256 -> 30x30 logits).
      leaky_slope: 0.2.
      power_iterations: spectral-norm power iterations per training forward (1).
    """

    ndf: int = 64
    n_layers: int = 3
    leaky_slope: float = 0.2
    power_iterations: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")
        kw = dict(power_iterations=self.power_iterations, dtype=self.dtype,
                  param_dtype=self.param_dtype)
        h = x.astype(self.dtype)
        for k in range(self.n_layers):
            h = SNConv(self.ndf * min(2**k, 8), 4, 2, 1, name=f"conv_{k}", **kw)(h, train)
            h = leaky_relu(h, self.leaky_slope)
        h = SNConv(self.ndf * min(2**self.n_layers, 8), 4, 1, 1, name=f"conv_{self.n_layers}",
                   **kw)(h, train)
        h = leaky_relu(h, self.leaky_slope)
        h = SNConv(1, 4, 1, 1, name=f"conv_{self.n_layers + 1}", **kw)(h, train)
        return h.astype(jnp.float32)
