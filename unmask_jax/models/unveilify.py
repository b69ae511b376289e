"""UnVeilify networks (identity-preserving mask removal, systems.md section 3), Flax Linen,
NHWC. Written from the public reference ``hyoungjoojin/UnVeilify`` (``model/*.py``); the
PyTorch twins with the reference's state-dict layout are in
:mod:`unmask_jax.export.torch_unveilify`, the key maps in :mod:`unmask_jax.export.unveilify`.

- :class:`PSPEncoder` ("unveilify_psp"): pSp GradualStyleEncoder on the identity image.
  ``input_conv`` conv3x3 (no bias) -> ``input_bn`` -> ``input_prelu`` (per channel); ``body_{i}``
  IR-SE units (:mod:`unmask_jax.models.irse`; blocks (3, 4, 14, 3), widths 64/128/256/512,
  SE reduction 16); taps c1, c2, c3 at the ends of stages 2, 3, 4 (body[6], body[20],
  body[23] for IR-SE50). p2 = up(c3) + ``latlayer1``(c2), p1 = up(p2) + ``latlayer2``(c1)
  (1x1 convs with bias to the stage-4 width; up = bilinear, ``align_corners=True``, to the
  lateral map's size). ``style_{j}`` (GradualStyleBlock) reads c3 for j < 3, p2 for j < 7,
  p1 otherwise: log2(input_resolution / 32 | 16 | 8) x [``conv_{k}`` Conv3x3 s2 (bias) ->
  ``norm_{k}`` BatchNorm -> LeakyReLU(0.01)] -> MaxPool 2 -> ``linear`` (a plain
  ``nn.Linear`` in the reference, not pSp's EqualLinear). Output (N, n_styles, latent_dim).
  The reference initialises every conv / linear weight with ``kaiming_normal_`` (a = 0) and
  does *not* load IR-SE50 weights into the body (the pretrained IR-SE50 is only the identity
  loss's network); :func:`psp_variables_from_irse` copies a converted ArcFace IR-SE50 into
  the stem and body when a config asks for it.
- :class:`UNetStyleGANGenerator` ("unveilify_generator"): U-Net encoder of
  log2(resolution) - 2 residual down blocks (``down_{i}``: ``bn_0`` -> LReLU(0.2) ->
  ``conv_0`` 3x3 s2 -> ``bn_1`` -> LReLU -> ``conv_1`` 3x3, plus ``residual`` 3x3 s2, sum ->
  ``bn_out`` -> LReLU; widths min(256, 32 * 2**i), i = log2(res) - 3 .. 0: 256, 256, 256,
  128, 64, 32 at 256^2), then a StyleGAN2-like decoder: ``first_style_block`` on the 4^2
  bottleneck (its skip is the bottleneck itself) and ``first_to_rgb``, both with w[:, 0];
  stage i = 1 .. len(widths) - 1: bilinear x2 -> ``up_{i-1}_conv`` 3x3 -> ``up_{i-1}_bn`` ->
  LReLU(0.2) -> ``block_{i-1}`` (``style_block1``, ``style_block2``, ``to_rgb``; all with
  w[:, i] and the encoder output at that resolution as skip); rgb = up(rgb) + to_rgb(x), up
  = bilinear x2 (align_corners=False) + [1, 2, 1] x [1, 2, 1] / 16 blur with edge padding;
  the output is up(rgb) (128^2 -> 256^2 at the defaults). Only w[:, 0 .. len(widths) - 1]
  are read (6 of the 14 styles at 256^2).
  Style block: s = ``to_style``(w) (equalized-lr linear, bias init 1); x' = modulated 3x3
  conv with demodulation (eps 1e-8, no bias, no noise); skip' = LReLU(BN(``skip_conv``
  3x3(skip))); out = LReLU(a * x' + (1 - a) * skip'), a per channel (param ``a``, init 0.5).
  ToRGB: 1x1 modulated conv without demodulation + ``bias`` -> LReLU(0.2); no tanh. The
  output lives in the input's (ImageNet-normalised) space.
  The blur kernel is a parameter in the reference's state dict (``requires_grad=False``);
  here it is the param ``smooth_kernel`` (3, 3), used through ``stop_gradient`` (zero
  gradient, so Adam leaves it unchanged; exclude it from weight decay if an optimiser has
  one), so that parameter counts equal the reference's.
- :class:`MaskRemover` ("unveilify_mask_remover"): the two above as one network
  (``psp_encoder``, ``generator``), as the reference trains them; ``(masked, identity,
  train) -> image``.
- :class:`IdentityPatchDiscriminator` ("unveilify_discriminator"): concat(image, identity)
  -> ``conv_0`` C64 (no norm) -> ``conv_1`` C128 / IN -> ``conv_2`` C256 / IN -> ``conv_3``
  C512 / IN (k4 s2 p1, bias, LReLU 0.2; InstanceNorm affine False, eps 1e-5) ->
  ZeroPad(left 1, right 0, top 1, bottom 0) -> ``conv_4`` C1 k4 p1 (no bias). Logits
  (16x16 at 256^2); ``sigmoid_output=True`` applies the reference's final sigmoid.

Initialisation follows the reference: pSp convs / linears He normal (fan in); generator
``nn.Conv2d`` weights ``kaiming_normal_(a=0.02)``; equalized weights N(0, 1) (scaled by
1 / sqrt(fan_in) when used); discriminator and all conv / linear biases torch's defaults
(U(+-1 / sqrt(fan_in))); BatchNorm weight 1, bias 0, torch momentum 0.1 (0.9 here) and
eps 1e-5, running variance updated with the unbiased batch variance (``layers.BatchNorm``).

Calls: ``PSPEncoder()(identity, train) -> w``; ``UNetStyleGANGenerator()(masked, w, train)
-> image``; ``IdentityPatchDiscriminator()(image, identity, train) -> logits``; train-mode
BatchNorm updates the "batch_stats" collection. Outputs are float32.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from unmask_jax.models.ganmasker import upsample2x
from unmask_jax.models.irse import (
    HE_NORMAL, IRSE_LAYERS, STAGE_WIDTHS, BottleneckIRSE, PReLU, fan_in_init, irse_units)
from unmask_jax.models.layers import BatchNorm, Conv, InstanceNorm, leaky_relu, normal_init

Array = jax.Array
Dtype = Any

#: pSp style groups: styles [0, 3) read c3, [3, 7) p2, [7, n) p1.
COARSE_END, MIDDLE_END = 3, 7
#: torch ``kaiming_normal_(w, 0.02)`` (the generator's ``initialize_network``).
GENERATOR_CONV_INIT = fan_in_init(2.0 / (1.0 + 0.02**2))
#: torch's default ``nn.Conv2d`` / ``nn.Linear`` weight init (kaiming_uniform, a = sqrt(5)).
TORCH_DEFAULT_INIT = fan_in_init(1.0 / 3.0, "uniform")
BLUR_1D = (1.0, 2.0, 1.0)


def torch_bias_init(fan_in: int):
    """torch's default bias init: U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def n_styles_for(resolution: int) -> int:
    """W+ size of the reference's MaskRemover: 2 * log2(resolution) - 2 (14 at 256^2)."""
    return 2 * int(math.log2(resolution)) - 2


def generator_widths(resolution: int, base_width: int = 32, max_width: int = 256) -> list[int]:
    """U-Net encoder widths, outermost first: min(max_width, base_width * 2**i) for
    i = log2(resolution) - 3 .. 0 (256, 256, 256, 128, 64, 32 at 256^2)."""
    log_res = int(math.log2(resolution))
    if 2**log_res != resolution or log_res < 3:
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
    return [min(max_width, base_width * 2**i) for i in range(log_res - 3, -1, -1)]


def _bn(name: str, train: bool, x: Array, momentum: float, eps: float, dtype: Dtype) -> Array:
    return BatchNorm(momentum=momentum, epsilon=eps, scale_init=nn.initializers.ones,
                     dtype=dtype, name=name)(x, use_running_average=not train)


def _conv(features: int, k: int, stride: int, pad, *, name: str, in_channels: int,
          kernel_init, use_bias: bool = True, dtype: Dtype = jnp.float32) -> Conv:
    return Conv(features, k, stride, pad, use_bias=use_bias, dtype=dtype,
                kernel_init=kernel_init, bias_init=torch_bias_init(in_channels * k * k),
                name=name)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation with align_corners=True."""
    m = np.zeros((n_out, n_in), np.float32)
    src = (np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))
           if n_out > 1 else np.zeros(1))
    i0 = np.clip(np.floor(src).astype(np.int64), 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).astype(np.float32)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def resize_bilinear_align_corners(x: Array, size: Sequence[int]) -> Array:
    """NHWC ``F.interpolate(x, size, mode='bilinear', align_corners=True)``."""
    mh = jnp.asarray(_interp_matrix(int(size[0]), x.shape[1]), x.dtype)
    mw = jnp.asarray(_interp_matrix(int(size[1]), x.shape[2]), x.dtype)
    hi = lax.Precision.HIGHEST
    y = jnp.einsum("oh,nhwc->nowc", mh, x, precision=hi)
    return jnp.einsum("pw,nowc->nopc", mw, y, precision=hi)


def blur3x3(x: Array, kernel: Array) -> Array:
    """Per-channel 3x3 filter with replicate padding (the reference's ``Smooth``)."""
    h, w = x.shape[1:3]
    # Edge padding as concatenated edge rows/columns: jnp.pad(mode="edge")'s gradient
    # (a broadcast) is one the SPMD partitioner splits over the wrong axis, which put
    # collective-permutes between chips into the data-parallel train step.
    xp = jnp.concatenate([x[:, :1], x, x[:, -1:]], axis=1)
    xp = jnp.concatenate([xp[:, :, :1], xp, xp[:, :, -1:]], axis=2)
    k = kernel.astype(x.dtype)
    out = None
    for i in range(3):
        for j in range(3):
            term = k[i, j] * xp[:, i:i + h, j:j + w, :]
            out = term if out is None else out + term
    return out


def blur_kernel_init(key, shape, dtype=jnp.float32):
    del key
    k1 = np.asarray(BLUR_1D, np.float32)
    k = np.outer(k1, k1)
    return jnp.asarray(k / k.sum(), dtype).reshape(shape)


# ----------------------------------------------------------------------------------------
# pSp encoder.
# ----------------------------------------------------------------------------------------


class GradualStyleBlock(nn.Module):
    """``n_convs`` x [Conv3x3 s2 -> BN -> LeakyReLU(0.01)] -> MaxPool 2 -> Linear."""

    features: int
    n_convs: int
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        for k in range(self.n_convs):
            x = _conv(self.features, 3, 2, 1, name=f"conv_{k}", in_channels=x.shape[-1],
                      kernel_init=HE_NORMAL, dtype=self.dtype)(x)
            x = _bn(f"norm_{k}", train, x, self.bn_momentum, self.bn_epsilon, self.dtype)
            x = leaky_relu(x, 0.01)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        if x.shape[1:3] != (1, 1):
            raise ValueError(f"GradualStyleBlock: the map before the linear layer is "
                             f"{x.shape[1]}x{x.shape[2]}, not 1x1: the input does not match "
                             f"input_resolution")
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.features, kernel_init=HE_NORMAL,
                        bias_init=torch_bias_init(x.shape[-1]), dtype=self.dtype,
                        name="linear")(x)


class PSPEncoder(nn.Module):
    """pSp GradualStyleEncoder over an IR-SE body (see the module docstring).

    Attributes:
      num_layers: IR-SE depth (50, 100, 152); ``blocks`` (units per stage) overrides it.
      widths: the four stage widths (the stem has ``widths[0]``); the reference: 64 .. 512.
      n_styles: number of W+ vectors (14 at 256^2; ``n_styles_for(resolution)``).
      input_resolution: identity image size the style blocks are built for (the reference's
        ``input_resolution``; the input must have this size).
      latent_dim: width of the style blocks and of w (512).
    """

    num_layers: int = 50
    blocks: Sequence[int] | None = None
    widths: Sequence[int] = STAGE_WIDTHS
    n_styles: int = 14
    input_resolution: int = 256
    latent_dim: int = 512
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    def units(self) -> list[tuple[int, int, int]]:
        return irse_units(self.num_layers, self.blocks, tuple(self.widths))

    def taps(self) -> tuple[int, int, int]:
        """Body indices of c1, c2, c3: the last unit of stages 2, 3, 4 (6, 20, 23 for
        IR-SE50)."""
        counts = list(self.blocks) if self.blocks is not None else list(
            IRSE_LAYERS[self.num_layers])
        return (sum(counts[:2]) - 1, sum(counts[:3]) - 1, sum(counts) - 1)

    def style_convs(self, j: int) -> int:
        """Number of stride-2 convs of style block ``j`` (log2 of its reference resolution)."""
        div = 2**5 if j < COARSE_END else 2**4 if j < MIDDLE_END else 2**3
        res = self.input_resolution // div
        if res < 1:
            raise ValueError(f"input_resolution must be >= 32, got {self.input_resolution}")
        return int(math.log2(res))

    @nn.compact
    def __call__(self, identity: Array, train: bool = False) -> Array:
        if identity.shape[1:3] != (self.input_resolution, self.input_resolution):
            raise ValueError(f"PSPEncoder built for {self.input_resolution}^2 identity images, "
                             f"got {identity.shape[1]}x{identity.shape[2]}")
        widths = tuple(self.widths)
        if min(widths) < 16:
            raise ValueError(f"pSp widths must be >= 16 (SE reduction 16), got {widths}")
        x = identity.astype(self.dtype)
        x = _conv(widths[0], 3, 1, 1, name="input_conv", in_channels=x.shape[-1],
                  kernel_init=HE_NORMAL, use_bias=False, dtype=self.dtype)(x)
        x = _bn("input_bn", train, x, self.bn_momentum, self.bn_epsilon, self.dtype)
        x = PReLU(widths[0], name="input_prelu")(x)
        feats = []
        for i, (in_c, depth, stride) in enumerate(self.units()):
            x = BottleneckIRSE(in_c, depth, stride, dtype=self.dtype, name=f"body_{i}")(
                x, train)
            feats.append(x)
        c1, c2, c3 = (feats[i] for i in self.taps())

        def style(j: int, h: Array) -> Array:
            return GradualStyleBlock(self.latent_dim, self.style_convs(j), self.bn_momentum,
                                     self.bn_epsilon, dtype=self.dtype,
                                     name=f"style_{j}")(h, train)

        def lateral(name: str, h: Array) -> Array:
            return _conv(widths[3], 1, 1, 0, name=name, in_channels=h.shape[-1],
                         kernel_init=HE_NORMAL, dtype=self.dtype)(h)

        latents = [style(j, c3) for j in range(min(COARSE_END, self.n_styles))]
        p2 = resize_bilinear_align_corners(c3, c2.shape[1:3]) + lateral("latlayer1", c2)
        latents += [style(j, p2) for j in range(COARSE_END, min(MIDDLE_END, self.n_styles))]
        p1 = resize_bilinear_align_corners(p2, c1.shape[1:3]) + lateral("latlayer2", c1)
        latents += [style(j, p1) for j in range(MIDDLE_END, self.n_styles)]
        return jnp.stack(latents, axis=1).astype(jnp.float32)


def psp_variables_from_irse(psp_variables: Mapping[str, Any],
                            irse_variables: Mapping[str, Any]) -> dict[str, Any]:
    """pSp variables with the stem (``input_*``) and body (``body_*``) replaced by those of a
    converted ArcFace IR-SE (:class:`unmask_jax.features.arcface.IRSE` variables, e.g. from
    ``python -m unmask_jax.features convert`` of ``model_ir_se50.pth``). The style blocks and
    lateral convs are kept. Pure: returns a new dict (numpy / jax leaves as given).

    Raises ValueError when the IR-SE variables lack a stem / body module the encoder has or
    a shape differs (e.g. a different depth or width)."""
    n_body = sum(1 for n in psp_variables.get("params", {}) if n.startswith("body_"))
    n_src = sum(1 for n in irse_variables.get("params", {}) if n.startswith("body_"))
    if n_src != n_body:
        raise ValueError(f"psp_variables_from_irse: the IR-SE has {n_src} body units, the "
                         f"encoder {n_body}")
    out: dict[str, Any] = {}
    for collection in ("params", "batch_stats"):
        if collection not in psp_variables:
            continue
        dst = dict(psp_variables[collection])
        src = irse_variables.get(collection, {})
        for name in dst:
            if not (name.startswith("input_") or name.startswith("body_")):
                continue
            if name not in src:
                raise ValueError(f"psp_variables_from_irse: the IR-SE {collection} have no "
                                 f"{name!r} (the encoder's body is deeper than the IR-SE's?)")
            want = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), dst[name])
            got = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), src[name])
            if (jax.tree_util.tree_structure(dst[name]) != jax.tree_util.tree_structure(
                    src[name]) or want != got):
                raise ValueError(f"psp_variables_from_irse: {collection}/{name} differs: "
                                 f"encoder {want} vs IR-SE {got}")
            dst[name] = jax.tree_util.tree_map(
                lambda a, b: jnp.asarray(b, dtype=jnp.asarray(a).dtype), dst[name], src[name])
        out[collection] = dst
    for collection in psp_variables:
        out.setdefault(collection, psp_variables[collection])
    return out


# ----------------------------------------------------------------------------------------
# UNetStyleGAN generator.
# ----------------------------------------------------------------------------------------


class EqualLinear(nn.Module):
    """Equalized-learning-rate linear: raw ``kernel`` (in, out) ~ N(0, 1) used times
    1 / sqrt(in); ``bias`` initialised to ``bias_value``."""

    features: int
    bias_value: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", normal_init(1.0), (fan_in, self.features))
        bias = self.param("bias", nn.initializers.constant(self.bias_value), (self.features,))
        y = jnp.dot(x.astype(self.dtype), (kernel / math.sqrt(fan_in)).astype(self.dtype))
        return y + bias.astype(self.dtype)


class ModulatedConv(nn.Module):
    """StyleGAN2 modulated convolution, stride 1, 'same' zero padding, no bias.

    Computed as conv(x * s * c, W) * d with W the raw N(0, 1) kernel (``conv/kernel``),
    c = 1 / sqrt(fan_in) and d = rsqrt(sum_{k, in} (W c s)^2 + eps) per sample and output
    channel: the same numbers as the reference's per-sample grouped convolution, with one
    shared kernel (no per-sample weights)."""

    features: int
    kernel_size: int
    demodulate: bool = True
    eps: float = 1e-8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, s: Array) -> Array:
        k = self.kernel_size
        scale = s.astype(jnp.float32) / math.sqrt(x.shape[-1] * k * k)  # (N, in)
        conv = Conv(self.features, k, 1, (k - 1) // 2, use_bias=False, dtype=self.dtype,
                    kernel_init=normal_init(1.0), name="conv")
        y = conv(x * scale[:, None, None, :].astype(x.dtype))
        if self.demodulate:
            kernel = conv.variables["params"]["kernel"].astype(jnp.float32)
            energy = jnp.sum(jnp.square(kernel), axis=(0, 1))  # (in, out)
            d = lax.rsqrt(jnp.dot(jnp.square(scale), energy) + self.eps)  # (N, out)
            y = y * d[:, None, None, :].astype(y.dtype)
        return y


class StyleBlock(nn.Module):
    """UNetStyleBlock: LReLU(a * modconv(x, A(w)) + (1 - a) * LReLU(BN(conv3x3(skip))))."""

    features: int
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, w: Array, skip: Array, train: bool) -> Array:
        s = EqualLinear(x.shape[-1], 1.0, self.dtype, name="to_style")(w)
        x = ModulatedConv(self.features, 3, dtype=self.dtype, name="modulated_conv")(x, s)
        sk = _conv(self.features, 3, 1, 1, name="skip_conv", in_channels=skip.shape[-1],
                   kernel_init=GENERATOR_CONV_INIT, dtype=self.dtype)(skip)
        sk = leaky_relu(_bn("skip_bn", train, sk, self.bn_momentum, self.bn_epsilon,
                            self.dtype), 0.2)
        a = self.param("a", nn.initializers.constant(0.5), (self.features,)).astype(x.dtype)
        return leaky_relu(a * x + (1 - a) * sk, 0.2)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to 3 channels + ``bias`` -> LReLU(0.2)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, w: Array) -> Array:
        s = EqualLinear(x.shape[-1], 1.0, self.dtype, name="to_style")(w)
        y = ModulatedConv(3, 1, demodulate=False, dtype=self.dtype, name="modulated_conv")(x, s)
        bias = self.param("bias", nn.initializers.zeros, (3,))
        return leaky_relu(y + bias.astype(y.dtype), 0.2)


class DownBlock(nn.Module):
    """UNetDownBlock: BN -> LReLU -> conv3x3 s2 -> BN -> LReLU -> conv3x3, + conv3x3 s2
    residual, sum -> BN -> LReLU (slope 0.2)."""

    features: int
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        def bn(name: str, h: Array) -> Array:
            return _bn(name, train, h, self.bn_momentum, self.bn_epsilon, self.dtype)

        def conv(name: str, h: Array, stride: int) -> Array:
            return _conv(self.features, 3, stride, 1, name=name, in_channels=h.shape[-1],
                         kernel_init=GENERATOR_CONV_INIT, dtype=self.dtype)(h)

        h = conv("conv_0", leaky_relu(bn("bn_0", x), 0.2), 2)
        h = conv("conv_1", leaky_relu(bn("bn_1", h), 0.2), 1)
        h = h + conv("residual", x, 2)
        return leaky_relu(bn("bn_out", h), 0.2)


class GeneratorBlock(nn.Module):
    features: int
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, w: Array, skip: Array, train: bool) -> tuple[Array, Array]:
        kw = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=self.dtype)
        x = StyleBlock(self.features, name="style_block1", **kw)(x, w, skip, train)
        x = StyleBlock(self.features, name="style_block2", **kw)(x, w, skip, train)
        return x, ToRGB(dtype=self.dtype, name="to_rgb")(x, w)


class UNetStyleGANGenerator(nn.Module):
    """UnVeilify's UNetStyleGAN (see the module docstring).

    Attributes:
      resolution: output (= input) size the network is built for; log2(resolution) - 2 down
        blocks and decoder stages.
      latent_dim: width of w (512).
      base_width, max_width: U-Net widths min(max_width, base_width * 2**i) (32, 256).
    """

    resolution: int = 256
    latent_dim: int = 512
    base_width: int = 32
    max_width: int = 256
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, masked: Array, w: Array, train: bool = False) -> Array:
        features = generator_widths(self.resolution, self.base_width, self.max_width)
        n = len(features)
        if masked.shape[1] % 2**n or masked.shape[2] % 2**n:
            raise ValueError(f"input size must be a multiple of {2**n}, got "
                             f"{masked.shape[1]}x{masked.shape[2]}")
        if w.ndim != 3 or w.shape[1] < n or w.shape[2] != self.latent_dim:
            raise ValueError(f"w must be (N, >= {n}, {self.latent_dim}), got {w.shape}")
        kw = dict(bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=self.dtype)
        blur = lax.stop_gradient(self.param("smooth_kernel", blur_kernel_init, (3, 3)))

        def up_rgb(rgb: Array) -> Array:
            return blur3x3(upsample2x(rgb, "bilinear"), blur)

        x = masked.astype(self.dtype)
        w = w.astype(self.dtype)
        skips = []
        for i in range(n):
            x = DownBlock(features[i], name=f"down_{i}", **kw)(x, train)
            skips.append(x)
        x = StyleBlock(features[-1], name="first_style_block", **kw)(x, w[:, 0], skips[-1],
                                                                       train)
        rgb = ToRGB(dtype=self.dtype, name="first_to_rgb")(x, w[:, 0])
        for i in range(1, n):
            x = upsample2x(x, "bilinear")
            x = _conv(features[-i - 1], 3, 1, 1, name=f"up_{i - 1}_conv",
                      in_channels=x.shape[-1], kernel_init=GENERATOR_CONV_INIT,
                      dtype=self.dtype)(x)
            x = leaky_relu(_bn(f"up_{i - 1}_bn", train, x, self.bn_momentum, self.bn_epsilon,
                               self.dtype), 0.2)
            x, rgb_new = GeneratorBlock(features[-i - 1], name=f"block_{i - 1}", **kw)(
                x, w[:, i], skips[-i - 1], train)
            rgb = up_rgb(rgb) + rgb_new
        return up_rgb(rgb).astype(jnp.float32)


# ----------------------------------------------------------------------------------------
# MaskRemover = pSp encoder + generator (one network, as the reference trains it).
# ----------------------------------------------------------------------------------------


class MaskRemover(nn.Module):
    """The reference's ``MaskRemover``: ``psp_encoder`` (:class:`PSPEncoder`) on the identity
    image -> w (N, 2 log2(resolution) - 2, latent_dim) -> ``generator``
    (:class:`UNetStyleGANGenerator`) on the masked image.

    Attributes:
      resolution, latent_dim: as the reference's ``output_resolution`` / ``latent_dim``.
      psp_blocks: IR-SE units per stage (None: IR-SE50's (3, 4, 14, 3)).
      psp_width_div: the pSp stage widths are (64, 128, 256, 512) // psp_width_div.
      generator_width_div: the generator's base / max widths are (32, 256) // this.
    """

    resolution: int = 256
    latent_dim: int = 512
    psp_blocks: Sequence[int] | None = None
    psp_width_div: int = 1
    generator_width_div: int = 1
    dtype: Dtype = jnp.float32

    def parts(self) -> tuple[PSPEncoder, UNetStyleGANGenerator]:
        """Unbound twins of the two submodules (same fields as inside this module)."""
        return (PSPEncoder(parent=None, **self.psp_kwargs()),
                UNetStyleGANGenerator(parent=None, **self.generator_kwargs()))

    def psp_kwargs(self) -> dict[str, Any]:
        return dict(blocks=None if self.psp_blocks is None else tuple(self.psp_blocks),
                    widths=tuple(w // self.psp_width_div for w in STAGE_WIDTHS),
                    n_styles=n_styles_for(self.resolution), input_resolution=self.resolution,
                    latent_dim=self.latent_dim, dtype=self.dtype)

    def generator_kwargs(self) -> dict[str, Any]:
        return dict(resolution=self.resolution, latent_dim=self.latent_dim,
                    base_width=32 // self.generator_width_div,
                    max_width=256 // self.generator_width_div, dtype=self.dtype)

    @nn.compact
    def __call__(self, masked: Array, identity: Array, train: bool = False) -> Array:
        w = PSPEncoder(name="psp_encoder", **self.psp_kwargs())(identity, train)
        return UNetStyleGANGenerator(name="generator", **self.generator_kwargs())(
            masked, w, train)


# ----------------------------------------------------------------------------------------
# Discriminator.
# ----------------------------------------------------------------------------------------


class IdentityPatchDiscriminator(nn.Module):
    """UnVeilify's identity-conditioned PatchGAN (see the module docstring); logits unless
    ``sigmoid_output``."""

    ndf: int = 64
    sigmoid_output: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, identity: Array, train: bool = False) -> Array:
        del train  # no batch statistics
        x = jnp.concatenate([image, identity], axis=-1).astype(self.dtype)
        for i, width in enumerate((self.ndf, self.ndf * 2, self.ndf * 4, self.ndf * 8)):
            x = _conv(width, 4, 2, 1, name=f"conv_{i}", in_channels=x.shape[-1],
                      kernel_init=TORCH_DEFAULT_INIT, dtype=self.dtype)(x)
            if i > 0:
                x = InstanceNorm(epsilon=1e-5, dtype=self.dtype, name=f"norm_{i}")(x)
            x = leaky_relu(x, 0.2)
        # nn.ZeroPad2d((1, 0, 1, 0)) then Conv(k4, p1): padding (top 2, bottom 1, left 2,
        # right 1) on the conv.
        x = _conv(1, 4, 1, ((2, 1), (2, 1)), name="conv_4", in_channels=x.shape[-1],
                  kernel_init=TORCH_DEFAULT_INIT, use_bias=False, dtype=self.dtype)(x)
        x = x.astype(jnp.float32)
        return nn.sigmoid(x) if self.sigmoid_output else x


__all__ = ["MaskRemover", "PSPEncoder", "UNetStyleGANGenerator", "IdentityPatchDiscriminator",
           "psp_variables_from_irse", "generator_widths", "n_styles_for"]
