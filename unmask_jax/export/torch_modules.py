"""PyTorch modules that the exported weights load into (NCHW, eval parity with Flax).

- :class:`UnetGenerator`, :class:`UnetSkipConnectionBlock`, :class:`NLayerDiscriminator`:
  a re-implementation of the canonical PyTorch pix2pix networks with the *same constructor
  signature and state-dict keys* (``keys/pix2pix_*.txt``), so a state dict that loads
  strictly here loads strictly into the canonical ``models.networks`` classes.
- :class:`TFUnetGenerator`, :class:`TFPatchGANDiscriminator`: the project's own PyTorch port
  of the TensorFlow pix2pix tutorial networks (no canonical PyTorch code exists); keys
  ``down.{i}.conv.weight``, ``down.{i}.norm.*``, ``up.{i}.conv.weight``, ``up.{i}.norm.*``,
  ``last.*`` (generator) and ``down.{i}.*``, ``conv.weight``, ``norm.*``, ``last.*``
  (discriminator).

This module imports torch; the rest of ``unmask_jax`` does not need it.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn


def _is_instance_norm(norm_layer) -> bool:
    if isinstance(norm_layer, functools.partial):
        norm_layer = norm_layer.func
    return norm_layer is nn.InstanceNorm2d


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: ``[down] + [submodule] + [up]`` in ``self.model`` (nn.Sequential).

    Sequential indices (they define the state-dict keys):
      outermost: 0 Conv, 1 submodule, 2 ReLU, 3 ConvT(bias), 4 Tanh
      innermost: 0 LeakyReLU, 1 Conv, 2 ReLU, 3 ConvT, 4 Norm
      middle:    0 LeakyReLU, 1 Conv, 2 Norm, 3 submodule, 4 ReLU, 5 ConvT, 6 Norm
                 [, 7 Dropout(0.5)]
    Non-outermost blocks return ``cat([x, model(x)], 1)``. The activations are in-place as
    in the canonical code (the in-place LeakyReLU also rewrites the skip tensor; harmless
    because the concatenation only ever feeds a ReLU).
    """

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False,
                 innermost: bool = False, norm_layer=nn.BatchNorm2d, use_dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        use_bias = _is_instance_norm(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        down_conv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1,
                              bias=use_bias)
        if outermost:
            layers = [down_conv, submodule, nn.ReLU(True),
                      nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2,
                                         padding=1),
                      nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.ReLU(True),
                      nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2,
                                         padding=1, bias=use_bias),
                      norm_layer(outer_nc)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down_conv, norm_layer(inner_nc), submodule,
                      nn.ReLU(True),
                      nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2,
                                         padding=1, bias=use_bias),
                      norm_layer(outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """Canonical pix2pix U-Net: ``UnetGenerator(input_nc, output_nc, num_downs, ngf,
    norm_layer=nn.BatchNorm2d, use_dropout=False)``."""

    def __init__(self, input_nc: int, output_nc: int, num_downs: int, ngf: int = 64,
                 norm_layer=nn.BatchNorm2d, use_dropout: bool = False):
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=None, innermost=True,
                                        norm_layer=norm_layer)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block,
                                            norm_layer=norm_layer, use_dropout=use_dropout)
        for mult in (4, 2, 1):
            block = UnetSkipConnectionBlock(ngf * mult, ngf * mult * 2, submodule=block,
                                            norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block,
                                             outermost=True, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """Canonical pix2pix PatchGAN: ``NLayerDiscriminator(input_nc, ndf=64, n_layers=3,
    norm_layer=nn.BatchNorm2d)``; logits out."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3,
                 norm_layer=nn.BatchNorm2d):
        super().__init__()
        use_bias = _is_instance_norm(norm_layer)
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=stride,
                                 padding=1, bias=use_bias),
                       norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ----------------------------------------------------------------------------------------
# TensorFlow pix2pix tutorial variant (the project's own PyTorch port).
# ----------------------------------------------------------------------------------------


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow/Keras 'same' padding (asymmetric for odd sizes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return super().forward(nn.functional.pad(x, (left, right, top, bottom)))


class KerasBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, like Keras/TensorFlow, accepts one value per channel in training.

    torch raises for a (1, C, 1, 1) training batch (the TF generator's innermost block at
    batch 1); TensorFlow normalises it to the bias and updates the running variance with
    0 (its unbiased-variance correction falls back to n / max(n - 1, 1)). Same state-dict
    keys as ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.numel() == x.shape[1]):
            return super().forward(x)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(m * x.detach().reshape(-1))
                self.running_var.mul_(1 - m)
        centred = x - x  # the batch mean is the value itself; keeps the autograd graph
        out = centred * torch.rsqrt(torch.tensor(self.eps, dtype=x.dtype))
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


def _keras_bn(channels: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    # Keras momentum m (running = m * running + (1 - m) * batch) is torch momentum 1 - m.
    return KerasBatchNorm2d(channels, eps=eps, momentum=1.0 - momentum)


class _TFDown(nn.Module):
    def __init__(self, cin: int, cout: int, norm: bool, slope: float, momentum: float,
                 eps: float):
        super().__init__()
        self.conv = SameConv2d(cin, cout, kernel_size=4, stride=2, padding=0, bias=False)
        self.norm = _keras_bn(cout, momentum, eps) if norm else None
        self.act = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x)


class _TFUp(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float, momentum: float, eps: float):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1,
                                       bias=False)
        self.norm = _keras_bn(cout, momentum, eps)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dropout(self.norm(self.conv(x))))


class TFUnetGenerator(nn.Module):
    """TF pix2pix-tutorial generator; mirrors ``unmask_jax.models.tf_pix2pix``."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, num_downs: int = 8, ngf: int = 64,
                 use_dropout: bool = True, dropout_rate: float = 0.5,
                 num_dropout_blocks: int = 3, leaky_slope: float = 0.3,
                 bn_momentum: float = 0.99, bn_epsilon: float = 1e-3):
        super().__init__()
        widths = [ngf * min(2**i, 8) for i in range(num_downs)]
        ins = [input_nc] + widths[:-1]
        self.down = nn.ModuleList(
            _TFDown(ci, co, i > 0, leaky_slope, bn_momentum, bn_epsilon)
            for i, (ci, co) in enumerate(zip(ins, widths)))
        up_widths = widths[-2::-1]
        skip_widths = widths[-2::-1]
        up_ins = [widths[-1]] + [u + s for u, s in zip(up_widths[:-1], skip_widths[:-1])]
        self.up = nn.ModuleList(
            _TFUp(ci, co, dropout_rate if use_dropout and i < num_dropout_blocks else 0.0,
                  bn_momentum, bn_epsilon)
            for i, (ci, co) in enumerate(zip(up_ins, up_widths)))
        self.last = nn.ConvTranspose2d(up_widths[-1] + skip_widths[-1], output_nc,
                                       kernel_size=4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.down:
            x = down(x)
            skips.append(x)
        for up, skip in zip(self.up, reversed(skips[:-1])):
            x = torch.cat([up(x), skip], 1)
        return torch.tanh(self.last(x))


class TFPatchGANDiscriminator(nn.Module):
    """TF pix2pix-tutorial discriminator on concat(input, target); logits out."""

    def __init__(self, input_nc: int = 6, ndf: int = 64, leaky_slope: float = 0.3,
                 bn_momentum: float = 0.99, bn_epsilon: float = 1e-3):
        super().__init__()
        widths = [ndf, ndf * 2, ndf * 4]
        ins = [input_nc] + widths[:-1]
        self.down = nn.ModuleList(
            _TFDown(ci, co, i > 0, leaky_slope, bn_momentum, bn_epsilon)
            for i, (ci, co) in enumerate(zip(ins, widths)))
        self.conv = nn.Conv2d(ndf * 4, ndf * 8, kernel_size=4, stride=1, padding=1, bias=False)
        self.norm = _keras_bn(ndf * 8, bn_momentum, bn_epsilon)
        self.act = nn.LeakyReLU(leaky_slope)
        self.last = nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down in self.down:
            x = down(x)
        return self.last(self.act(self.norm(self.conv(x))))


# ----------------------------------------------------------------------------------------
# Ye et al. Train C "customized GAN" generator (the project's own PyTorch port).
# ----------------------------------------------------------------------------------------


class _YeSqueezeExcitation(nn.Module):
    """SE: avg pool -> 1x1 conv C -> max(1, C // r) -> ReLU -> 1x1 conv -> C -> sigmoid."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc_0 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.fc_1 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.mean(x, dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc_1(torch.relu(self.fc_0(s))))


class YeUnetC(nn.Module):
    """Ye Train C generator; mirrors ``unmask_jax.models.ye_custom.YeUnetC``.

    Keys: ``down_conv.{d}.*`` (d = 0 .. 4), ``se.{d}.fc_0.*`` / ``se.{d}.fc_1.*`` (d = 0 .. 2),
    ``dilated_conv.{i}.*``, ``up_conv.{d}.*`` (d = 0 .. 4; index = U-Net level). The
    InstanceNorm2d layers (affine False) have no state.
    """

    def __init__(self, input_nc: int = 4, output_nc: int = 3, ngf: int = 64,
                 dilated_channels: int = 256, dilation_rates=(2, 4, 8, 16),
                 se_reduction: int = 16, use_dropout: bool = False,
                 dropout_rate: float = 0.5):
        super().__init__()
        widths = [ngf * min(2**d, 8) for d in range(5)]
        ins = [input_nc] + widths[:-1]
        self.down_conv = nn.ModuleList(
            nn.Conv2d(ci, co, kernel_size=4, stride=2, padding=1) for ci, co in zip(ins, widths))
        self.down_norm = nn.ModuleList(nn.InstanceNorm2d(c) for c in widths)  # [0] unused
        self.se = nn.ModuleList(_YeSqueezeExcitation(widths[d], se_reduction) for d in range(3))
        rates = [int(r) for r in dilation_rates]
        d_ins = [widths[-1]] + [dilated_channels] * (len(rates) - 1)
        self.rates = rates
        self.dilated_conv = nn.ModuleList(
            nn.Conv2d(ci, dilated_channels, kernel_size=3, padding=r, dilation=r)
            for ci, r in zip(d_ins, rates))
        self.dilated_norm = nn.ModuleList(nn.InstanceNorm2d(dilated_channels) for _ in rates)
        bottom = dilated_channels if rates else widths[-1]
        up_ins = [widths[d] + (bottom if d == 4 else widths[d]) for d in range(5)]
        up_outs = [output_nc] + widths[:-1]
        self.up_conv = nn.ModuleList(
            nn.ConvTranspose2d(ci, co, kernel_size=4, stride=2, padding=1)
            for ci, co in zip(up_ins, up_outs))
        self.up_norm = nn.ModuleList(nn.InstanceNorm2d(c) for c in up_outs)  # [0] unused
        self.dropout = nn.Dropout(dropout_rate) if use_dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for d in range(5):
            if d > 0:
                h = nn.functional.leaky_relu(h, 0.2)
            h = self.down_conv[d](h)
            if d > 0:
                h = self.down_norm[d](h)
            if d < 3:
                h = self.se[d](h)
            skips.append(h)
        u = h
        for conv, norm in zip(self.dilated_conv, self.dilated_norm):
            u = norm(conv(nn.functional.leaky_relu(u, 0.2)))
        for d in range(4, -1, -1):
            u = self.up_conv[d](torch.relu(torch.cat([skips[d], u], 1)))
            if d > 0:
                u = self.up_norm[d](u)
                if d >= 2:
                    u = self.dropout(u)
        return torch.tanh(u)


# ----------------------------------------------------------------------------------------
# GANMasker (systems.md section 5): the project's PyTorch twins of
# ``unmask_jax.models.ganmasker`` (no public code exists). Keys mirror the flat Flax names:
# Flax ``enc_{i}_conv`` -> ``enc.{i}.conv``, ``enc_{i}_cbam_mlp_0`` -> ``enc.{i}.cbam.mlp_0``,
# ``mid_{k}_*`` -> ``mid.{k}.*``, ``dec_{j}_*`` -> ``dec.{j}.*``; discriminator ``conv_{k}``
# -> ``convs.{k}`` (spectral_norm: ``weight_orig``, ``weight_u``, ``weight_v``, ``bias``).
# ----------------------------------------------------------------------------------------


def _gm_upsample(x: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "bilinear":
        return nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return nn.functional.interpolate(x, scale_factor=2, mode="nearest")


class _GMCBAM(nn.Module):
    """CBAM (Woo et al. 2018) as in ``unmask_jax.models.blocks.cbam``."""

    def __init__(self, channels: int, reduction: int, kernel: int):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp_0 = nn.Conv2d(channels, hidden, 1)
        self.mlp_1 = nn.Conv2d(hidden, channels, 1)
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def mlp(d: torch.Tensor) -> torch.Tensor:
            return self.mlp_1(torch.relu(self.mlp_0(d)))

        x = x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True))
                              + mlp(x.amax((2, 3), keepdim=True)))
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(s))


class _GMConvNorm(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not norm)
        self.norm = nn.BatchNorm2d(cout) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class _GMSeBlock(nn.Module):
    def __init__(self, cin: int, cout: int, reduction: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(cout)
        self.cbam = _GMCBAM(cout, reduction, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbam(torch.relu(self.norm(self.conv(x))))


class GANMaskerMSeg(nn.Module):
    """GANMasker stage 1 (mask segmentation); NCHW in [-1, 1] -> (N, 1, H, W) in [0, 1]."""

    def __init__(self, input_nc: int = 3, base_width: int = 32, cbam_reduction: int = 16,
                 cbam_kernel: int = 7, upsample: str = "bilinear"):
        super().__init__()
        widths = [base_width * 2**i for i in range(5)]
        self.upsample = upsample
        ins = [input_nc] + widths[:-1]
        self.enc = nn.ModuleList(_GMSeBlock(ci, co, cbam_reduction, cbam_kernel)
                                 for ci, co in zip(ins, widths))
        dec = [_GMConvNorm(widths[4 - j] * 2, widths[3 - j], 3) for j in range(4)]
        dec.append(_GMConvNorm(widths[0], 1, 1))
        self.dec = nn.ModuleList(dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        for j in range(4):
            x = torch.cat([_gm_upsample(x, self.upsample), skips[4 - j]], 1)
            x = torch.relu(self.dec[j](x))
        return torch.sigmoid(self.dec[4](_gm_upsample(x, self.upsample)))


class _GMGeBlock(nn.Module):
    def __init__(self, cin: int, cout: int, slope: float, reduction: int, kernel: int):
        super().__init__()
        self.slope = slope
        self.conv_0 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm_0 = nn.BatchNorm2d(cout)
        self.conv_1 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm_1 = nn.BatchNorm2d(cout)
        self.cbam = _GMCBAM(cout, reduction, kernel)
        self.proj = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = nn.functional.leaky_relu(self.norm_0(self.conv_0(x)), self.slope)
        r = self.cbam(self.norm_1(self.conv_1(r)))
        return nn.functional.leaky_relu(r + self.proj(x), self.slope)


class _GMDilated(nn.Module):
    def __init__(self, channels: int, rate: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=rate, dilation=rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class GANMaskerFUNet(nn.Module):
    """GANMasker stage 2 generator (FU-Net, before MURF); NCHW -> (N, 3, H, W) in [-1, 1]."""

    def __init__(self, input_nc: int = 4, base_width: int = 32, out_channels: int = 3,
                 leaky_slope: float = 0.2, cbam_reduction: int = 16, cbam_kernel: int = 7,
                 dilation_rates: tuple[int, ...] | list[int] = (2, 4, 8, 16),
                 upsample: str = "bilinear", final_norm: bool = False):
        super().__init__()
        widths = [base_width * 2**i for i in range(5)]
        self.slope, self.upsample = leaky_slope, upsample
        ins = [input_nc] + widths[:-1]
        self.enc = nn.ModuleList(_GMGeBlock(ci, co, leaky_slope, cbam_reduction, cbam_kernel)
                                 for ci, co in zip(ins, widths))
        self.mid = nn.ModuleList(_GMDilated(widths[4], r) for r in dilation_rates)
        dec = [_GMConvNorm(widths[4 - j] * 2, widths[3 - j], 3) for j in range(4)]
        dec.append(_GMConvNorm(widths[0] * 2, out_channels, 1, norm=final_norm))
        self.dec = nn.ModuleList(dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x)
            skips.append(x)
            if i < 4:
                x = nn.functional.max_pool2d(x, 2)
        for block in self.mid:
            x = nn.functional.leaky_relu(block(x), self.slope)
        for j in range(4):
            if j > 0:
                x = _gm_upsample(x, self.upsample)
            x = nn.functional.leaky_relu(self.dec[j](torch.cat([x, skips[4 - j]], 1)),
                                         self.slope)
        x = torch.cat([_gm_upsample(x, self.upsample), skips[0]], 1)
        return torch.tanh(self.dec[4](x))


class GANMaskerDiscriminator(nn.Module):
    """GANMasker discriminator: spectral-normalised convs + LeakyReLU, raw logit map."""

    def __init__(self, input_nc: int = 7, ndf: int = 64, n_layers: int = 3,
                 leaky_slope: float = 0.2, power_iterations: int = 1):
        super().__init__()
        self.slope = leaky_slope
        sn = functools.partial(nn.utils.spectral_norm, n_power_iterations=power_iterations)
        widths = [ndf * min(2**k, 8) for k in range(n_layers + 1)] + [1]
        ins = [input_nc] + widths[:-1]
        strides = [2] * n_layers + [1, 1]
        self.convs = nn.ModuleList(sn(nn.Conv2d(ci, co, 4, stride=s, padding=1))
                                   for ci, co, s in zip(ins, widths, strides))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, conv in enumerate(self.convs):
            x = conv(x)
            if k < len(self.convs) - 1:
                x = nn.functional.leaky_relu(x, self.slope)
        return x
