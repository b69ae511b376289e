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


# --------------------------------------------------------------------------- FID Inception

class TorchBasicConv2d(nn.Module):
    """conv (no bias) + BN(eps 1e-3) + ReLU: keys ``conv.weight``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def _avg_same(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class TorchFIDBlockA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = TorchBasicConv2d(cin, 64, 1)
        self.branch5x5_1 = TorchBasicConv2d(cin, 48, 1)
        self.branch5x5_2 = TorchBasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = TorchBasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = TorchBasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = TorchBasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = TorchBasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_same(x))], 1)


class TorchFIDBlockB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = TorchBasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = TorchBasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = TorchBasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = TorchBasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            nn.functional.max_pool2d(x, 3, 2)], 1)


class TorchFIDBlockC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = TorchBasicConv2d(cin, 192, 1)
        self.branch7x7_1 = TorchBasicConv2d(cin, c7, 1)
        self.branch7x7_2 = TorchBasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = TorchBasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = TorchBasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = TorchBasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = TorchBasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = TorchBasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = TorchBasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = TorchBasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_same(x))], 1)


class TorchFIDBlockD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = TorchBasicConv2d(cin, 192, 1)
        self.branch3x3_2 = TorchBasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = TorchBasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = TorchBasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = TorchBasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = TorchBasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                          nn.functional.max_pool2d(x, 3, 2)], 1)


class TorchFIDBlockE(nn.Module):
    """E_1 (``max_pool=False``) or E_2 (``max_pool=True``)."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = TorchBasicConv2d(cin, 320, 1)
        self.branch3x3_1 = TorchBasicConv2d(cin, 384, 1)
        self.branch3x3_2a = TorchBasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = TorchBasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = TorchBasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = TorchBasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = TorchBasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = TorchBasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = TorchBasicConv2d(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = (nn.functional.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg_same(x))
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class TorchFIDInception(nn.Module):
    """The FID Inception-v3 (pytorch-fid's ``fid_inception_v3`` + ``InceptionV3`` forward to
    pool3), written from its description: keys as in ``pt_inception-2015-12-05-*.pth``
    (including the unused 1008-way ``fc``). ``forward`` takes NCHW images in [0, 1], resizes
    them to ``resize_to`` (bilinear, align_corners False), maps them to [-1, 1] and returns
    the (N, 2048) pool3 features."""

    def __init__(self, resize_to: int | None = 299) -> None:
        super().__init__()
        self.resize_to = resize_to
        self.Conv2d_1a_3x3 = TorchBasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = TorchBasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = TorchBasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = TorchBasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = TorchBasicConv2d(80, 192, 3)
        self.Mixed_5b = TorchFIDBlockA(192, 32)
        self.Mixed_5c = TorchFIDBlockA(256, 64)
        self.Mixed_5d = TorchFIDBlockA(288, 64)
        self.Mixed_6a = TorchFIDBlockB(288)
        self.Mixed_6b = TorchFIDBlockC(768, 128)
        self.Mixed_6c = TorchFIDBlockC(768, 160)
        self.Mixed_6d = TorchFIDBlockC(768, 160)
        self.Mixed_6e = TorchFIDBlockC(768, 192)
        self.Mixed_7a = TorchFIDBlockD(768)
        self.Mixed_7b = TorchFIDBlockE(1280, max_pool=False)
        self.Mixed_7c = TorchFIDBlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_to:
            x = nn.functional.interpolate(x, size=(self.resize_to, self.resize_to),
                                          mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = nn.functional.max_pool2d(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = nn.functional.max_pool2d(x, 3, 2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
