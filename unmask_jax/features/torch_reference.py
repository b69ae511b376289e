"""PyTorch twins of the feature networks, with the public checkpoints' state-dict keys.

Used to test the converters and the Flax code (build a torch module here, fill it with
random weights, convert its state dict, compare outputs) and to compute reference values.
Key layouts: InsightFace ``iresnet.py`` (``conv1``, ``bn1``, ``prelu``, ``layer{s}.{b}.*``
with ``downsample.0/1``, ``bn2``, ``fc``, ``features``), pSp ``model_irse.py``
(``input_layer.{0,1,2}``, ``body.{i}.shortcut_layer.{0,1}`` / ``res_layer.{0..5}``,
``output_layer.{0,3,4}``), torchvision ``vgg*.features.N`` and ``alexnet.features.N``.
Requires torch (the ``torch`` extra); nothing here is imported by the JAX code paths.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from unmask_jax.features.arcface import STAGE_WIDTHS, irse_units
from unmask_jax.features.vgg import VGG_CONFIGS, VGG_WIDTHS


class TorchIBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int, downsample: bool,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=eps)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=eps)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                         nn.BatchNorm2d(planes, eps=eps))
                           if downsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x)))))
        out = self.bn3(out)
        identity = self.downsample(x) if self.downsample is not None else x
        return out + identity


class TorchIResNet(nn.Module):
    """InsightFace IResNet with ``layers`` blocks per stage, for ``input_size`` faces."""

    def __init__(self, layers: Sequence[int], num_features: int = 512, input_size: int = 112,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=eps)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for s, (n, planes) in enumerate(zip(layers, STAGE_WIDTHS), start=1):
            blocks = []
            for b in range(n):
                stride = 2 if b == 0 else 1
                blocks.append(TorchIBasicBlock(inplanes, planes, stride,
                                               b == 0 and (stride != 1 or inplanes != planes),
                                               eps))
                inplanes = planes
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.bn2 = nn.BatchNorm2d(512, eps=eps)
        self.dropout = nn.Dropout(0.0)
        side = input_size // 16
        self.fc = nn.Linear(512 * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


class TorchSE(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * s


class TorchBottleneckIRSE(nn.Module):
    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth), nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth), TorchSE(depth, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class TorchIRSE(nn.Module):
    """pSp ``Backbone(input_size, num_layers, mode='ir_se')``; ``units`` overrides depth."""

    def __init__(self, num_layers: int = 50, input_size: int = 112,
                 units: Sequence[tuple[int, int, int]] | None = None,
                 affine: bool = True) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(64), nn.PReLU(64))
        side = input_size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.6), nn.Flatten(),
                                          nn.Linear(512 * side * side, 512),
                                          nn.BatchNorm1d(512, affine=affine))
        units = units if units is not None else irse_units(num_layers)
        self.body = nn.Sequential(*[TorchBottleneckIRSE(*u) for u in units])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer(self.body(self.input_layer(x)))
        return x / torch.linalg.norm(x, dim=1, keepdim=True)


class TorchVGG(nn.Module):
    """torchvision VGG ``features`` (no classifier): keys ``features.N.weight/bias``."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_c = 3
        for n, width in zip(VGG_CONFIGS[arch], VGG_WIDTHS):
            for _ in range(n):
                layers += [nn.Conv2d(in_c, width, 3, padding=1), nn.ReLU()]
                in_c = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)


class TorchAlex(nn.Module):
    """torchvision AlexNet ``features``: keys ``features.{0,3,6,8,10}.weight/bias``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))


# Indices (in ``features``) of the ReLUs LPIPS taps.
LPIPS_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg16": (3, 8, 15, 22, 29)}


def torch_lpips(features: nn.Sequential, lin: Sequence[torch.Tensor], net: str,
                x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 on NCHW tensors in [-1, 1], written from the paper / reference package."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    taps = LPIPS_TAPS[net]

    def run(img: torch.Tensor) -> list[torch.Tensor]:
        h, outs = (img - shift) / scale, []
        for i, layer in enumerate(features):
            h = layer(h)
            if i in taps:
                outs.append(h)
            if i == taps[-1]:
                break
        return outs

    total = torch.zeros(x.shape[0])
    for fx, fy, w in zip(run(x), run(y), lin):
        nx = fx / (torch.sqrt((fx ** 2).sum(1, keepdim=True)) + 1e-10)
        ny = fy / (torch.sqrt((fy ** 2).sum(1, keepdim=True)) + 1e-10)
        d = ((nx - ny) ** 2 * w.view(1, -1, 1, 1)).sum(1)
        total = total + d.mean(dim=(1, 2))
    return total


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fills every parameter and BN buffer with random values (non-trivial BN stats)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan = max(1, p[0].numel()) if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) / fan ** 0.5)
            if name.endswith("bias") or p.ndim == 1:
                p.mul_(0.2).add_(1.0 if "weight" in name else 0.0)
        for m in module.modules():
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return module.eval()
