"""PyTorch twins of UnVeilify's networks (the project's own code, written from the public
reference ``hyoungjoojin/UnVeilify``, ``model/*.py``), NCHW.

The state-dict keys and shapes at the defaults are exactly the reference's
(``/work/shared/specs/keys/unveilify_*.txt``; checked in ``tests/test_unveilify_models.py``):

- :class:`MaskRemover` (``output_resolution=256, latent_dim=512,
  generator_arch="UNetStyleGAN"``): ``psp_encoder`` (:class:`PSPEncoder`, pSp's
  GradualStyleEncoder over an IR-SE50 body) and ``generator`` (:class:`UNetStyleGAN`);
  ``forward(masked_image, identity_image)``.
- :class:`Discriminator` (``in_channels=3``): identity-conditioned PatchGAN;
  ``forward(image, identity_image)`` returns sigmoid probabilities (16x16 at 256^2), as the
  reference does. (The Flax twin returns logits unless ``sigmoid_output``.)

Keyword arguments beyond the reference's (``psp_blocks``, ``psp_widths``,
``generator_base_width``, ``generator_max_width``) shrink the networks for tests and quick
configs; at their defaults the modules are the reference's. Every module is written so that
eval-mode outputs match the Flax modules in :mod:`unmask_jax.models.unveilify` to float
rounding.

This module imports torch; the rest of ``unmask_jax`` does not need it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The IR-SE unit (``shortcut_layer`` / ``res_layer`` keys of pSp's ``bottleneck_IR_SE``) is
# the ArcFace twin's.
from unmask_jax.features.torch_reference import TorchBottleneckIRSE as BottleneckIRSE

IRSE50_BLOCKS = (3, 4, 14, 3)
IRSE_WIDTHS = (64, 128, 256, 512)


# ----------------------------------------------------------------------------------------
# pSp encoder (IR-SE body + gradual style blocks).
# ----------------------------------------------------------------------------------------


def body_units(blocks: Sequence[int], widths: Sequence[int]) -> list[tuple[int, int, int]]:
    """(in_channel, depth, stride) of every body unit; each stage starts with stride 2."""
    units, in_c = [], widths[0]
    for n, depth in zip(blocks, widths):
        units.append((in_c, depth, 2))
        units += [(depth, depth, 1)] * (n - 1)
        in_c = depth
    return units


class GradualStyleBlock(nn.Module):
    """log2(resolution) x [Conv3x3 s2 -> BN -> LeakyReLU(0.01)] -> MaxPool 2 -> Linear."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(int(math.log2(resolution))):
            layers += [nn.Conv2d(c, out_channels, kernel_size=3, stride=2, padding=1),
                       nn.BatchNorm2d(out_channels), nn.LeakyReLU()]
            c = out_channels
        layers.append(nn.MaxPool2d(kernel_size=2))
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(c, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        return self.linear(x.reshape(x.shape[0], -1))


class PSPEncoder(nn.Module):
    """pSp GradualStyleEncoder, ``mode='ir_se'``: input_layer conv3x3-BN-PReLU, IR-SE body,
    taps c1/c2/c3 at the ends of stages 2/3/4, FPN-style lateral 1x1 convs with bilinear
    (align_corners=True) up-sampling; styles 0-2 from c3, 3-6 from p2, the rest from p1.
    Returns (N, n_styles, style_dim)."""

    coarse_ind = 3
    middle_ind = 7

    def __init__(self, in_channels: int = 3, num_layers: int = 50, mode: str = "ir_se",
                 n_styles: int = 14, input_resolution: int = 256,
                 blocks: Sequence[int] | None = None, widths: Sequence[int] = IRSE_WIDTHS,
                 style_dim: int = 512):
        super().__init__()
        if mode != "ir_se":
            raise NotImplementedError(f"mode {mode!r}: only 'ir_se' (UnVeilify's) is mirrored")
        if blocks is None:
            if num_layers != 50:
                raise ValueError("pass blocks for num_layers other than 50")
            blocks = IRSE50_BLOCKS
        blocks, widths = tuple(blocks), tuple(widths)
        self.taps = (sum(blocks[:2]) - 1, sum(blocks[:3]) - 1, sum(blocks) - 1)
        self.input_layer = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], (3, 3), 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
        self.body = nn.Sequential(*[BottleneckIRSE(i, d, s)
                                    for i, d, s in body_units(blocks, widths)])
        self.style_count = n_styles
        self.styles = nn.ModuleList()
        for i in range(n_styles):
            div = 2**5 if i < self.coarse_ind else 2**4 if i < self.middle_ind else 2**3
            self.styles.append(GradualStyleBlock(widths[3], style_dim, input_resolution // div))
        self.latlayer1 = nn.Conv2d(widths[2], widths[3], kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(widths[1], widths[3], kernel_size=1, stride=1, padding=0)

    @staticmethod
    def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=True) + y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)
        feats = []
        for unit in self.body:
            x = unit(x)
            feats.append(x)
        c1, c2, c3 = (feats[i] for i in self.taps)
        latents = [self.styles[j](c3) for j in range(min(self.coarse_ind, self.style_count))]
        p2 = self._upsample_add(c3, self.latlayer1(c2))
        latents += [self.styles[j](p2)
                    for j in range(self.coarse_ind, min(self.middle_ind, self.style_count))]
        p1 = self._upsample_add(p2, self.latlayer2(c1))
        latents += [self.styles[j](p1) for j in range(self.middle_ind, self.style_count)]
        return torch.stack(latents, dim=1)


# ----------------------------------------------------------------------------------------
# UNetStyleGAN generator.
# ----------------------------------------------------------------------------------------


class EqualizedWeight(nn.Module):
    """Raw N(0, 1) weight, used multiplied by 1 / sqrt(fan_in)."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.c = 1.0 / math.sqrt(math.prod(shape[1:]))
        self.weight = nn.Parameter(torch.randn(tuple(shape)))

    def forward(self) -> torch.Tensor:
        return self.weight * self.c


class EqualizedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: float = 0.0):
        super().__init__()
        self.weight = EqualizedWeight([out_features, in_features])
        self.bias = nn.Parameter(torch.full((out_features,), float(bias)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


class Conv2dWeightModulate(nn.Module):
    """StyleGAN2 modulated convolution (per-sample weights, grouped conv), optional
    demodulation with eps 1e-8; padding (k - 1) // 2; no bias."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int,
                 demodulate: bool = True, eps: float = 1e-8):
        super().__init__()
        self.out_features = out_features
        self.demodulate = demodulate
        self.padding = (kernel_size - 1) // 2
        self.weight = EqualizedWeight([out_features, in_features, kernel_size, kernel_size])
        self.eps = eps

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        weights = self.weight()[None] * s[:, None, :, None, None]  # (b, out, in, k, k)
        if self.demodulate:
            weights = weights * torch.rsqrt(
                weights.pow(2).sum(dim=(2, 3, 4), keepdim=True) + self.eps)
        weights = weights.reshape(b * self.out_features, *weights.shape[2:])
        out = F.conv2d(x.reshape(1, -1, h, w), weights, padding=self.padding, groups=b)
        return out.reshape(b, self.out_features, h, w)


class Smooth(nn.Module):
    """[1, 2, 1] x [1, 2, 1] / 16 blur per channel with replicate padding (the kernel is a
    frozen parameter, as in the reference's state dict)."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
        self.kernel = nn.Parameter((k / k.sum())[None, None], requires_grad=False)
        self.pad = nn.ReplicationPad2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = F.conv2d(self.pad(x.reshape(b * c, 1, h, w)), self.kernel)
        return y.reshape(b, c, h, w)


class UpSample(nn.Module):
    """Bilinear x2 (align_corners=False) then :class:`Smooth`."""

    def __init__(self):
        super().__init__()
        self.up_sample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.smooth = Smooth()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.smooth(self.up_sample(x))


class UNetDownBlock(nn.Module):
    """BN -> LReLU(0.2) -> Conv3x3 s2 -> BN -> LReLU -> Conv3x3, plus a Conv3x3 s2 residual;
    sum -> BN -> LReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convolution = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1))
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1))
        self.activation = nn.Sequential(nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The residual branch reads x before the in-place LeakyReLU of ``convolution`` can
        # touch it (that LReLU acts on the BN output, a new tensor, so x is safe anyway).
        res = self.residual(x)
        return self.activation(self.convolution(x) + res)


class UNetStyleBlock(nn.Module):
    """out = LReLU(a * modconv(x, A(w)) + (1 - a) * LReLU(BN(Conv3x3(skip)))), a per channel
    (init 0.5)."""

    def __init__(self, latent_dim: int, in_features: int, out_features: int):
        super().__init__()
        self.to_style = EqualizedLinear(latent_dim, in_features, bias=1.0)
        self.weight_modulated_conv = Conv2dWeightModulate(in_features, out_features, 3)
        self.weights = nn.Parameter(torch.full((out_features,), 0.5))
        self.convolutional = nn.Sequential(
            nn.Conv2d(in_features, out_features, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_features), nn.LeakyReLU(0.2, inplace=True))
        self.final_activation = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.weight_modulated_conv(x, self.to_style(w))
        skip = self.convolutional(skip)
        a = self.weights[None, :, None, None]
        return self.final_activation(a * x + (1 - a) * skip)


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation -> + bias -> LReLU(0.2)."""

    def __init__(self, d_latent: int, features: int):
        super().__init__()
        self.to_style = EqualizedLinear(d_latent, features, bias=1.0)
        self.conv = Conv2dWeightModulate(features, 3, kernel_size=1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))
        self.activation = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x, self.to_style(w)) + self.bias[None, :, None, None])


class UNetGeneratorBlock(nn.Module):
    def __init__(self, latent_dim: int, in_channels: int, out_channels: int):
        super().__init__()
        self.style_block1 = UNetStyleBlock(latent_dim, in_channels, out_channels)
        self.style_block2 = UNetStyleBlock(latent_dim, out_channels, out_channels)
        self.to_rgb = ToRGB(latent_dim, out_channels)

    def forward(self, x, w, skip):
        x = self.style_block1(x, w, skip)
        x = self.style_block2(x, w, skip)
        return x, self.to_rgb(x, w)


def generator_widths(image_resolution: int, base_width: int = 32,
                     max_width: int = 256) -> list[int]:
    """U-Net encoder widths, outermost first: min(max, base * 2**i), i = log2(res) - 3 .. 0."""
    log_res = int(math.log2(image_resolution))
    return [min(max_width, base_width * 2**i) for i in range(log_res - 3, -1, -1)]


class UNetStyleGAN(nn.Module):
    """U-Net encoder (log2(res) - 2 down blocks) + StyleGAN2-like decoder; stage i uses
    w[:, i]; the summed RGB is up-sampled (bilinear + blur) once more at the end."""

    def __init__(self, image_resolution: int, in_channels: int, latent_dim: int,
                 base_width: int = 32, max_width: int = 256):
        super().__init__()
        features = generator_widths(image_resolution, base_width, max_width)
        self.num_blocks = len(features)
        depth = int(math.log2(image_resolution)) - 2
        self.down_blocks = nn.ModuleList()
        c = in_channels
        for i in range(depth):
            self.down_blocks.append(UNetDownBlock(c, features[i]))
            c = features[i]
        self.first_style_block = UNetStyleBlock(latent_dim, c, features[-1])
        self.first_toRGB = ToRGB(latent_dim, features[-1])
        self.generator_blocks = nn.ModuleList([
            UNetGeneratorBlock(latent_dim, features[-i - 1], features[-i - 1])
            for i in range(1, self.num_blocks)])
        self.multichannel_upsample = nn.ModuleList([
            nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                          nn.Conv2d(features[-i], features[-i - 1], kernel_size=3, padding=1),
                          nn.BatchNorm2d(features[-i - 1]), nn.LeakyReLU(0.2, inplace=True))
            for i in range(1, self.num_blocks)])
        self.upsample = UpSample()

    def forward(self, masked_image: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        w = torch.swapaxes(w, 0, 1)
        skips = []
        x = masked_image
        for down in self.down_blocks:
            x = down(x)
            skips.append(x)
        x = self.first_style_block(x, w[0], skips[-1])
        rgb = self.first_toRGB(x, w[0])
        for i in range(1, self.num_blocks):
            x = self.multichannel_upsample[i - 1](x)
            x, rgb_new = self.generator_blocks[i - 1](x, w[i], skips[-i - 1])
            rgb = self.upsample(rgb) + rgb_new
        return self.upsample(rgb)


class MaskRemover(nn.Module):
    """pSp encoder on the identity image -> W+ (n_styles = 2 log2(res) - 2) -> UNetStyleGAN
    on the masked image."""

    def __init__(self, output_resolution: int = 256, latent_dim: int = 512,
                 generator_arch: str = "UNetStyleGAN", psp_blocks: Sequence[int] | None = None,
                 psp_widths: Sequence[int] = IRSE_WIDTHS, generator_base_width: int = 32,
                 generator_max_width: int = 256):
        super().__init__()
        if generator_arch != "UNetStyleGAN":
            raise NotImplementedError(generator_arch)
        self.output_resolution = output_resolution
        self.latent_dim = latent_dim
        self.n_styles = 2 * int(math.log2(output_resolution)) - 2
        self.psp_encoder = PSPEncoder(num_layers=50, mode="ir_se", n_styles=self.n_styles,
                                      input_resolution=output_resolution, blocks=psp_blocks,
                                      widths=psp_widths, style_dim=latent_dim)
        self.generator = UNetStyleGAN(output_resolution, 3, latent_dim,
                                      base_width=generator_base_width,
                                      max_width=generator_max_width)

    def forward(self, masked_image: torch.Tensor, identity_image: torch.Tensor) -> torch.Tensor:
        return self.generator(masked_image, self.psp_encoder(identity_image))


# ----------------------------------------------------------------------------------------
# Discriminator.
# ----------------------------------------------------------------------------------------


class Discriminator(nn.Module):
    """concat(image, identity) -> C64 -> C128/IN -> C256/IN -> C512/IN (k4 s2 p1, LReLU 0.2)
    -> ZeroPad(1, 0, 1, 0) -> Conv k4 p1 (1 channel, no bias) -> sigmoid."""

    def __init__(self, in_channels: int = 3, ndf: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels * 2
        for i, out in enumerate((ndf, ndf * 2, ndf * 4, ndf * 8)):
            layers.append(nn.Conv2d(c, out, 4, stride=2, padding=1))
            if i > 0:
                layers.append(nn.InstanceNorm2d(out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c = out
        layers += [nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(c, 1, 4, padding=1, bias=False),
                   nn.Sigmoid()]
        self.model = nn.Sequential(*layers)

    def forward(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat((img_a, img_b), 1))


__all__ = ["MaskRemover", "PSPEncoder", "UNetStyleGAN", "Discriminator", "generator_widths",
           "body_units"]
