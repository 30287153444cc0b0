"""DenseNet-121 for CIFAR-sized images.

References:
- Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional
  Networks", CVPR 2017: DenseNet-BC (bottleneck 1x1 conv to 4k channels,
  compression 0.5 in the transitions); DenseNet-121 has growth k=32 and dense
  blocks of 6, 12, 24, 16 layers.
- Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural
  Nets", NeurIPS 2018, and its code (tomgoldstein/loss-landscape,
  cifar10/models/densenet.py): the CIFAR stem (one 3x3 conv to 2k channels, no
  max pool), whose parameter names this file keeps so its checkpoints load.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    """BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k); the k new maps go before the input's."""

    def __init__(self, in_channels: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))  # (B, 4k, H, W)
        out = self.conv2(F.relu(self.bn2(out)))  # (B, k, H, W)
        # new maps first, as in Li et al.'s code, so its weights line up
        return torch.cat([out, x], 1)  # (B, C + k, H, W)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (compression) then 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.relu(self.bn(x)))  # (B, C', H, W)
        # ceil_mode: an odd map (e.g. 9x9 input) keeps its edge instead of dropping it
        return F.avg_pool2d(out, 2, ceil_mode=True)  # (B, C', H/2, W/2)


class DenseNet(nn.Module):
    """DenseNet-BC: stem conv, four dense blocks joined by three transitions, pool, linear.

    Inputs of any size >= 8x8 work: the final pooling is adaptive (on 32x32
    images it equals Li et al.'s 4x4 average pool).
    """

    def __init__(
        self,
        blocks=(6, 12, 24, 16),
        growth: int = 32,
        reduction: float = 0.5,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        stages = []
        for i, n in enumerate(blocks):
            layers = [Bottleneck(channels + j * growth, growth) for j in range(n)]
            stages.append(nn.Sequential(*layers))
            channels += n * growth
            if i < len(blocks) - 1:
                out_channels = int(math.floor(channels * reduction))
                stages.append(Transition(channels, out_channels))
                channels = out_channels
        (self.dense1, self.trans1, self.dense2, self.trans2,
         self.dense3, self.trans3, self.dense4) = stages
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)  # (B, 2k, H, W)
        out = self.trans1(self.dense1(out))  # (B, 128, H/2, W/2) for DenseNet-121
        out = self.trans2(self.dense2(out))  # (B, 256, H/4, W/4)
        out = self.trans3(self.dense3(out))  # (B, 512, H/8, W/8)
        out = self.dense4(out)  # (B, 1024, H/8, W/8)
        out = self.pool(F.relu(self.bn(out))).flatten(1)  # (B, 1024)
        return self.linear(out)  # (B, num_classes)


def densenet121(num_classes: int = 10, in_channels: int = 3) -> DenseNet:
    """DenseNet-121 (growth 32, blocks 6/12/24/16, bottleneck, compression 0.5), CIFAR stem."""
    return DenseNet((6, 12, 24, 16), 32, 0.5, num_classes, in_channels)
