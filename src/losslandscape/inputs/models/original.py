"""The networks of the original loss-landscape code, under its names, so its checkpoints load.

Reference: Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of
Neural Nets", NeurIPS 2018, and its code (tomgoldstein/loss-landscape,
`cifar10/model_loader.py` and `cifar10/models/`). Every name of that loader is
here as `original_<name>` (ORIGINAL_NAMES, in the loader's order), with the same
parameter and buffer names and shapes, and the same function: a state dict saved
by the original code loads with strict=True and gives the same outputs.

How its ResNets differ from our zoo's (models/resnet.py):
- shortcuts are He et al.'s "option B": where a block changes the shape, a 1x1
  conv of that stride and a BN (keys `layerS.B.shortcut.0.weight`,
  `layerS.B.shortcut.1.*`); elsewhere the identity. ResNet-56 has 855,770
  parameters instead of option A's 853,018;
- its wide ResNets (`wrn56_k`, `wrn110_k_noshort`) widen the stem too (16k channels);
- `resnet18` .. `resnet152` are ImageNet ResNets (He et al., CVPR 2016, table 1)
  adapted to 32x32 images: a 3x3 stride-1 stem of 64 channels, no max pool,
  four stages of 64, 128, 256, 512 (x4 in bottleneck blocks) channels;
- `resnet50_16_noshort` is the CIFAR ResNet with 8 blocks per stage (6n+2 = 50), 16
  channels in the first stage, without skip connections;
- without skip connections, a bottleneck block ends at its last BN (no ReLU):
  kept, since it is the function the original checkpoints were trained as.

Its VGG-9 and DenseNet-121 are our zoo's `vgg9` and `densenet121` (same names,
same function on 32x32 images); `original_vgg9` and `original_densenet121` build
those, initialised the original code's way.

The original code pools with fixed windows sized for 32x32 inputs; here the
pooling before the classifier is adaptive, which is the same on 32x32 images and
lets any input of at least 8x8 pixels through (the ResNets take even smaller).
Fresh models are initialised as the original code's training script does
(`init_params`): convs Kaiming-normal (fan in), BN weight 1 and bias 0, linear
layers N(0, 1e-3) with bias 0.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from losslandscape.inputs.models.densenet import densenet121
from losslandscape.inputs.models.vgg import vgg9

__all__ = ["ORIGINAL", "ORIGINAL_NAMES", "OriginalResNet", "original_init"]


class ProjectionBlock(nn.Module):
    """Two 3x3 conv-BN layers; with `residual`, plus the input, or its 1x1-conv-BN
    projection where the shape changes (option B); then a ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, residual: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.residual = residual
        self.shortcut = _projection(in_channels, channels, stride) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C, H/s, W/s)
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(out)

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class ProjectionBottleneck(nn.Module):
    """1x1 (C) - 3x3 (C, stride) - 1x1 (4C) conv-BN layers; with `residual`, plus the input
    or its projection, then a ReLU; without, the block ends at the last BN, as in the original."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, residual: bool = True):
        super().__init__()
        out_channels = self.expansion * channels
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.residual = residual
        self.shortcut = _projection(in_channels, out_channels, stride) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, C, H, W)
        out = F.relu(self.bn2(self.conv2(out)))  # (B, C, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, 4C, H/s, W/s)
        if not self.residual:
            return out
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """Option B: a 1x1 conv and a BN where the shape changes, else None (the identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class OriginalResNet(nn.Module):
    """Stem 3x3 conv-BN-ReLU, stages of blocks (stride 2 from the second on), global
    average pool, linear: the original code's `ResNet`, `ResNet_cifar` and `WResNet_cifar`.

    `widths` are the stages' channels before the block's expansion; the stem has
    `widths[0]` channels (16k for the wide CIFAR ResNets, as in the original).
    """

    def __init__(
        self,
        block: type[ProjectionBlock] | type[ProjectionBottleneck],
        blocks: tuple[int, ...],
        widths: tuple[int, ...],
        residual: bool = True,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        channels = widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(block(channels, width, 2 if i > 0 and j == 0 else 1, residual))
                channels = width * block.expansion
            # layer1, layer2, ...: the original's names
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.stages = len(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, widths[0], H, W)
        for i in range(self.stages):
            out = getattr(self, f"layer{i + 1}")(out)  # (B, C_i, H/2^i, W/2^i)
        # the original's avg_pool2d(out, 8) (CIFAR) or (out, 4) (ImageNet style) is global on 32x32
        out = self.pool(out).flatten(1)  # (B, C)
        return self.linear(out)  # (B, num_classes)


def original_init(model: nn.Module) -> nn.Module:
    """The original training script's `init_params`, in place; returns `model`."""
    if any(p.is_meta for p in model.parameters()):
        return model  # nothing to draw (list_models counts on the meta device, where drawing is slow)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1e-3)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _imagenet_style(blocks: tuple[int, int, int, int], bottleneck: bool, residual: bool = True,
                    num_classes: int = 10, in_channels: int = 3) -> OriginalResNet:
    block = ProjectionBottleneck if bottleneck else ProjectionBlock
    return original_init(OriginalResNet(block, blocks, (64, 128, 256, 512), residual, num_classes, in_channels))


def _cifar(depth: int, width: int = 1, residual: bool = True,
           num_classes: int = 10, in_channels: int = 3) -> OriginalResNet:
    n = (depth - 2) // 6
    widths = (16 * width, 32 * width, 64 * width)
    return original_init(OriginalResNet(ProjectionBlock, (n, n, n), widths, residual, num_classes, in_channels))


def _ours(factory: Callable[..., nn.Module], num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return original_init(factory(num_classes=num_classes, in_channels=in_channels))


_IMAGENET = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
             101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}

# the original loader's name -> factory(num_classes=10, in_channels=3), in the loader's order
_LOADER: dict[str, Callable[..., nn.Module]] = {
    "vgg9": partial(_ours, vgg9),
    "densenet121": partial(_ours, densenet121),
    **{name: partial(_imagenet_style, blocks, bottleneck, residual)
       for d, (blocks, bottleneck) in _IMAGENET.items()
       for name, residual in ((f"resnet{d}", True), (f"resnet{d}_noshort", False))},
    "resnet20": partial(_cifar, 20),
    "resnet20_noshort": partial(_cifar, 20, residual=False),
    "resnet32_noshort": partial(_cifar, 32, residual=False),
    "resnet44_noshort": partial(_cifar, 44, residual=False),
    "resnet50_16_noshort": partial(_cifar, 50, residual=False),
    "resnet56": partial(_cifar, 56),
    "resnet56_noshort": partial(_cifar, 56, residual=False),
    "resnet110": partial(_cifar, 110),
    "resnet110_noshort": partial(_cifar, 110, residual=False),
    **{name: partial(_cifar, 56, k, residual)
       for k in (2, 4, 8) for name, residual in ((f"wrn56_{k}", True), (f"wrn56_{k}_noshort", False))},
    "wrn110_2_noshort": partial(_cifar, 110, 2, residual=False),
    "wrn110_4_noshort": partial(_cifar, 110, 4, residual=False),
}

# zoo name ("original_resnet56") -> factory
ORIGINAL: dict[str, Callable[..., nn.Module]] = {f"original_{name}": f for name, f in _LOADER.items()}
ORIGINAL_NAMES = tuple(ORIGINAL)
